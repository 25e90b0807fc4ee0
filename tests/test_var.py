"""VAR: official key trees, multi-scale quantization, cached vs teacher-forced logits, seeding,
the sampler's capability check, and fitting a few digits (tokenizer and transformer)."""
import json
from pathlib import Path

import pytest
import torch

import vargen
from vargen.hub import WeightsError, load_from
from vargen.models.var import VAR, VARConfig, convert_var_checkpoint
from vargen.samplers import create_sampler
from vargen.samplers.next_scale import PRESETS
from vargen.tokenizers.var_quant import phi_indices
from vargen.tokenizers.var_vqvae import VARVQConfig, VARVQVAE, convert_var_vqvae

from helpers import random_state

KEYS = json.loads((Path(__file__).parent / "fixtures" / "var_official_keys.json").read_text())["models"]


def _official_state(name: str, seed: int = 0) -> dict:
    """Random weights in the released layout, with the buffers the official modules hold."""
    shapes = KEYS[name]
    state = random_state({k: v for k, v in shapes.items() if k not in ("lvl_1L", "attn_bias_for_masking")}, seed)
    if "lvl_1L" in shapes:
        model = vargen.create_model("var-tiny")
        state["lvl_1L"] = model.lvl_1L.clone()
        state["attn_bias_for_masking"] = model.attn_bias_for_masking.clone()
    for k in state:
        if k.endswith("zero_k_bias"):
            state[k] = torch.zeros_like(state[k])
    return state


@pytest.mark.parametrize("name,converter", [("var-d16", convert_var_checkpoint), ("var-d36", convert_var_checkpoint),
                                            ("var-vqvae", convert_var_vqvae)])
def test_complete_official_key_tree_converts_to_the_model(name, converter):
    """Every key of the recorded release (names and shapes) maps onto vargen's module, and back."""
    entry = vargen.get_entry(name)
    with torch.device("meta"):
        model = entry.model_cls(entry.config)
        state = {k: torch.empty(s) for k, s in KEYS[name].items()}
    converted = {k: tuple(v.shape) for k, v in converter(state).items()}
    assert converted == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_tiny_official_checkpoints_load_strictly_and_refuse_bad_keys(tmp_path):
    state = _official_state("var-tiny")
    path = tmp_path / "var_tiny.pth"
    torch.save(state, path)
    model = vargen.create_model("var-tiny", pretrained=str(path))
    assert torch.equal(model.head.weight, state["head.weight"])
    renamed = dict(state)
    renamed["blocks.0.attn.mat_qkv.weights"] = renamed.pop("blocks.0.attn.mat_qkv.weight")
    torch.save(renamed, path)
    with pytest.raises(WeightsError, match=r"blocks\.0\.attn\.mat_qkv\.weight'.*\n.*mat_qkv\.weights"):
        vargen.create_model("var-tiny", pretrained=str(path))
    missing = {k: v for k, v in state.items() if k != "blocks.1.attn.scale_mul_1H11"}
    torch.save(missing, path)
    with pytest.raises(WeightsError, match=r"blocks\.1\.attn\.scale_mul_1H11"):
        vargen.create_model("var-tiny", pretrained=str(path))
    torch.save({k: v for k, v in state.items() if k != "attn_bias_for_masking"}, path)
    with pytest.raises(WeightsError, match="attn_bias_for_masking"):
        vargen.create_model("var-tiny", pretrained=str(path))

    vae_state = random_state(KEYS["var-vqvae-tiny-official"])
    vae_path = tmp_path / "vae.pth"
    torch.save(vae_state, vae_path)
    config = VARVQConfig(vocab_size=64, z_channels=8, ch=32, patch_nums=(1, 2, 3, 4))  # builder's ch_mult
    vae = load_from(VARVQVAE, config, str(vae_path), converter=convert_var_vqvae)
    qkv = vae_state["encoder.mid.attn_1.qkv.weight"][:, :, 0, 0]
    assert torch.equal(vae.encoder.mid_block.attentions[0].to_k.weight, qkv[32 * 4:2 * 32 * 4])
    del vae_state["quantize.ema_vocab_hit_SV"]
    torch.save(vae_state, vae_path)
    with pytest.raises(WeightsError, match=r"quantize\.ema_vocab_hit_SV"):
        load_from(VARVQVAE, config, str(vae_path), converter=convert_var_vqvae)


