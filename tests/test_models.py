"""timm-style sweep: every registered family has a tiny config that runs forward, backward and
generates (generators) or encodes/decodes (tokenizers)."""
import pytest
import torch

import vargen
from vargen.samplers import create_sampler

TINY = vargen.list_models("*-tiny")


def test_every_family_has_a_tiny_config():
    families = {vargen.get_entry(n).model_cls for n in vargen.list_models()}
    tiny_families = {vargen.get_entry(n).model_cls for n in TINY}
    assert families <= tiny_families, f"no *-tiny config for {families - tiny_families}"


def _tokens(model, batch):
    shape = tuple(model.token_shape)
    if model.is_discrete:
        return torch.randint(0, model.vocab_size, (batch, *shape))
    return torch.randn(batch, *shape)


@pytest.mark.parametrize("name", [n for n in TINY if vargen.get_entry(n).kind == "generator"])
def test_generator_forward_backward_generate(name):
    model = vargen.create_model(name)
    labels = torch.tensor([0, 1])
    loss, _ = model.training_loss(_tokens(model, 2), labels)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    sampler = create_sampler(model.default_sampler)
    out = sampler(model.eval(), labels, vargen.SampleRNG(0, 2))
    assert tuple(out.shape) == (2, *model.token_shape)
    assert sampler.stats["forward_passes"] > 0


# Image tokenizers; the video tokenizer larp-tiny has its own round trip in tests/test_larp.py.
@pytest.mark.parametrize("name", [n for n in TINY if vargen.get_entry(n).kind == "tokenizer"
                                  and n != "larp-tiny"])
def test_tokenizer_forward_backward_round_trip(name):
    model = vargen.create_model(name)
    size = model.downsample * 4
    frames = getattr(model, "temporal_downsample", None)  # video tokenizers take [B, 3, T, H, W]
    images = torch.rand(2, 3, *((frames * 4,) if frames else ()), size, size) * 2 - 1
    loss, logs = model.training_loss(images)
    assert torch.isfinite(loss) and isinstance(logs, dict)
    loss.backward()
    model.eval()
    with torch.no_grad():
        tokens = model.encode(images)
        decoded = model.decode(tokens)
    assert decoded.shape == images.shape
    if model.is_discrete:
        assert tuple(tokens.shape) == (2, *((4,) if frames else ()), 4, 4) and tokens.max() < model.vocab_size
    else:
        assert tuple(tokens.shape) == (2, model.latent_channels, 4, 4)


@pytest.mark.parametrize("name", [n for n in TINY if vargen.get_entry(n).kind == "classifier"])
def test_classifier_forward_backward(name):
    model = vargen.create_model(name)
    images, labels = torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 3])
    loss = model.loss(images, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.eval().predict(images).shape == (4,)
