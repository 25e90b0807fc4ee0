"""LlamaGen VQ and MAR KL-16 tokenizers: official key trees, strict official loading, shapes,
a real fit on MNIST digits, save/load round trips and input errors."""
import argparse
from pathlib import Path
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import random_state
from official_tokenizer_keys import official_kl_keys, official_vq_keys
from safetensors.torch import load_file

import vargen
from vargen.data import MNISTDigits
from vargen.hub import WeightsError, load_state_dict_strict
from vargen.tokenizers import KLTokenizer, VQTokenizer, convert_llamagen_vq, convert_mar_kl16
from vargen.tokenizers.diffusers_vae import diffusers_config


# ----------------------------------------------------------------------------- expected key trees
# The official trees (key -> shape) are built in tests/official_tokenizer_keys.py.
def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _converted_shapes(converter, official):
    """What the converter makes of an official key tree (meta tensors: no memory)."""
    return {k: tuple(v.shape) for k, v in
            converter({k: torch.empty(shape, device="meta") for k, shape in official.items()}).items()}


@pytest.mark.parametrize("name", ["llamagen-vq-tiny", "llamagen-vq16", "llamagen-vq8"])
def test_converted_official_vq_key_tree_is_the_model_and_diffusers_vqmodel(name):
    from diffusers import VQModel

    c = vargen.model_config(name)
    with torch.device("meta"):  # full-size models without allocating weights
        model = vargen.create_model(name)
        n = len(c.ch_mult)  # the VQModel of ecosystem.md 2.7 / samplers_tokenizers.md C.5
        vqmodel = VQModel(down_block_types=("DownEncoderBlock2D",) * (n - 1) + ("AttnDownEncoderBlock2D",),
                          up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * (n - 1),
                          block_out_channels=tuple(c.ch * m for m in c.ch_mult),
                          layers_per_block=c.num_res_blocks, latent_channels=c.z_channels,
                          vq_embed_dim=c.codebook_embed_dim, num_vq_embeddings=c.codebook_size)
    official = official_vq_keys(c)
    assert _converted_shapes(convert_llamagen_vq, official) == _shapes(model)  # strict: 0 missing / 0 extra
    assert len(official) == len(_shapes(model))  # one-to-one renames
    # diffusers' VQModel has the same keys, bar vargen's codebook-usage window
    assert _shapes(vqmodel) == {k: v for k, v in _shapes(model).items() if k != "quantize.codebook_used"}


@pytest.mark.parametrize("name", ["mar-kl-tiny", "mar-kl16"])
def test_converted_official_kl_key_tree_is_the_model_and_diffusers_autoencoderkl(name):
    from diffusers import AutoencoderKL

    c = vargen.model_config(name)
    with torch.device("meta"):
        model = vargen.create_model(name)
        vae = AutoencoderKL(**diffusers_config(c))
    official = official_kl_keys(c)
    assert _converted_shapes(convert_mar_kl16, official) == _shapes(model) == _shapes(vae)
    if name == "mar-kl16":  # MAR: attention only in down[4] and the mids, none in the decoder up path
        assert len(official) == 312
        attn = sorted({k.rsplit(".attn.", 1)[0] for k in official if ".attn." in k})
        assert attn == ["encoder.down.4"]
        assert vae.config.down_block_types[4] == "AttnDownEncoderBlock2D"
        assert set(vae.config.up_block_types) == {"UpDecoderBlock2D"}
        assert model.config.scale_factor == 0.2325 and model.downsample == 16


def test_full_size_parameter_counts():
    with torch.device("meta"):
        vq16, kl16 = vargen.create_model("llamagen-vq16"), vargen.create_model("mar-kl16")
    assert round(vq16.num_params() / 1e6) == 72  # LlamaGen README: 72M
    assert vq16.downsample == 16 and vq16.vocab_size == 16384
    assert 60e6 < kl16.num_params() < 70e6  # a ~254 MB fp32 checkpoint


