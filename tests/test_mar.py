"""MAR (models/mar.py), its DiffLoss head and diffusion (models/diffloss.py), and the masked
random-order sampler (samplers/mar.py)."""
import argparse
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vargen
from vargen.data import MNISTDigits
from vargen.hub import WeightsError, load_state_dict_strict
from vargen.models.diffloss import GaussianDiffusion, space_timesteps
from vargen.models.mar import MAR, PRESETS, convert_mar_checkpoint
from vargen.samplers import create_sampler
from vargen.samplers.mar import mask_schedule
from vargen.seeding import SampleRNG

FIXTURES = Path(__file__).parent / "fixtures"


def tiny(**overrides):
    return vargen.create_model("mar-tiny", **overrides).eval()


def lively(model, seed=0):
    """Non-zero head outputs (the released init zeroes the output layer), bounded epsilon."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


# ----------------------------------------------------------------------------- diffusion
def test_diffusion_matches_official_formulas():
    """Respacing (100, 25, none), p_mean_variance (learned-range variance, predicted x0, posterior
    mean) and the training terms (mse + vb) against values recorded from LTH14/mar's
    ``diffusion/`` on fixed inputs (tests/fixtures/README.md)."""
    ref = json.loads((FIXTURES / "mar_diffusion_reference.json").read_text())
    x, out, x0, noise = (torch.tensor(ref[k]) for k in ("x", "out", "x0", "noise"))
    for steps, case in ref["cases"].items():
        d = GaussianDiffusion(1000, int(steps))
        assert d.timestep_map == case["timestep_map"]
        assert torch.allclose(1 - torch.exp(d.tables["log_betas"]), 1 - torch.tensor(case["betas"],
                              dtype=torch.float64), atol=1e-12)
        t = torch.tensor(case["t"])
        mean, log_var, x0_pred = d.p_mean_variance(out, x, t)
        for name, mine in (("mean", mean), ("log_variance", log_var), ("pred_xstart", x0_pred)):
            assert (mine - torch.tensor(case[name])).abs().max() <= 1e-6, (steps, name)
        seen = []
        terms = d.training_losses(lambda a, tt: (seen.append(tt), out)[1], x0, t, noise)
        assert seen[0].tolist() == case["model_t"]  # the network sees the original step index
        for name in ("mse", "vb", "loss"):
            assert (terms[name] - torch.tensor(case[name])).abs().max() <= 1e-6, (steps, name)
        # The ancestral step: mean + exp(log_var / 2) * noise, and no noise at step 0.
        for i in (0, 1):
            step = d.p_sample(out, x, int(t[i]), noise)
            expect = mean[i] + (0 if t[i] == 0 else torch.exp(0.5 * log_var[i]) * noise[i])
            assert torch.allclose(step[i], expect, atol=1e-6)


def test_space_timesteps_and_learned_range_variance_bounds():
    assert space_timesteps(1000, 100)[:3] == [0, 10, 20] and space_timesteps(1000, 100)[-1] == 999
    assert len(space_timesteps(1000, 64)) == 64 and space_timesteps(1000, 1000) == list(range(1000))
    with pytest.raises(ValueError):
        space_timesteps(1000, 1001)
    d = GaussianDiffusion(1000, 100)
    x, t = torch.randn(4, 3), torch.tensor([1, 30, 60, 99])
    lo = d.p_mean_variance(torch.cat([torch.zeros(4, 3), -torch.ones(4, 3)], 1), x, t)[1]
    hi = d.p_mean_variance(torch.cat([torch.zeros(4, 3), torch.ones(4, 3)], 1), x, t)[1]
    assert torch.allclose(lo, d.tables["post_logvar"][t].float()[:, None].expand(4, 3))
    assert torch.allclose(hi, d.tables["log_betas"][t].float()[:, None].expand(4, 3))


@pytest.mark.parametrize("solver,steps", [("ddpm", 50), ("ddim", 10)])
def test_oracle_denoiser_recovers_its_point(solver, steps):
    """With the exact epsilon of a single data point, the respaced steps (ancestral, or the DDIM
    option) end on it."""
    d, base = GaussianDiffusion(1000, steps), GaussianDiffusion(1000)
    x0 = torch.tensor([[0.5, -1.0, 2.0]])
    x = torch.randn(1, 3)
    for i in reversed(range(d.num_steps)):
        ac = base.tables["sqrt_ac"][d.timestep_map[i]].item() ** 2
        eps = (x - math.sqrt(ac) * x0) / math.sqrt(1 - ac)
        out = torch.cat([eps, torch.zeros_like(eps)], 1)
        x = d.p_sample(out, x, i, torch.randn(1, 3)) if solver == "ddpm" else d.ddim_step(out, x, i)
    assert torch.allclose(x, x0, atol=1e-4)


# ----------------------------------------------------------------------------- official weights
def official_layout(model: MAR) -> dict:
    """vargen state dict -> the release's key tree (inverse of convert_mar_checkpoint)."""
    out = {}
    for k, v in model.state_dict().items():
        if k == "cls_embedding.embedding_table.weight":
            out["class_emb.weight"], out["fake_latent"] = v[:-1].clone(), v[-1:].clone()
        else:
            out[k.replace("head.", "diffloss.net.", 1) if k.startswith("head.") else k] = v.clone()
    return out


