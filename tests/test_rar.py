"""RAR and its MaskGIT-VQGAN tokenizer: strict conversion of the released key trees, the training
forward (identity order = cached raster decoding; a random order = the official formula, rebuilt
by hand), the annealed random-order schedule, the pow-cosine CFG schedule, per-sample seeding
under the raster / SJD / GSD samplers, and fitting a handful of id maps."""
import json
import math
from pathlib import Path

import pytest
import torch

import vargen
from vargen.hub import WeightsError, load_state_dict_strict
from vargen.models.rar import PRESETS, RAR, RARConfig, convert_rar_checkpoint
from vargen.samplers import create_sampler
from vargen.samplers.guidance import Guidance
from vargen.seeding import SampleRNG
from vargen.tokenizers.maskgit_vqgan import MaskGITVQConfig, MaskGITVQGAN, convert_maskgit_vqgan

KEYS = json.loads((Path(__file__).parent / "fixtures" / "rar_official_keys.json").read_text())


def _shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


def _official(tree):
    return {k: torch.empty(shape, device="meta") for k, shape in tree.items()}


@pytest.mark.parametrize("name,official", [("rar-b", "rar_b"), ("rar-xxl", "rar_xxl")])
def test_released_generator_tree_converts_strictly(name, official):
    config = vargen.get_entry(name).config
    with torch.device("meta"):
        model = RAR(config)
    converted = convert_rar_checkpoint(_official(KEYS[official]))
    assert _shapes(converted) == _shapes(model.state_dict())  # every key and shape, nothing else
    assert config.dim == dict(rar_b=768, rar_xxl=1408)[official] and name in PRESETS


def test_released_tokenizer_tree_converts_strictly():
    with torch.device("meta"):
        model = MaskGITVQGAN(MaskGITVQConfig())
    tree = KEYS["maskgit-vqgan-imagenet-f16-256"]
    assert _shapes(convert_maskgit_vqgan(_official(tree))) == _shapes(model.state_dict())
    assert model.token_grid(256) == (16, 16) and model.vocab_size == 1024


def test_a_missing_or_extra_key_is_named():
    model = vargen.create_model("rar-tiny")
    state = convert_rar_checkpoint(model.state_dict())
    broken = {k: v for k, v in state.items() if k != "blocks.1.attn.q_norm.weight"}
    with pytest.raises(WeightsError, match="blocks.1.attn.q_norm.weight"):
        load_state_dict_strict(model, broken)
    with pytest.raises(WeightsError, match="extra.weight"):
        load_state_dict_strict(model, {**state, "extra.weight": torch.zeros(1)})


def lively(seed=0, **overrides) -> RAR:
    """rar-tiny with the adaLN-Zero layers and heads randomised (zero-initialised, they would hide
    every position and class effect)."""
    torch.manual_seed(seed)
    model = RAR(RARConfig(**{**dict(dim=64, n_layer=2, n_head=4, intermediate_size=128, vocab_size=64,
                                    grid_size=4, num_classes=10, dropout=0.0, attn_dropout=0.0,
                                    position_padding=4, timestep_padding=4), **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name:
                p.normal_(std=0.05)
    return model


def test_identity_order_equals_cached_raster_decoding():
    model = lively()
    tokens, labels = torch.randint(0, 64, (3, 16)), torch.tensor([1, 5, 10])  # 10: the null class
    with torch.no_grad():
        full = model(tokens, labels)  # [B, 16, V]
        model.setup_cache(3)
        steps = [model.prefill(labels)[:, None]]
        steps += [model.decode(tokens[:, i:i + 1], torch.tensor([i])) for i in range(15)]
        model.clear_cache()
        model.setup_cache(3)
        model.prefill(labels)
        block = model.decode(tokens[:, :15], torch.arange(15))  # one block over the cache
        model.clear_cache()
    assert torch.allclose(full, torch.cat(steps, 1), atol=1e-5, rtol=0)
    assert torch.allclose(full[:, 1:], block, atol=1e-5, rtol=0)


def test_random_order_follows_the_official_formula():
    """Slot 0 cls + pos[0]; slot 1 class + pos[1] + tap[2 + o_0]; slot i + 2 the code at o_i +
    pos[2 + o_i] + tap[2 + o_{i+1}]; adaLN condition class + timesteps[slot]; causal over slots."""
    model = lively()
    n, v = 16, 64
    tokens, labels = torch.randint(0, v, (2, n)), torch.tensor([3, 7])
    orders = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(s)) for s in (1, 2)])
    pos, tap, ts = model.pos_embed[0], model.target_aware_pos_embed[0], model.timesteps_embeddings[0]
    emb = model.embeddings.weight
    with torch.no_grad():
        out = model(tokens, labels, orders)
        for b in range(2):
            o, cls_row = orders[b].tolist(), emb[v + 1 + int(labels[b])]
            slots = [model.cls_token[0, 0] + pos[0], cls_row + pos[1] + tap[2 + o[0]]]
            slots += [emb[int(tokens[b, o[i]])] + pos[2 + o[i]] + tap[2 + o[i + 1]] for i in range(n - 1)]
            x = torch.stack(slots)[None]
            cond = (cls_row + ts[:n + 1])[None]
            for block in model.blocks:
                x = block(x, cond, None)  # no cache: causal
            ref = model.lm_head(model.adaln_before_head(x, cond))[0, 1:]
            assert torch.allclose(out[b], ref, atol=1e-5, rtol=0)
        # the target-aware rows matter: the same inputs without them give other logits
        raster = model(tokens, labels)
    assert not torch.allclose(out, raster, atol=1e-3)