# ----------------------------------------------------------------------------- same outputs as before
# tests/fixtures/README.md: outputs of the hand-written conv stack (commit bdf7671) on weights that
# random_state() rebuilds from the official key tree; here they reach the diffusers-based modules
# through the official converters.
BEFORE = load_file(Path(__file__).parent / "fixtures" / "tokenizers_before_diffusers.safetensors")
KL_ATTN = dict(encoder_attn_levels=(1, 3), decoder_attn_levels=(0, 2))


def _from_official(name, keys, converter, **overrides):
    model = vargen.create_model(name, **overrides).eval()
    official = random_state(keys(vargen.model_config(name, **overrides)), seed=0)
    load_state_dict_strict(model, converter(official))
    return model


def test_vq_on_diffusers_blocks_matches_the_official_layout_module():
    vq = _from_official("llamagen-vq-tiny", official_vq_keys, convert_llamagen_vq)
    x = BEFORE["vq.images"]  # [2, 3, 32, 48]
    with torch.no_grad():
        torch.testing.assert_close(vq._latents(x), BEFORE["vq.latents"], atol=1e-5, rtol=0)
        ids = vq.encode(x)
        assert torch.equal(ids, BEFORE["vq.ids"])
        torch.testing.assert_close(vq.decode(ids), BEFORE["vq.decoded"], atol=1e-4, rtol=0)
        torch.testing.assert_close(vq(x), BEFORE["vq.recon"], atol=1e-4, rtol=0)
        torch.testing.assert_close(vq.loss(x)[0].reshape(1), BEFORE["vq.loss"], atol=0, rtol=1e-5)


@pytest.mark.parametrize("case,overrides", [("kl", {}), ("kl_attn", KL_ATTN)])
def test_kl_on_diffusers_blocks_matches_the_official_layout_module(case, overrides):
    kl = _from_official("mar-kl-tiny", official_kl_keys, convert_mar_kl16, **overrides)
    x = BEFORE[f"{case}.images"]
    with torch.no_grad():
        torch.testing.assert_close(kl.quant_conv(kl.encoder(x)), BEFORE[f"{case}.moments"], atol=1e-5, rtol=0)
        latents = kl.encode(x)
        torch.testing.assert_close(latents, BEFORE[f"{case}.latents"], atol=1e-5, rtol=0)
        torch.testing.assert_close(kl.decode(latents), BEFORE[f"{case}.decoded"], atol=1e-4, rtol=0)
        loss = kl.loss(x, generator=torch.Generator().manual_seed(2))[0]
    torch.testing.assert_close(loss.reshape(1), BEFORE[f"{case}.loss"], atol=0, rtol=1e-5)


# ----------------------------------------------------------------------------- official checkpoints
def _official_file(tmp_path, name, sd, extra=None):
    """An official-style training checkpoint: weights under "model" next to other entries."""
    path = tmp_path / name
    torch.save({"model": {**sd, **(extra or {})}, "steps": torch.tensor(5),
                "args": argparse.Namespace(lr=1e-4)}, path)
    return path


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_official_vq_checkpoint_loads_strictly(tmp_path):
    official = random_state(official_vq_keys(vargen.model_config("llamagen-vq-tiny")))
    official["quantize.codebook_used"] = torch.arange(65536.0) % 64
    loaded = vargen.create_model("llamagen-vq-tiny", pretrained=_official_file(tmp_path, "vq.pt", official))
    assert torch.equal(loaded.quantize.codebook_used, official["quantize.codebook_used"])
    assert torch.equal(loaded.encoder.down_blocks[3].attentions[0].to_q.weight,
                       official["encoder.conv_blocks.3.attn.0.q.weight"][:, :, 0, 0])
    assert torch.equal(loaded.decoder.up_blocks[2].resnets[0].conv_shortcut.weight,  # 64 -> 32 wide
                       official["decoder.conv_blocks.2.res.0.nin_shortcut.weight"])

    del official["quantize.codebook_used"]
    with pytest.raises(WeightsError, match="quantize.codebook_used"):
        vargen.create_model("llamagen-vq-tiny", pretrained=_official_file(tmp_path, "missing.pt", official))