def test_mar_b_key_tree_converts_to_vargen_exactly():
    """The complete official MAR-B key tree (recorded from LTH14/mar on the meta device) converts
    to exactly vargen's mar-b keys and shapes."""
    recorded = json.loads((FIXTURES / "mar_b_keys.json").read_text())["keys"]
    official = {k: torch.empty(s, device="meta") for k, s in recorded.items()}
    converted = {k: tuple(v.shape) for k, v in convert_mar_checkpoint(official).items()}
    with torch.device("meta"):
        model = MAR(PRESETS["mar-b"][0])
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert converted == mine
    assert converted["cls_embedding.embedding_table.weight"] == (1001, 768)


def test_training_checkpoint_loads_the_ema_strictly(tmp_path):
    """MAR's checkpoint-last.pth holds {"model", "model_ema", "args", ...}: the EMA is loaded
    (the argparse namespace allow-listed), and a missing or extra key is refused by name."""
    torch.manual_seed(0)
    ema = official_layout(lively(tiny()))
    raw = {k: torch.zeros_like(v) for k, v in ema.items()}
    path = tmp_path / "checkpoint-last.pth"
    torch.save({"model": raw, "model_ema": ema, "epoch": 799, "args": argparse.Namespace(model="mar_base")}, path)
    model = vargen.create_model("mar-tiny", pretrained=str(path))
    assert torch.equal(model.cls_embedding.embedding_table.weight[:-1], ema["class_emb.weight"])
    assert torch.equal(model.cls_embedding.embedding_table.weight[-1], ema["fake_latent"][0])
    assert torch.equal(model.head.final_layer.linear.weight, ema["diffloss.net.final_layer.linear.weight"])
    broken = dict(ema)
    del broken["diffusion_pos_embed_learned"]
    with pytest.raises(WeightsError, match="diffusion_pos_embed_learned"):
        load_state_dict_strict(tiny(), convert_mar_checkpoint(broken))
    with pytest.raises(WeightsError, match="extra.weight"):
        load_state_dict_strict(tiny(), convert_mar_checkpoint({**ema, "extra.weight": torch.zeros(1)}))
    with pytest.raises(KeyError, match="fake_latent"):
        convert_mar_checkpoint({k: v for k, v in ema.items() if k != "fake_latent"})


def test_null_class_is_fake_latent_and_label_dropout_swaps_it_in():
    model = tiny(class_dropout_prob=1.0).train()
    emb = model.cls_embedding
    assert emb.has_null and model.null_class == 10
    assert torch.equal(emb(torch.tensor([3, 4])), emb.embedding_table.weight[[10, 10]])


# ----------------------------------------------------------------------------- sampler
def test_mask_schedule_is_the_release_cosine_rule():
    for n, iters in ((256, 64), (256, 256), (64, 16), (16, 4), (4, 9)):
        sched = mask_schedule(n, iters)
        masked = n
        for step, (mask_len, after) in enumerate(sched):
            expect = max(1, min(masked - 1, math.floor(n * math.cos(math.pi / 2 * (step + 1) / iters))))
            assert mask_len == expect and after == (0 if step == iters - 1 else mask_len)
            masked = after
        assert sched[-1][1] == 0


def test_linear_cfg_and_passes():
    """Linear CFG 1 + (cfg - 1)(N - mask_len)/N per iteration (the last one at (N - 1)/N, as the
    release), one transformer pass per iteration and num_steps head calls each."""
    model = lively(tiny())
    sampler = create_sampler("mar", num_iter=4, num_steps=7, cfg_scale=3.0, clip_denoised=5.0)
    sampler(model, torch.tensor([1, 2]), SampleRNG(0, 2))
    n = model.seq_len
    expect = [1 + 2.0 * (n - m) / n for m, _ in mask_schedule(n, 4)]
    assert sampler.stats["cfg_scales"] == pytest.approx(expect)
    assert sampler.stats["cfg_scales"][-1] == pytest.approx(1 + 2.0 * (n - 1) / n)
    assert sampler.stats["forward_passes"] == 4 and sampler.stats["head_evaluations"] == 28


class Recorder:
    """Wraps a model's ``conditions`` to record the known masks it is called with."""

    def __init__(self, model):
        self.calls, self.inner = [], model.conditions
        model.conditions = self

    def __call__(self, tokens, known, labels):
        self.calls.append(known.clone())
        return self.inner(tokens, known, labels)


