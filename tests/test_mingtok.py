"""MingTok: parity with the official module, the released key tree, the semantic decoder's KV cache,
shapes and errors at every allowed size, save/load, and a tiny fit on MNIST digits."""
import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import vargen
from vargen.data import MNISTDigits
from vargen.eval.recon import psnr_ssim, reconstruct
from vargen.hub import WeightsError, load_state_dict_strict
from vargen.tokenizers import MingTok, MingTokConfig, convert_mingtok
from vargen.tokenizers.mingtok import MINGTOK_TINY, MINGTOK_VISION

from mingtok_reference import PARITY_CONFIG, official_mingtok_keys, parity_inputs, seeded_official_weights

GOLDEN = Path(__file__).parent / "data" / "mingtok_official_tiny.safetensors"


def parity_model() -> MingTok:
    model = MingTok(PARITY_CONFIG).eval()
    load_state_dict_strict(model, convert_mingtok(seeded_official_weights()), "official")
    return model


# ----------------------------------------------------------------------------- official parity
def test_matches_the_official_module_outputs():
    """Outputs of the official module (fa_enable=False, CPU fp32) on the same seeded weights."""
    golden, model = load_file(GOLDEN), parity_model()
    with torch.no_grad():
        for tag, x in parity_inputs().items():  # 48 px: the interpolated position embedding
            torch.testing.assert_close(model.encode_sequence(x), golden[f"{tag}.latent"], atol=1e-5, rtol=0)
            z = model.encode(x)
            torch.testing.assert_close(model.semantic_features(z), golden[f"{tag}.features"], atol=1e-5, rtol=0)
            torch.testing.assert_close(model.decode(z), golden[f"{tag}.recon"], atol=1e-5, rtol=0)
        seq = model.encode(parity_inputs()["x32"]).flatten(2).transpose(1, 2)
        model.semantic_decoder.setup_cache(1, seq.shape[1])
        steps = torch.cat([model.semantic_features(seq[:, i:i + 1]) for i in range(seq.shape[1])], 1)
    torch.testing.assert_close(steps, golden["x32.cached_features"], atol=1e-5, rtol=0)


def test_released_key_tree_converts_and_loads_strictly(tmp_path):
    official = seeded_official_weights()
    official["target_backbone.blocks.0.weight"] = torch.zeros(4)  # training checkpoints carry a teacher
    model = MingTok(PARITY_CONFIG)
    load_state_dict_strict(model, convert_mingtok(official), "official")
    # The Hub release is a transformers save (official keys in .safetensors): converted on load.
    path = tmp_path / "model.safetensors"
    save_file(official, str(path))
    loaded = vargen.create_model("mingtok-tiny", pretrained=str(path), **dataclasses.asdict(PARITY_CONFIG))
    torch.testing.assert_close(loaded.state_dict(), model.state_dict(), atol=0, rtol=0)
    # A missing key fails with its (converted) name.
    del official["semantic_decoder.blocks.0.1.attn.qkv.weight"]
    with pytest.raises(WeightsError, match=r"semantic_decoder\.blocks\.1\.attn\.wqkv\.weight"):
        load_state_dict_strict(model, convert_mingtok(official), "official")


def test_released_config_has_the_released_tree():
    with torch.device("meta"):
        model = MingTok(MINGTOK_VISION)
    official = official_mingtok_keys(MINGTOK_VISION)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted = {k: tuple(v.shape) for k, v in convert_mingtok(
        {k: torch.empty(s, device="meta") for k, s in official.items()}).items()}
    assert converted == ours
    assert len(ours) == 738 and model.num_params() == 697_719_584  # the Hub card's "0.7B"
    assert vargen.get_entry("mingtok-vision").weights.hub_repo == "inclusionAI/MingTok-Vision"


# ----------------------------------------------------------------------------- semantic decoder cache
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return MingTok(MINGTOK_TINY).eval()


@pytest.mark.parametrize("chunk", [1, 3])
def test_semantic_decoder_cache_equals_full_causal_pass(tiny, chunk):
    latents = torch.randn(2, 12, MINGTOK_TINY.latent_dim)
    dec = tiny.semantic_decoder
    with torch.no_grad():
        full = dec(latents)
        dec.setup_cache(2, 12)
        try:
            steps = torch.cat([dec(latents[:, i:i + chunk]) for i in range(0, 12, chunk)], 1)
            assert dec.cache_length == 12
        finally:
            dec.clear_cache()
    assert dec.cache_length is None
    assert (steps - full).abs().max() <= 1e-5