def test_official_kl_checkpoint_drops_loss_keys_and_is_strict_otherwise(tmp_path):
    official = random_state(official_kl_keys(vargen.model_config("mar-kl-tiny")))
    loss_keys = {"loss.logvar": torch.zeros(()),
                 "loss.discriminator.main.0.weight": torch.randn(4, 3, 4, 4),
                 "loss.perceptual_loss.net.slice1.0.weight": torch.randn(4, 3, 3, 3)}
    loaded = vargen.create_model("mar-kl-tiny", pretrained=_official_file(tmp_path, "kl16.ckpt", official, loss_keys))
    assert torch.equal(loaded.decoder.up_blocks[0].upsamplers[0].conv.weight,  # LDM up.3 = lowest res
                       official["decoder.up.3.upsample.conv.weight"])
    assert torch.equal(loaded.encoder.mid_block.attentions[0].to_out[0].bias,
                       official["encoder.mid.attn_1.proj_out.bias"])

    path = _official_file(tmp_path, "extra.ckpt", official, {"encoder.extra.weight": torch.zeros(2)})
    with pytest.raises(WeightsError, match="encoder.extra.weight"):
        vargen.create_model("mar-kl-tiny", pretrained=path)


def test_save_pretrained_round_trip_is_bit_exact(tmp_path):
    images = F.avg_pool2d(MNISTDigits("train").images[:2], 2)  # 16 px: a 2x2 grid
    for name in ("llamagen-vq-tiny", "mar-kl-tiny"):
        model = vargen.create_model(name).train()
        model.loss(images)[0].backward()  # fills codebook_used for the VQ
        model.save_pretrained(tmp_path / name)
        loaded = type(model).from_pretrained(tmp_path / name)
        _assert_same_state(model, loaded)
        assert loaded.config == model.config
    assert model.downsample == 8  # both tiny configs map 32 px digits to a 4x4 grid
    assert loaded.config.scale_factor == 0.2325