def test_phi_schedule_matches_the_release():
    assert phi_indices(4, 10) == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert phi_indices(4, 4) == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return vargen.create_model("var-vqvae-tiny").eval()


def test_multiscale_quantization(vae):
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        scales = vae.encode_scales(x)
        ids = vae.encode(x)
        assert [tuple(s.shape) for s in scales] == [(3, p * p) for p in vae.patch_nums]
        assert torch.equal(ids, torch.cat(scales, 1)) and tuple(ids.shape) == (3, 30)
        f_hat = vae.ids_to_fhat(ids)
        assert (vae.decode(ids) - vae.decode(f_hat)).abs().max() <= 1e-5
        # the training pass builds the same f_hat from the same ids
        f = vae.features(x)
        st, _, train_ids = vae.quantize(f)
        assert torch.equal(torch.cat(train_ids, 1), ids) and (st - f_hat).abs().max() <= 1e-5
        assert torch.equal(vae.encode(x), ids)  # deterministic round trip
        assert torch.equal(vae.encode(vae.decode(ids).clamp(-1, 1)), vae.encode(vae.decode(ids).clamp(-1, 1)))
    with pytest.raises(ValueError, match=r"\[B, 30\]"):
        vae.decode(ids[:, :29])


def _model(vae, **kw):
    torch.manual_seed(1)
    model = VAR(VARConfig(depth=2, embed_dim=64, num_heads=2, num_classes=10, vocab_size=64, Cvae=8,
                          patch_nums=(1, 2, 3, 4), tokenizer=None, init_adaln_gamma=0.1, **kw))
    with torch.no_grad():
        model.head.weight.normal_(std=0.1)
    return model.attach_tokenizer(vae)


@pytest.mark.parametrize("shared_aln", [False, True])
def test_cached_inference_equals_teacher_forcing_at_every_scale(vae, shared_aln):
    model = _model(vae, shared_aln=shared_aln).eval()
    ids = torch.randint(0, 64, (2, 30))
    labels = torch.tensor([3, 10])  # a class and the null class
    with torch.no_grad():
        x = vae.quantize.teacher_inputs(ids)
        full = model(labels, x)
        model.setup_cache(2)
        for si, (a, e) in enumerate(model.begin_ends):
            step = model.scale_logits(None if si == 0 else x[:, a - 1:e - 1], labels, si)
            assert (step - full[:, a:e]).abs().max() <= 1e-5, si
        model.clear_cache()


def test_same_seed_same_image_alone_or_in_a_batch(vae):
    model = _model(vae).eval()
    labels = torch.tensor([1, 4, 7, 9])
    for options in (dict(cfg_scale=2.5, top_k=20, top_p=0.9), dict(cfg_scale=1.0), dict(more_smooth=True)):
        sampler = create_sampler("next-scale", **options)
        batch = sampler(model, labels, vargen.SampleRNG(5, 4))
        assert sampler.stats["forward_passes"] == 4
        for i in range(4):
            alone = sampler(model, labels[i:i + 1], vargen.SampleRNG(5, [i]))
            if alone.is_floating_point():  # f_hat: batched matmuls round differently
                assert torch.allclose(alone, batch[i:i + 1], atol=1e-4), (options, i)
            else:
                assert torch.equal(alone, batch[i:i + 1]), (options, i)
    assert tuple(batch.shape) == (4, 8, 4, 4)  # more_smooth returns f_hat, which decode takes
    assert vae.decode(batch).shape == (4, 3, 8, 8)


