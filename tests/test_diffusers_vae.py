"""Any diffusers AutoencoderKL as a continuous tokenizer: loaded offline from a pre-filled Hub
cache by repo id, same latents as diffusers' own module (scaling and shift from its config),
exported back to diffusers' format, refused by name when it is not a vargen KL tokenizer, and
xAR trained and sampled on its latents."""
import pytest
import torch
from diffusers import AutoencoderKL

import vargen
from vargen.cli import main as cli_main
from vargen.data import MNISTDigits
from vargen.hub import load_state_dict_strict
from vargen.pipeline import Pipeline
from vargen.tokenizers import KLTokenizer, load_diffusers_vae, to_diffusers
from vargen.tokenizers.diffusers_vae import (convert_diffusers_vae, diffusers_config,
                                             kl_config_from_diffusers)

from helpers import prefill_hub_cache

# 4 levels (32 px -> 4x4 latents, xar-tiny's grid), attention in one down and one up block.
TINY = dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4,
            down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D",
                              "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "AttnUpDecoderBlock2D"),
            scaling_factor=0.5, shift_factor=0.1, sample_size=32)


@pytest.fixture
def hub_vae(tmp_path, monkeypatch):
    """A tiny AutoencoderKL saved with save_pretrained as the Hub cache's vargen/tiny-vae."""
    torch.manual_seed(0)
    vae = AutoencoderKL(**TINY).eval()
    with torch.no_grad():  # non-zero biases, so a mis-wired key would show
        for p in vae.parameters():
            p.add_(0.01 * torch.randn_like(p))
    prefill_hub_cache(tmp_path / "hub", "vargen/tiny-vae", vae.save_pretrained, monkeypatch)
    return vae


def _digits(n=4):
    return MNISTDigits("heldout").images[:n]


def test_hub_vae_loads_by_repo_id_offline_with_its_factors(hub_vae):
    tok = load_diffusers_vae("vargen/tiny-vae")
    assert isinstance(tok, KLTokenizer) and not tok.is_discrete
    assert (tok.config.scale_factor, tok.config.shift_factor) == (0.5, 0.1)
    assert tok.config.encoder_attn_levels == (1,) and tok.config.decoder_attn_levels == (0,)
    assert tok.latent_channels == 4 and tok.token_grid(32) == (4, 4) and tok.token_grid((64, 32)) == (8, 4)
    x = _digits()
    with torch.no_grad():
        latents = tok.encode(x)
        assert latents.shape == (4, 4, 4, 4)
        reference = (hub_vae.encode(x).latent_dist.mode() - 0.1) * 0.5  # diffusers' convention
        torch.testing.assert_close(latents, reference, atol=1e-6, rtol=0)
        pixels = tok.decode(latents)
        assert pixels.shape == x.shape
        torch.testing.assert_close(pixels, hub_vae.decode(latents / 0.5 + 0.1).sample, atol=1e-5, rtol=0)
        torch.testing.assert_close(pixels, tok(x), atol=1e-5, rtol=0)  # the factors cancel
    with pytest.raises(FileNotFoundError, match="vargen/not-cached"):
        load_diffusers_vae("vargen/not-cached")


def test_kl_tokenizer_exports_to_diffusers_and_back_bit_exact(tmp_path):
    tok = vargen.create_model("kl-mnist", pretrained=True).eval()
    vae = to_diffusers(tok)
    vae.save_pretrained(tmp_path / "vae")
    back = load_diffusers_vae(str(tmp_path / "vae"))
    assert back.config == tok.config
    for k, v in tok.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    x = _digits(2)
    with torch.no_grad():
        assert torch.equal(back.encode(x), tok.encode(x))
        torch.testing.assert_close(vae.encode(x).latent_dist.mode() * tok.config.scale_factor,
                                   tok.encode(x), atol=1e-6, rtol=0)


def test_legacy_attention_names_are_renamed():
    tok = KLTokenizer(kl_config_from_diffusers(TINY))
    legacy = {k.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.")
              .replace(".to_out.0.", ".proj_attn."): v for k, v in tok.state_dict().items()}
    assert any(".proj_attn." in k for k in legacy)
    load_state_dict_strict(tok, convert_diffusers_vae(legacy))
    assert convert_diffusers_vae(tok.state_dict()).keys() == tok.state_dict().keys()


def test_registered_hub_vaes_have_their_published_architectures():
    assert {"sd-vae-ft-ema", "sd-vae-ft-mse", "mar-vae-kl16-diffusers"} <= set(vargen.list_models(kind="tokenizer"))
    entry = vargen.get_entry("sd-vae-ft-ema")
    assert entry.weights.hub_repo == "stabilityai/sd-vae-ft-ema"
    with torch.device("meta"):
        sd = vargen.create_model("sd-vae-ft-ema")
    assert sd.downsample == 8 and sd.latent_channels == 4 and sd.config.scale_factor == 0.18215
    assert round(sd.num_params() / 1e6, 1) == 83.7  # Stable Diffusion's VAE
    mar = diffusers_config(vargen.model_config("mar-vae-kl16-diffusers"))  # ecosystem.md 2.7b
    assert mar["block_out_channels"] == (128, 128, 256, 256, 512) and mar["latent_channels"] == 16
    assert mar["down_block_types"] == ("DownEncoderBlock2D",) * 4 + ("AttnDownEncoderBlock2D",)
    assert mar["up_block_types"] == ("UpDecoderBlock2D",) * 5 and mar["scaling_factor"] == 0.2325
    with pytest.raises(ValueError, match="not a registered diffusers VAE"):
        load_diffusers_vae("llamagen-vq16")
    with pytest.raises(KeyError, match="sd-vae-ft-ema"):
        load_diffusers_vae("sd-vae-ft-emma")


@pytest.mark.parametrize("change,match", [
    (dict(latents_mean=[0.0] * 4, latents_std=[1.0] * 4), "latents_mean"),
    (dict(norm_num_groups=16), "norm_num_groups"),
    (dict(use_quant_conv=False), "use_quant_conv"),
    (dict(down_block_types=("SimpleDown",) * 4), "block types"),
    (dict(block_out_channels=(32, 48, 64, 64)), "multiples"),
])
def test_vaes_vargen_cannot_run_are_refused_by_name(change, match):
    with pytest.raises(ValueError, match=match):
        kl_config_from_diffusers({**TINY, **change})


def test_xar_trains_and_samples_on_a_hub_vae(hub_vae, tmp_path):
    load_diffusers_vae("vargen/tiny-vae").save_pretrained(tmp_path / "vae")
    base = ["--batch-size", "8", "--steps", "3", "--split", "heldout", "--no-progress",
            "--cache-dir", str(tmp_path / "cache")]
    assert cli_main(["train", "--model", "xar-tiny", *base, "--tokenizer", str(tmp_path / "vae"),
                     "--out", str(tmp_path / "xar")]) == 0
    tokenizer = KLTokenizer.from_pretrained(tmp_path / "vae")
    generator = vargen.create_model("xar-tiny", pretrained=tmp_path / "xar" / "final")
    pipe = Pipeline(tokenizer, generator, sampler="flow", sampler_options=dict(num_steps=2))
    images = pipe.generate([0, 1, 2], seed=0)
    assert images.shape == (3, 3, 32, 32) and torch.isfinite(images).all()
    alone = pipe.generate([1], seed=0, sample_offset=1)  # per-sample seeds: batch-invariant
    torch.testing.assert_close(alone, images[1:2], atol=1e-4, rtol=0)