def test_same_seed_same_image_alone_or_in_a_batch_of_4():
    torch.manual_seed(0)
    model = lively(tiny())
    rec = Recorder(model)
    sampler = create_sampler("mar", num_iter=4, num_steps=10, cfg_scale=2.0, clip_denoised=5.0)
    batch = sampler(model, torch.tensor([3, 1, 4, 1]), SampleRNG(7, [10, 11, 12, 13]))
    batch_orders = [k[:4] for k in rec.calls]
    rec.calls.clear()
    alone = sampler(model, torch.tensor([1]), SampleRNG(7, [11]))
    assert torch.allclose(batch[1:2], alone, atol=1e-5)
    assert all(torch.equal(b[1:2], a[:1]) for b, a in zip(batch_orders, rec.calls))
    rec.calls.clear()
    other = sampler(model, torch.tensor([1]), SampleRNG(8, [11]))
    assert not all(torch.equal(b[1:2], a[:1]) for b, a in zip(batch_orders, rec.calls))  # new order
    assert not torch.allclose(other, alone)
    assert not torch.equal(batch_orders[1][1], batch_orders[1][3])  # per-sample orders differ


def test_sampler_options_are_checked():
    with pytest.raises(ValueError):
        create_sampler("mar", num_iter=0)
    with pytest.raises(ValueError):
        create_sampler("mar", cfg_schedule="cosine")
    with pytest.raises(ValueError):
        create_sampler("mar", solver="heun")
    with pytest.raises(ValueError):
        create_sampler("mar", clip_denoised=-1.0)
    with pytest.raises(TypeError):
        create_sampler("mar", top_k=5)


# ----------------------------------------------------------------------------- training
def test_conditions_ignore_unknown_tokens():
    """Masked tokens are dropped by the encoder: changing them leaves every condition unchanged."""
    model = lively(tiny())
    tokens = torch.randn(2, 16, 4)
    known = torch.zeros(2, 16, dtype=torch.bool)
    known[0, :5], known[1, 3:8] = True, True
    z = model.conditions(tokens, known, torch.tensor([1, 2]))
    noisy = torch.where(known[..., None], tokens, torch.randn_like(tokens))
    assert torch.allclose(z, model.conditions(noisy, known, torch.tensor([1, 2])), atol=1e-6)
    with pytest.raises(ValueError, match="same number"):
        model.conditions(tokens, torch.arange(16).expand(2, 16) < torch.tensor([[3], [4]]), torch.tensor([1, 2]))


def test_training_masks_follow_the_truncated_normal():
    model = tiny()
    torch.manual_seed(0)
    fractions = [1 - model.random_known(2, torch.device("cpu"))[0].float().mean().item() for _ in range(300)]
    assert min(fractions) >= 0.7 - 1e-6 and max(fractions) <= 1.0
    assert 0.8 < sum(fractions) / len(fractions) < 0.9  # E = 1 - 0.25 * phi(0)/(Phi(0)-Phi(-1.2)) ~ 0.84


def test_wider_mask_ratios_reach_the_few_masked_tokens_of_late_iterations():
    """mar-mnist's N(1, 0.5) on [0, 1]: E r = 1 - 0.5 (phi(0) - phi(2)) / (Phi(0) - Phi(-2)) ~ 0.64,
    P(r < 0.5) ~ 0.28 (16 tokens: masked counts round up, by 1/32 on average)."""
    model = tiny(mask_ratio_min=0.0, mask_ratio_std=0.5)
    torch.manual_seed(0)
    fractions = torch.tensor([1 - model.random_known(2, torch.device("cpu"))[0].float().mean().item()
                              for _ in range(600)])
    assert 0.6 < fractions.mean() < 0.72 and 0.18 < (fractions < 0.5).float().mean() < 0.35
    for bad in (dict(mask_ratio_min=1.0), dict(mask_ratio_std=0.0)):
        with pytest.raises(ValueError, match="mask_ratio"):
            tiny(**bad)


def test_tiny_mar_fits_and_regenerates_latent_grids():
    """A handful of class-labelled latent grids (pooled MNIST digits, unit std): trained briefly,
    the sampler regenerates each class's grid (latent MSE < 0.05)."""
    torch.manual_seed(0)
    data = MNISTDigits("train")
    picks = [int((data.labels == c).nonzero()[0]) for c in range(4)]
    latents = F.pixel_unshuffle(F.adaptive_avg_pool2d(data.images[picks, :1], 8), 2)   # [4, 4, 4, 4]
    latents = (latents - latents.mean()) / latents.std()
    labels = data.labels[picks].long()
    model = vargen.create_model("mar-tiny", class_dropout_prob=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(300):
        loss, _ = model.training_loss(latents.repeat(4, 1, 1, 1), labels.repeat(4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out = create_sampler("mar", num_iter=4, num_steps=25, clip_denoised=4.0)(model, labels, SampleRNG(0, 4))
    assert F.mse_loss(out, latents) < 0.05