def test_sampler_refuses_a_model_without_the_capability():
    with pytest.raises(TypeError, match=r"next-scale.*NextScaleDecoding.*scale_logits"):
        create_sampler("next-scale")(vargen.create_model("llamagen-tiny"), torch.tensor([0]), vargen.SampleRNG(0, 1))
    with pytest.raises(TypeError, match="raster.*RasterDecoding.*VAR lacks prefill, decode"):
        create_sampler("raster")(vargen.create_model("var-tiny"), torch.tensor([0]), vargen.SampleRNG(0, 1))


def test_presets_are_sampler_options():
    for preset in PRESETS.values():
        create_sampler("next-scale", **preset)
    assert PRESETS["fid"]["cfg_scale"] == 2.5  # VAR's cfg 1.5 = guidance weight 1 + 1.5 at the last scale


def test_guidance_is_the_released_linear_cfg():
    """``(1 + t) cond - t uncond`` with ``t = cfg * si / (SN - 1)``, cfg = cfg_scale - 1."""
    sampler = create_sampler("next-scale", cfg_scale=2.5)
    cond, uncond = torch.randn(1, 3, 5), torch.randn(1, 3, 5)
    for si in range(4):
        t = 1.5 * si / 3
        got = sampler.logits.combine(torch.cat([cond, uncond]), si, 4)
        assert torch.allclose(got, (1 + t) * cond - t * uncond, atol=1e-6)


def _digits(n=8):
    """One digit per class (so each class's ids can be memorised), 8x8."""
    from vargen.data import MNISTDigits
    data = MNISTDigits("train")
    picks = [int((data.labels == c).nonzero()[0]) for c in range(n)]
    return torch.nn.functional.interpolate(data.images[picks], size=8, mode="area"), data.labels[picks].long()


def _fit(model, inputs, labels, steps: int, lr: float, key: str = "loss"):
    """Adam on one batch; the logged ``key`` at every step."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    seen = []
    for _ in range(steps):
        loss, logs = model.training_loss(inputs, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(logs[key])
    return seen, logs


def test_vqvae_and_var_fit_a_few_digits():
    images, labels = _digits()
    torch.manual_seed(0)
    vae = VARVQVAE(VARVQConfig(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                               patch_nums=(1, 2, 3, 4), using_znorm=True)).train()
    l2, logs = _fit(vae, images, labels, 60, 2e-3, "l2")
    assert l2[-1] < 0.5 * l2[0] and 0 < logs["codebook_usage"] <= 1
    with torch.no_grad():
        ids = vae.eval().encode(images)
    model = _model(vae, cond_drop_rate=0.0).train()
    losses, _ = _fit(model, ids, labels, 150, 3e-3)
    assert losses[-1] < 0.3 * losses[0]
    sampler = create_sampler("next-scale", cfg_scale=1.0, top_k=1)  # greedy: the memorised ids
    out = sampler(model.eval(), labels, vargen.SampleRNG(0, len(labels)))
    assert (out == ids).float().mean() > 0.9


@pytest.mark.parametrize("option", ["perceptual_weight", "disc_weight"])
def test_optional_perceptual_and_gan_terms_reach_their_parameters(option):
    torch.manual_seed(0)
    vae = VARVQVAE(VARVQConfig(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                               patch_nums=(1, 2, 3, 4), **{option: 0.1})).train()
    x = torch.rand(2, 3, 32, 32) * 2 - 1  # VGG needs 32 px for its five stages
    vae.config.patch_nums = (1, 2, 4, 8, 16)  # f is 16x16 at 32 px
    vae.quantize.__init__(64, 8, (1, 2, 4, 8, 16), True)
    loss, logs = vae.training_loss(x, None)
    loss.backward()
    key = "perceptual" if option == "perceptual_weight" else "gan_d"
    assert key in logs and torch.isfinite(loss)
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0
    if option == "disc_weight":
        assert all(p.grad is not None for p in vae.discriminator.parameters())
        assert "discriminator.main.0.weight" in vae.state_dict()
    else:
        assert not any(k.startswith("perceptual") for k in vae.state_dict())  # frozen, never saved