def test_cls_token_changes_no_patch_output(tiny):
    x = MNISTDigits("heldout").images[:2]
    with torch.no_grad():
        seq = tiny.encode_sequence(x)                          # [B, n + 1, C], cls last
        other = torch.cat([seq[:, :-1], torch.randn_like(seq[:, -1:]) * 5], 1)
        a, b = tiny.semantic_decoder(seq), tiny.semantic_decoder(other)
        n = seq.shape[1] - 1
        assert not torch.allclose(a[:, -1], b[:, -1])
        torch.testing.assert_close(a[:, :n], b[:, :n], atol=0, rtol=0)
        torch.testing.assert_close(a[:, :n], tiny.semantic_features(tiny.encode(x)), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- shapes and errors
@pytest.mark.parametrize("size", [(32, 32), (4, 4), (16, 48), (64, 40)])
def test_encode_decode_shapes(tiny, size):
    x = torch.rand(2, 3, *size) * 2 - 1
    with torch.no_grad():
        z = tiny.encode(x)
        assert z.shape == (2, MINGTOK_TINY.latent_dim, size[0] // 4, size[1] // 4)
        assert tiny.token_grid(size) == tuple(z.shape[-2:])
        y = tiny.decode(z)
        assert y.shape == x.shape and y.abs().max() <= 1
        assert tiny.semantic_features(z).shape == (2, z.shape[2] * z.shape[3], MINGTOK_TINY.semantic_dim)


def test_bad_inputs_are_clear_errors(tiny):
    with pytest.raises(ValueError, match="divisible by 4"):
        tiny.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"latents must be \[B, 4, h, w\]"):
        tiny.decode(torch.zeros(1, 8, 4, 4))
    with pytest.raises(ValueError, match="grid"):
        tiny.decode(torch.zeros(1, 16, 4))  # a sequence has no grid to decode to
    with pytest.raises(TypeError, match="float"):
        tiny.decode(torch.zeros(1, 4, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"latents \[B, n, 4\]"):
        tiny.semantic_decoder(torch.zeros(1, 3, 8))
    with pytest.raises(ValueError, match="no semantic_target"):
        tiny.target_features(torch.zeros(1, 3, 32, 32), (8, 8))
    with pytest.raises(ValueError, match="features must be"):
        tiny.decode_features(torch.zeros(1, 15, 64), (4, 4))
    with pytest.raises(ValueError, match="not divisible"):
        MingTok(dataclasses.replace(MINGTOK_TINY, semantic_dim=60))
    with pytest.raises(KeyError, match="mingtok-tiny"):
        vargen.create_model("mingtok-tinny")


def test_save_load_bit_exact_and_normalisation(tmp_path, tiny):
    model = MingTok(MINGTOK_TINY).eval()
    model.load_state_dict(tiny.state_dict())
    x = MNISTDigits("heldout").images[:4]
    with torch.no_grad():
        before = model(x)
        mean, scale = model.fit_latent_normalization(MNISTDigits("train").images[:64])
        z = model.encode(x)
        assert abs(z.mean().item()) < 0.5 and 0.5 < z.std().item() < 2
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=0)  # decoding undoes it
    model.save_pretrained(tmp_path / "m")
    loaded = MingTok.from_pretrained(tmp_path / "m").eval()
    assert (loaded.config.latent_mean, loaded.config.latent_scale) == (mean, scale)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), model.encode(x)) and torch.equal(loaded(x), model(x))


# ----------------------------------------------------------------------------- training
def _features(model, images):
    """Semantic features average-pooled to a 2x2 grid: ``[N, 4 * semantic_dim]``."""
    with torch.no_grad():
        z = torch.cat([model.semantic_features(model.encode(x)) for x in images.split(100)])
    z = z.transpose(1, 2).unflatten(2, (8, 8))                      # [N, D, 8, 8]
    return torch.nn.functional.adaptive_avg_pool2d(z, 2).flatten(1)


def _probe_accuracy(train_x, train_y, test_x, test_y, ridge=0.1):
    """Closed-form ridge-regression probe on standardised features (one-hot targets)."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    a, b = torch.cat([a, torch.ones(len(a), 1)], 1), torch.cat([b, torch.ones(len(b), 1)], 1)
    w = torch.linalg.solve(a.T @ a + ridge * len(a) * torch.eye(a.shape[1]), a.T @ torch.eye(10)[train_y])
    return ((b @ w).argmax(1) == test_y).float().mean().item()


def test_tiny_fit_raises_psnr_and_semantic_probe():
    config = dataclasses.replace(MINGTOK_TINY, mask_ratio=0.5, mask_prob=0.5,
                                 semantic_target="digit-classifier", semantic_target_dim=128)
    torch.manual_seed(0)
    model, untrained = MingTok(config), MingTok(config).eval()
    untrained.load_state_dict(model.state_dict())
    train, held = MNISTDigits("train"), MNISTDigits("heldout")
    held_x, held_y = held.images[::5], held.labels[::5]  # 20 per class (the splits are class-sorted)
    start = psnr_ssim(reconstruct(model, held_x), held_x)[0].mean().item()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    model.train()
    for step in range(30):
        idx = torch.randint(0, len(train), (16,), generator=g)
        loss, logs = model.training_loss(train.images[idx], train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert 0 < logs["masked_images"] < 1 and model.low_level_encoder.mask_token.grad is not None
    end = psnr_ssim(reconstruct(model, held_x), held_x)[0].mean().item()
    assert end >= start + 6, (start, end)
    # Linear probe on mean-pooled semantic features: trained decoder beats its random init.
    probe = {}
    for name, m in (("trained", model.eval()), ("random", untrained)):
        probe[name] = _probe_accuracy(_features(m, train.images[::4]), train.labels[::4],
                                      _features(m, held_x), held_y)
    assert probe["trained"] > probe["random"] + 0.05, probe


def test_training_loss_without_extras_is_pixel_l1(tiny):
    x = MNISTDigits("train").images[:4]
    loss, logs = tiny.training_loss(x)
    assert set(logs) == {"l1", "loss"} and loss.item() == pytest.approx(logs["l1"])
    assert tiny.semantic_head is None and tiny.low_level_encoder.mask_token is None
