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


def _labels(model, batch: int = 2) -> torch.Tensor:
    """Class ids ``0..batch-1``, or for a text-conditioned model random caption features
    ``[batch, cls_token_num, caption_dim]`` (no padding rows)."""
    if getattr(model, "is_text_conditioned", False):
        c = model.config
        return torch.randn(batch, c.cls_token_num, c.caption_dim)
    return torch.arange(batch)


# Parameters that may receive no gradient from one training_loss call, with the reason. Empty
# today: every parameter of every tiny model is reached.
NO_GRADIENT_ALLOWED: dict = {}


def _inputs(name: str, model, batch: int = 2) -> torch.Tensor:
    if vargen.get_entry(name).trains_on == "tokens":
        return _tokens(model, batch)
    config = model.config
    if hasattr(config, "frame_num"):  # LARP: one fixed clip size
        return torch.rand(batch, 3, config.frame_num, config.input_size, config.input_size) * 2 - 1
    size = getattr(model, "downsample", 8) * 4
    frames = getattr(model, "temporal_downsample", None)  # 3D-conv video tokenizers take [B, 3, T, H, W]
    return torch.rand(batch, 3, *((frames * 4,) if frames else ()), size, size) * 2 - 1


@pytest.mark.parametrize("name", TINY)
def test_training_loss_reaches_every_parameter(name):
    """The training contract on every tiny model: ``training_loss(inputs, labels) -> (loss, logs)``
    with a gradient for every parameter (zero-initialised heads perturbed first, or nothing
    upstream of them would get one)."""
    torch.manual_seed(0)
    model = vargen.create_model(name).train()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(std=0.02)
    loss, logs = model.training_loss(_inputs(name, model), _labels(model))
    assert loss.ndim == 0 and torch.isfinite(loss) and isinstance(logs, dict)
    assert all(isinstance(v, float) for v in logs.values()), logs
    loss.backward()
    allowed = NO_GRADIENT_ALLOWED.get(name, {})
    without = sorted(n for n, p in model.named_parameters()
                     if p.requires_grad and (p.grad is None or not p.grad.any()) and n not in allowed)
    assert not without, f"{name}: no gradient reaches {without}"


@pytest.mark.parametrize("name", [n for n in TINY if vargen.get_entry(n).kind == "generator"])
def test_generator_forward_backward_generate(name):
    model = vargen.create_model(name)
    labels = _labels(model)
    loss, _ = model.training_loss(_tokens(model, 2), labels)
    assert loss.ndim == 0 and torch.isfinite(loss)
    sampler = create_sampler(model.default_sampler)
    out = sampler(model.eval(), labels, vargen.SampleRNG(0, 2))
    assert tuple(out.shape) == (2, *model.token_shape)
    assert sampler.stats["forward_passes"] > 0


# Image and 3D-conv video tokenizers; larp-tiny has its own round trip in tests/test_larp.py.
@pytest.mark.parametrize("name", [n for n in TINY if vargen.get_entry(n).kind == "tokenizer"
                                  and n != "larp-tiny"])
def test_tokenizer_round_trip(name):
    model = vargen.create_model(name).eval()
    images = _inputs(name, model)
    frames = getattr(model, "temporal_downsample", None)
    with torch.no_grad():
        tokens = model.encode(images)
        decoded = model.decode(tokens)
    assert decoded.shape == images.shape
    if model.is_discrete:
        grid = (4, 4) if not hasattr(model, "patch_nums") else (sum(p * p for p in model.patch_nums),)  # VAR: all scales' ids
        assert tuple(tokens.shape) == (2, *((4,) if frames else ()), *grid) and tokens.max() < model.vocab_size
    else:
        assert tuple(tokens.shape) == (2, model.latent_channels, 4, 4)


@pytest.mark.parametrize("name", [n for n in TINY if vargen.get_entry(n).kind == "classifier"])
def test_classifier_predicts(name):
    model = vargen.create_model(name)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    assert model.eval().predict(images).shape == (4,)