def test_annealed_random_order_schedule():
    model = vargen.create_model("rar-tiny").train()  # anneal_start 2, anneal_end 6
    assert [model.random_ratio(s) for s in (0, 2, 4, 6, 7)] == [1.0, 1.0, 0.5, 0.0, 0.0]
    tokens, labels = torch.randint(0, 64, (8, 16)), torch.arange(8)
    for expected in (1.0, 1.0, 1.0, 0.75):
        _, logs = model.training_loss(tokens, labels)
        assert logs["random_ratio"] == expected
    assert int(model.train_step) == 4 and "train_step" in model.state_dict()  # resumes with the run
    with torch.no_grad():
        model.eval().training_loss(tokens, labels)
    assert int(model.train_step) == 4  # evaluation does not advance the clock
    raster = torch.arange(16).expand(8, 16)
    assert torch.equal(model.sample_orders(8, 0.0), raster)
    perms = model.sample_orders(8, 1.0)
    assert torch.equal(perms.sort(1).values, raster) and not torch.equal(perms, raster)


def test_pow_cosine_cfg_schedule_is_the_official_one():
    g, power, n = 16.0, 2.75, 256
    schedule = Guidance(cfg_scale=g, cfg_schedule="pow-cosine", cfg_power=power)
    for step in (0, 1, 64, 128, 255):
        ramp = (1 - torch.cos(((step / n) ** torch.tensor([power])) * torch.pi)) / 2  # modeling/rar.py
        assert math.isclose(schedule.guidance(step, n), float((g - 1) * ramp + 1), rel_tol=1e-6)
    assert schedule.guidance(0, n) == 1.0  # the first token is unguided
    constant = Guidance(cfg_scale=4.0, cfg_schedule="pow-cosine", cfg_power=0.0)  # README_RAR demo
    assert {constant.guidance(i, n) for i in range(n)} == {4.0}
    with pytest.raises(ValueError, match="cfg_power"):
        Guidance(cfg_scale=2.0, cfg_schedule="pow-cosine", cfg_power=-1)


@pytest.mark.parametrize("sampler", ["raster", "sjd", "gsd"])
def test_same_seed_same_image_alone_or_in_a_batch(sampler):
    model = lively()
    options = dict(cfg_scale=3.0, cfg_schedule="pow-cosine", cfg_power=2.0, temperature=1.02)
    batch = create_sampler(sampler, **options)(model, torch.tensor([0, 1, 2, 3]), SampleRNG(5, 4))
    for i in range(4):
        alone = create_sampler(sampler, **options)(model, torch.tensor([i]), SampleRNG(5, 4).subset([i]))
        assert torch.equal(alone[0], batch[i])


def test_fits_a_handful_of_id_maps_and_regenerates_them():
    """Trained through the whole schedule (random orders, annealing, raster), greedy raster
    decoding gives back each class's map."""
    torch.manual_seed(0)
    model = RAR(RARConfig(dim=64, n_layer=2, n_head=4, intermediate_size=128, vocab_size=16, grid_size=4,
                          num_classes=4, dropout=0.0, attn_dropout=0.0, class_dropout_prob=0.0,
                          position_padding=2, timestep_padding=2, anneal_start=100, anneal_end=200))
    maps = torch.randint(0, 16, (4, 4, 4), generator=torch.Generator().manual_seed(1))
    labels = torch.arange(4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(300):
        loss, _ = model.training_loss(maps.repeat(4, 1, 1), labels.repeat(4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    out = create_sampler("raster", temperature=0.0)(model.eval(), labels, SampleRNG(0, 4))
    assert torch.equal(out, maps)
