"""xAR (next-X prediction, flow matching, Noisy Context Learning), entity partitions and the
flow samplers."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vargen
from vargen.data import MNISTDigits
from vargen.hub import WeightsError, load_state_dict_strict
from vargen.models.entities import ENTITY_KINDS, entity_causal_mask, make_partition
from vargen.models.xar import convert_xar_checkpoint
from vargen.nn import LabelEmbedder, apply_rope, rope_2d
from vargen.samplers import create_sampler
from vargen.seeding import SampleRNG

PARTITIONS = [("cell", (16, 16), 8), ("cell", (8, 12), 4), ("token", (3, 5), None),
              ("subsample", (16, 16), 4), ("subsample", (5, 7), 2), ("scale", (16, 16), None),
              ("scale", (5, 3), None), ("image", (4, 6), None)]


def tiny(**overrides):
    return vargen.create_model("xar-tiny", **overrides).eval()


# ----------------------------------------------------------------------------- entities
@pytest.mark.parametrize("kind,grid,size", PARTITIONS)
def test_partition_covers_every_token_once_and_mask_is_block_causal(kind, grid, size):
    p = make_partition(kind, grid, size)
    h, w = grid
    assert sorted(p.order.tolist()) == list(range(h * w))
    assert p.starts[-1] == h * w and sum(p.sizes) == h * w
    ids = {i: e for e, g in enumerate(p.groups) for i in g}
    mask = entity_causal_mask(p)
    seq_entity = [ids[i] for i in p.order.tolist()]
    expected = torch.tensor([[seq_entity[k] <= seq_entity[q] for k in range(h * w)]
                             for q in range(h * w)])
    assert torch.equal(mask, expected)
    for e in range(p.num_entities):  # bidirectional inside, nothing of later entities
        s = p.span(e)
        assert mask[s, s].all() and not mask[s, s.stop:].any()
    x = torch.randn(2, 3, h, w)
    assert torch.equal(p.to_grid(p.to_sequence(x)), x)


def test_partition_orders():
    raster = torch.arange(256).view(16, 16)
    cells = make_partition("cell", (16, 16), 8)
    # Official clusterify: 2x2 cells of 8x8 (TL, TR, BL, BR), raster inside a cell.
    official = raster.view(2, 8, 2, 8).permute(0, 2, 1, 3).reshape(4, 64)
    assert [list(g) for g in cells.groups] == official.tolist()
    sub = make_partition("subsample", (16, 16), 4)
    assert [list(g) for g in sub.groups] == [raster[i::4, j::4].flatten().tolist()
                                             for i in range(4) for j in range(4)]
    scale = make_partition("scale", (16, 16))
    assert scale.sizes == [1, 3, 12, 48, 192]
    seen = set()
    for level, group in enumerate(scale.groups):  # levels 0..l = the stride 2^(4-l) lattice
        seen |= set(group)
        stride = 2 ** (4 - level)
        assert seen == set(raster[::stride, ::stride].flatten().tolist())
        assert list(group) == sorted(group)
    assert make_partition("token", (3, 5)).groups == tuple((i,) for i in range(15))
    assert make_partition("image", (4, 6)).groups == (tuple(range(24)),)
    assert set(ENTITY_KINDS) == {"cell", "subsample", "scale", "image", "token"}


def test_partition_errors():
    with pytest.raises(ValueError, match="divide"):
        make_partition("cell", (16, 16), 3)
    with pytest.raises(ValueError, match="unknown entity kind"):
        make_partition("row", (4, 4))
    with pytest.raises(ValueError, match="expected"):
        make_partition("cell", (4, 4), 2).to_sequence(torch.zeros(1, 2, 4, 5))


# ----------------------------------------------------------------------------- flow samplers
MU, SIGMA = 1.5, 0.5


class GaussianFlow(nn.Module):
    """Exact velocity of data ~ N(MU, SIGMA^2) per dimension under x_t = (1 - t) x + t eps:
    v = E[eps - x | x_t] = (t - a SIGMA^2) / (a^2 SIGMA^2 + t^2) (x_t - a MU) - MU, a = 1 - t."""

    def __init__(self):
        super().__init__()
        self.partition = make_partition("image", (2, 2))
        self.latent_channels, self.num_classes, self.null_class = 4, 10, 10
        self.cls_embedding = LabelEmbedder(10, 4)
        self.device = torch.device("cpu")

    def check_labels(self, labels, allow_null=False):
        self.cls_embedding.check(labels, allow_null)

    def setup_cache(self, batch_size):
        pass

    def clear_cache(self):
        pass

    def velocity(self, x, t, labels, entity, context=None):
        a = 1.0 - t
        return (t - a * SIGMA ** 2) / (a * a * SIGMA ** 2 + t * t) * (x.double() - a * MU) - MU


def sde_limit_variance(t_min=0.04):
    """Exact final variance of the official scheme: exact marginal at t_min, then one
    deterministic drift step x + (0 - t_min) ((2 - t) v + x) to t = 0."""
    a = 1 - t_min
    var = a * a * SIGMA ** 2 + t_min ** 2
    k = (t_min - a * SIGMA ** 2) / var
    c = 1 - t_min - t_min * (2 - t_min) * k
    return c * c * var


@pytest.mark.parametrize("method,steps,variance", [("euler", 400, SIGMA ** 2),
                                                    ("heun", 40, SIGMA ** 2),
                                                    ("sde", 200, sde_limit_variance())])
def test_flow_sampler_reproduces_gaussian_target(method, steps, variance):
    n = 1000  # x 16 dims: standard errors 0.004 (mean) and 1.1 % (variance)
    sampler = create_sampler("flow", method=method, num_steps=steps)
    out = sampler(GaussianFlow(), torch.zeros(n, dtype=torch.long), SampleRNG(0, n)).double()
    assert out.shape == (n, 4, 2, 2)
    assert abs(out.mean().item() - MU) < 0.02
    assert abs(out.var().item() / variance - 1) < 0.03
    assert sampler.stats["forward_passes"] == (2 * steps - 1 if method == "heun" else steps)


def test_flow_sampler_options_are_checked():
    with pytest.raises(ValueError, match="method"):
        create_sampler("flow", method="rk4")
    with pytest.raises(ValueError, match="cfg_schedule"):
        create_sampler("flow", cfg_schedule="cosine")


# ----------------------------------------------------------------------------- loss
def test_noisy_context_path_and_loss():
    model = tiny()
    latents, noise = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4)
    p = model.partition
    x_t, target, _ = model.noisy_context(latents, torch.zeros(3, 4), noise)
    assert torch.equal(x_t, latents) and torch.equal(target, noise - latents)
    x_t, _, _ = model.noisy_context(latents, torch.ones(3, 4), noise)
    assert torch.allclose(x_t, noise)
    # Per-entity times reach the right tokens: entity 1 pure noise, the others clean.
    x_t, _, _ = model.noisy_context(latents, torch.tensor([[0.0, 1.0, 0.0, 0.0]] * 3), noise)
    seq, lat_seq, noise_seq = (p.to_sequence(v) for v in (x_t, latents, noise))
    assert torch.allclose(seq[:, p.span(1)], noise_seq[:, p.span(1)])
    assert torch.equal(seq[:, p.span(0)], lat_seq[:, p.span(0)])
    # A network returning exactly eps - x has zero loss; t ~ logit-normal(0, 1) per entity.
    model.forward = lambda x_t, t, labels: noise - latents
    assert model.loss(latents, torch.tensor([0, 1, 2]), noise=noise).item() == 0.0
    _, _, t = model.noisy_context(torch.zeros(4000, 4, 4, 4))
    logit = torch.logit(t)
    assert t.shape == (4000, 4) and abs(logit.mean()) < 0.05 and abs(logit.std() - 1) < 0.05
    assert (t[:, 0] != t[:, 1]).all()


def test_tiny_xar_fits_mnist_latents():
    torch.manual_seed(0)
    data = MNISTDigits("train")
    picks = [int((data.labels == c).nonzero()[0]) for c in range(8)]
    latents = F.pixel_unshuffle(F.adaptive_avg_pool2d(data.images[picks, :1], 8), 2)  # [8, 4, 4, 4]
    latents = (latents - latents.mean()) / latents.std()
    labels = data.labels[picks].long()
    model = vargen.create_model("xar-tiny", class_dropout_prob=0.0)
    g = torch.Generator().manual_seed(1)
    x_eval, y_eval = latents.repeat(8, 1, 1, 1), labels.repeat(8)
    t_eval = torch.sigmoid(torch.randn(64, 4, generator=g))
    noise_eval = torch.randn(x_eval.shape, generator=g)

    def held_loss():
        with torch.no_grad():
            return model.loss(x_eval, y_eval, t_eval, noise_eval).item()

    start = held_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(80):
        loss = model.loss(latents.repeat(4, 1, 1, 1), labels.repeat(4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_loss() < 0.25 * start


# ----------------------------------------------------------------------------- KV cache
@pytest.mark.parametrize("kind,size", [("cell", 2), ("subsample", 2), ("scale", 1), ("token", 1)])
def test_cached_velocity_equals_full_block_causal_forward(kind, size):
    torch.manual_seed(0)
    model = tiny(entity_kind=kind, entity_size=size)
    p, b = model.partition, 2
    labels = torch.tensor([3, 7])
    clean = p.to_sequence(torch.randn(b, 4, 4, 4))
    reference = copy.deepcopy(model)  # forward refuses to run while a cache is set
    model.setup_cache(b)
    with torch.no_grad():
        for e in range(p.num_entities):
            s = p.span(e)
            for step, t in enumerate([0.9, 0.35]):
                x = torch.randn(b, s.stop - s.start, 4)
                context = clean[:, p.span(e - 1)] if e > 0 and step == 0 else None
                v = model.velocity(x, t, labels, e, context=context)
                full = clean.clone()
                full[:, s] = x
                full[:, s.stop:] = torch.randn_like(full[:, s.stop:])  # must not matter
                times = torch.zeros(b, p.num_entities)
                times[:, e], times[:, e + 1:] = t, 0.5
                ref = p.to_sequence(reference(p.to_grid(full), times, labels))[:, s]
                assert (v - ref).abs().max() <= 1e-5
                assert model.cache_length == s.start
    model.clear_cache()
    with pytest.raises(RuntimeError, match="KV cache"):
        model.velocity(torch.zeros(b, p.sizes[1], 4), 0.5, labels, 1)


class Uncached(nn.Module):
    """The same velocity hooks computed by a full block-causal forward from scratch."""

    def __init__(self, model):
        super().__init__()
        self.model, self.partition = model, model.partition
        self.latent_channels, self.null_class = model.latent_channels, model.null_class
        self.num_classes, self.device = model.num_classes, model.device
        self.check_labels = model.check_labels
        self.clean = {}

    def setup_cache(self, batch_size):
        pass

    def clear_cache(self):
        self.clean = {}

    def velocity(self, x, t, labels, entity, context=None):
        p = self.partition
        if context is not None:
            self.clean[entity - 1] = context
        full = torch.zeros(x.shape[0], p.num_tokens, x.shape[2])
        for e in range(entity):
            full[:, p.span(e)] = self.clean[e]
        full[:, p.span(entity)] = x
        times = torch.zeros(x.shape[0], p.num_entities)
        times[:, entity] = t
        return p.to_sequence(self.model(p.to_grid(full), times, labels))[:, p.span(entity)]


@pytest.mark.parametrize("method", ["sde", "heun"])
def test_cached_sampling_equals_uncached_computation(method):
    torch.manual_seed(0)
    model = tiny()
    labels = torch.tensor([1, 5, 9])
    kw = dict(method=method, num_steps=4, cfg_scale=2.5)
    fast = create_sampler("flow", **kw)
    out = fast(model, labels, SampleRNG(3, 3))
    ref = create_sampler("flow", **kw)(Uncached(model), labels, SampleRNG(3, 3))
    assert (out - ref).abs().max() <= 1e-5
    # Cache savings against the official scheme (every step CFG-doubled, even at scale 1).
    sizes, steps = model.partition.sizes, fast.stats["forward_passes"] // 4
    official = 2 * (steps * sum(sizes) + sum(sizes[:-1]))
    assert fast.stats["tokens_per_image"] == official - steps * sizes[0]


def test_same_seed_same_latents_alone_or_in_batch():
    torch.manual_seed(0)
    model = tiny()
    sampler = create_sampler("flow", num_steps=5, cfg_scale=3.0)
    batch = sampler(model, torch.tensor([3, 1, 4]), SampleRNG(7, [10, 11, 12]))
    alone = sampler(model, torch.tensor([1]), SampleRNG(7, [11]))
    assert torch.allclose(batch[1:2], alone, atol=1e-5)
    assert not torch.allclose(batch[0], batch[2])
    assert sampler.stats["forward_passes"] == 20


# ----------------------------------------------------------------------------- official weights
def official_state(dim=32, depth=1, channels=4, grid=4, classes=10):
    """Key tree of the official ``xAR`` state dict at tiny size (shapes from models/xar.py)."""
    hidden, n, head_dim = int(dim * 4 * 2 / 3), grid * grid, dim // 2  # 2 heads

    def block(prefix):
        return {f"{prefix}.attn.qkv.weight": (3 * dim, dim), f"{prefix}.attn.qkv.bias": (3 * dim,),
                f"{prefix}.attn.proj.weight": (dim, dim), f"{prefix}.attn.proj.bias": (dim,),
                f"{prefix}.attn.rope.freqs": (head_dim // 4,),
                f"{prefix}.attn.rope.freqs_cos": (256, head_dim),
                f"{prefix}.attn.rope.freqs_sin": (256, head_dim),
                f"{prefix}.mlp.fc1_g.weight": (hidden, dim), f"{prefix}.mlp.fc1_g.bias": (hidden,),
                f"{prefix}.mlp.fc1_x.weight": (hidden, dim), f"{prefix}.mlp.fc1_x.bias": (hidden,),
                f"{prefix}.mlp.fc2.weight": (dim, hidden), f"{prefix}.mlp.fc2.bias": (dim,),
                f"{prefix}.ada_lin.1.weight": (6 * dim, dim), f"{prefix}.ada_lin.1.bias": (6 * dim,)}

    shapes = {"class_emb.weight": (classes + 1, dim),
              "time_embed.mlp.0.weight": (dim, 256), "time_embed.mlp.0.bias": (dim,),
              "time_embed.mlp.2.weight": (dim, dim), "time_embed.mlp.2.bias": (dim,),
              "z_proj.weight": (dim, channels), "z_proj.bias": (dim,), "z_proj_ln.weight": (dim,),
              "encoder_pos_embed_learned": (1, n, dim), "encoder_norm.weight": (dim,),
              "decoder_embed.weight": (dim, dim), "decoder_embed.bias": (dim,),
              "decoder_pos_embed_learned": (1, n, dim), "decoder_norm.weight": (dim,),
              "pred.weight": (channels, dim), "pred.bias": (channels,), "mask": (1, 1, n, n)}
    for i in range(depth):
        shapes.update(block(f"encoder_blocks.{i}"))
        shapes.update(block(f"decoder_blocks.{i}"))
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def test_official_key_tree_converts_and_loads_strictly(tmp_path):
    state = official_state()
    path = tmp_path / "xAR-tiny.pth"
    torch.save(state, path)
    model = vargen.create_model("xar-tiny", pretrained=str(path), dim=32, n_head=2)
    assert torch.equal(model.cls_embedding.embedding_table.weight, state["class_emb.weight"])
    assert torch.equal(model.decoder_blocks[0].attn.wo.bias, state["decoder_blocks.0.attn.proj.bias"])
    # Official position tables are in cell order; vargen keeps them in raster order.
    order = make_partition("cell", (4, 4), 2).order
    assert torch.equal(model.encoder_pos_embed_learned[0, order], state["encoder_pos_embed_learned"][0])
    del state["pred.bias"]
    with pytest.raises(WeightsError, match="pred.bias"):
        load_state_dict_strict(model, convert_xar_checkpoint(state))


def test_vargen_state_dict_file_round_trips(tmp_path):
    """A vargen-layout .pt is not converted again (its position tables are already raster order)."""
    model = tiny()
    torch.nn.init.normal_(model.encoder_pos_embed_learned)
    torch.save(model.state_dict(), tmp_path / "mine.pt")
    loaded = vargen.create_model("xar-tiny", pretrained=str(tmp_path / "mine.pt"))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_training_checkpoint_loads_the_ema(tmp_path):
    """xAR's training script (MAR's) saves {"model", "model_ema", ...} and evaluates the EMA."""
    ema = official_state()
    raw = {k: torch.zeros_like(v) for k, v in ema.items()}
    torch.save({"model": raw, "model_ema": ema, "epoch": 799}, tmp_path / "checkpoint-last.pth")
    model = vargen.create_model("xar-tiny", pretrained=str(tmp_path / "checkpoint-last.pth"),
                                dim=32, n_head=2)
    assert torch.equal(model.pred.weight, ema["pred.weight"])


def test_rope_matches_official_eva02_layout():
    """EVA-02 ``VisionRotaryEmbeddingFast`` as built by the official code (16x16 grid, pairs
    repeated twice, row half then column half, positions in 2x2-cell order) against vargen."""
    head_dim = 64
    half = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, half, 2).float() / half))
    pos = torch.arange(16).float()
    per_axis = (pos[:, None] * freqs[None]).repeat_interleave(2, dim=-1)  # [16, half]
    angles = torch.cat([per_axis[:, None].expand(16, 16, half),
                        per_axis[None, :].expand(16, 16, half)], dim=-1)
    angles = angles.view(2, 8, 2, 8, head_dim).permute(0, 2, 1, 3, 4).reshape(256, head_dim)
    table = rope_2d(16, head_dim)[make_partition("cell", (16, 16), 8).order]
    assert torch.allclose(table[..., 0].repeat_interleave(2, -1), angles.cos(), atol=1e-6)
    assert torch.allclose(table[..., 1].repeat_interleave(2, -1), angles.sin(), atol=1e-6)
    q = torch.randn(2, 256, 3, head_dim)
    pairs = q.view(2, 256, 3, half, 2)
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)  # rotate_half
    official = q * angles.cos()[:, None] + rotated * angles.sin()[:, None]
    assert torch.allclose(apply_rope(q, table), official, atol=1e-5)