# ----------------------------------------------------------------------------- behaviour
def test_vq_encode_decode_shapes_and_unit_codebook():
    model = vargen.create_model("llamagen-vq-tiny").eval()
    images = torch.rand(3, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        ids = model.encode(images)
        assert ids.dtype == torch.long and tuple(ids.shape) == (3, 4, 6)
        assert 0 <= int(ids.min()) and int(ids.max()) < model.vocab_size == 64
        decoded = model.decode(ids)
        assert tuple(decoded.shape) == (3, 3, 32, 48)
        # decoding the ids equals the straight-through reconstruction
        torch.testing.assert_close(decoded, model(images), atol=1e-5, rtol=1e-5)
    norms = model.quantize.codebook().norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    init_norms = model.quantize.embedding.weight.norm(dim=-1)  # stored l2-normalised at init too
    torch.testing.assert_close(init_norms, torch.ones_like(init_norms))
    assert model.token_grid(64) == (8, 8)


def test_kl_encode_decode_shapes_scale_and_sampling():
    model = vargen.create_model("mar-kl-tiny").eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        latents = model.encode(images)
        assert tuple(latents.shape) == (2, 16, 4, 4) and model.latent_channels == 16
        torch.testing.assert_close(latents, model.posterior(images).mean * 0.2325)
        decoded = model.decode(latents)
        assert tuple(decoded.shape) == (2, 3, 32, 32)
        torch.testing.assert_close(decoded, model(images), atol=1e-5, rtol=1e-5)  # scale cancels
        draw = lambda: model.encode(images, sample=True, generator=torch.Generator().manual_seed(1))
        assert torch.equal(draw(), draw()) and not torch.allclose(draw(), latents)


def _fit_digits(name, **overrides):
    """Fit a handful of real digits; returns (logs per step, eval MSE, mean-image MSE)."""
    # 16 px digits and a 2-level net (8x8 grid) keep this to a few seconds on one CPU core.
    images = F.avg_pool2d(MNISTDigits("train").images[:6], 2)
    model = vargen.create_model(name, ch_mult=(1, 2), **overrides)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(50):
        loss, logs = model.train().loss(images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(logs)
    with torch.no_grad():
        mse = F.mse_loss(model.eval()(images), images).item()
    # the best reconstruction that ignores its input: the batch's mean image
    baseline = F.mse_loss(images.mean(0, keepdim=True).expand_as(images), images).item()
    return model, history, mse, baseline


def test_vq_loss_falls_on_real_digits():
    model, logs, mse, baseline = _fit_digits("llamagen-vq-tiny")
    assert logs[-1]["loss"] < 0.5 * logs[0]["loss"], (logs[0], logs[-1])
    assert mse < 0.6 * baseline, (mse, baseline)  # it reconstructs each digit, not an average
    assert all(key in logs[-1] for key in ("codebook_loss", "commit_loss", "codebook_usage"))
    assert int(model.quantize.codebook_used.count_nonzero()) > 0


def test_kl_loss_falls_on_real_digits():
    _, logs, mse, baseline = _fit_digits("mar-kl-tiny", encoder_attn_levels=(1,))
    assert logs[-1]["loss"] < 0.5 * logs[0]["loss"], (logs[0], logs[-1])
    assert mse < 0.6 * baseline, (mse, baseline)
    assert logs[-1]["kl"] > 0


def test_entropy_loss_rewards_confident_diverse_codes_and_is_added_when_enabled():
    from vargen.tokenizers.vq import entropy_loss
    v = 8
    diverse = torch.eye(v) * 50.0  # every token sure of its own code
    collapsed = torch.zeros(v, v)
    collapsed[:, 0] = 50.0  # every token sure of the same code
    assert entropy_loss(diverse, 1.0).item() == pytest.approx(-math.log(v), abs=1e-3)
    assert entropy_loss(collapsed, 1.0).item() == pytest.approx(0.0, abs=1e-3)
    assert entropy_loss(torch.zeros(v, v), 1.0).item() == pytest.approx(0.0, abs=1e-3)  # unsure
    base = vargen.create_model("llamagen-vq-tiny").eval()
    model = vargen.create_model("llamagen-vq-tiny", entropy_loss_ratio=0.1).eval()
    model.load_state_dict(base.state_dict())
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    (loss0, logs0), (loss, logs) = base.loss(images), model.loss(images)
    assert "entropy_loss" not in logs0 and logs["entropy_loss"] != 0
    assert loss.item() == pytest.approx(loss0.item() + logs["entropy_loss"], rel=1e-6)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["llamagen-vq-tiny", "mar-kl-tiny"])
def test_bad_images_raise_clear_errors(name):
    model = vargen.create_model(name)
    with pytest.raises(ValueError, match="divisible by 8"):
        model.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(TypeError, match="uint8"):
        model.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="divisible by 8"):
        model.loss(torch.zeros(1, 3, 32, 36))


def test_bad_tokens_raise_clear_errors():
    vq = vargen.create_model("llamagen-vq-tiny")
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        vq.decode(torch.full((1, 4, 4), 64))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        vq.decode(torch.full((1, 4, 4), -1))
    with pytest.raises(TypeError, match="integer"):
        vq.decode(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"\[B, h, w\]"):
        vq.decode(torch.zeros(1, 16, dtype=torch.long))
    kl = vargen.create_model("mar-kl-tiny")
    with pytest.raises(ValueError, match=r"\[B, 16, h, w\]"):
        kl.decode(torch.zeros(1, 8, 4, 4))
    with pytest.raises(TypeError, match="float"):
        kl.decode(torch.zeros(1, 16, 4, 4, dtype=torch.long))


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="multiples of 32"):
        VQTokenizer(vargen.model_config("llamagen-vq-tiny", ch=16))
    with pytest.raises(ValueError, match="attention levels"):
        KLTokenizer(vargen.model_config("mar-kl-tiny", encoder_attn_levels=(7,)))


@pytest.mark.parametrize("name", ["llamagen-vq-tiny", "mar-kl-tiny"])
def test_inputs_are_cast_to_the_weights_dtype_and_range_is_checked(name):
    tok = vargen.create_model(name).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        same = tok.encode(x)
        assert torch.equal(tok.encode(x.double()), same)  # float64 in: cast, not a conv dtype error
        assert tok.decode(same.double() if same.is_floating_point() else same).dtype == torch.float32
        with pytest.raises(ValueError, match=r"from \[0, 255\] use x / 127.5 - 1"):
            tok.encode(x * 127.5 + 127.5)
