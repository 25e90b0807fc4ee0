"""NAR (image and video) and the diagonal NeighborSampler, at tiny sizes."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from vargen.hub import WeightsError, load_state_dict_strict
from vargen.models.nar import NAR
from vargen.models.neighbors import decode_steps, grid_coords, neighbor_sources, proximity_mask
from vargen.models.nar_video import NARVideo
from vargen.registry import create_model
from vargen.samplers import NeighborSampler, create_sampler
from vargen.seeding import SampleRNG

from helpers import count_network_passes, randomised


@pytest.mark.parametrize("grid", [4, 5])
def test_image_decoding_takes_2n_minus_1_passes(grid):
    model = randomised("nar-tiny", grid_size=grid)
    calls = count_network_passes(model)
    sampler = create_sampler("neighbor", cfg_scale=2.0, top_k=5)
    tokens = sampler(model, torch.tensor([1, 2]), SampleRNG(0, 2))
    assert tokens.shape == (2, grid, grid)
    assert len(calls) == sampler.stats["forward_passes"] == 2 * grid - 1


@pytest.mark.parametrize("order", ["diagonal", "frame"])
def test_video_decoding_takes_t_plus_h_plus_w_minus_2_passes_or_t_frames_of_diagonals(order):
    model = randomised("nar-video-tiny", decode_order=order)
    t, h, w = model.token_shape
    calls = count_network_passes(model)
    sampler = NeighborSampler(cfg_scale=1.5)
    tokens = sampler(model, torch.tensor([3]), SampleRNG(0, 1))
    assert tokens.shape == (1, t, h, w)
    passes = t + h + w - 2 if order == "diagonal" else t * (h + w - 1)
    assert len(calls) == sampler.stats["forward_passes"] == passes


def test_frame_order_draws_frames_in_turn_and_every_head_input_before_its_target():
    shape, offsets = (3, 2, 4), NARVideo.neighbor_offsets
    step = decode_steps(shape, "frame")
    cells = list(itertools.product(*[range(n) for n in shape]))
    for (t, h, w), s in zip(cells, step.tolist()):
        assert s == t * (2 + 4 - 1) + h + w  # frame t after frame t - 1, image diagonals inside
    src, weight = neighbor_sources(shape, offsets, "frame")
    seq_step = torch.cat([torch.tensor([-1]), step])  # sequence index 0 = the condition
    for r, (t, h, w) in enumerate(cells):
        used = weight[r] > 0
        assert (seq_step[src[r][used]] < step[r]).all()  # every input is drawn before its target
        # Inside a frame the right / down heads of the previous diagonal (image NAR); a frame's
        # first token from the time head of the token a frame back; the origin from the condition.
        expected = [w > 0, h > 0, False] if h + w > 0 else [t == 0, t == 0, True]
        assert used.tolist() == expected, (t, h, w)
    diagonal = neighbor_sources(shape, offsets)[1]  # the paper's order: every head that reaches a cell
    assert torch.equal(diagonal > 0, torch.cat([torch.ones(1, 3, dtype=torch.bool),
                                                 (grid_coords(shape)[1:, None, :] - torch.tensor(offsets) >= 0).all(-1)]))
    mask = proximity_mask(shape, 1, "frame")
    assert torch.equal(mask[1:, 1:], step[None, :] <= step[:, None])
    with pytest.raises(ValueError, match="decode order"):
        create_model("nar-tiny", decode_order="frame")  # an image grid has no frames
    with pytest.raises(ValueError, match="decode order"):
        create_model("nar-video-tiny", decode_order="zigzag")


@pytest.mark.parametrize("shape", [(3, 3), (4, 4), (2, 5), (2, 3, 4)])
def test_proximity_mask_exhaustively(shape):
    mask = proximity_mask(shape, cls_token_num=1)
    cells = list(itertools.product(*[range(n) for n in shape]))  # raster order
    assert mask.shape == (1 + len(cells), 1 + len(cells))
    assert mask[0].tolist() == [True] + [False] * len(cells)  # condition sees no image token
    for i, a in enumerate(cells):
        assert mask[1 + i, 0]  # every image token sees the condition
        for j, b in enumerate(cells):
            # earlier diagonals and its own diagonal (both directions), never a later one
            assert bool(mask[1 + i, 1 + j]) == (sum(b) <= sum(a)), (a, b)


def test_proximity_mask_with_several_condition_tokens_is_causal_among_them():
    mask = proximity_mask((2, 2), cls_token_num=3)
    assert mask[:3, :3].tolist() == torch.ones(3, 3).tril().bool().tolist()
    assert not mask[:3, 3:].any() and mask[3:, :3].all()


@pytest.mark.parametrize("name", ["nar-tiny", "nar-video-tiny"])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_cached_diagonal_decoding_matches_full_masked_forward(name, cfg_scale):
    model = randomised(name)
    n = model.config.block_size
    tokens = torch.randint(0, model.vocab_size, (3, n))
    labels = torch.tensor([0, 4, 7])
    null = torch.full_like(labels, model.null_class)
    with torch.no_grad():
        cond, uncond = model(tokens, labels), model(tokens, null)  # one masked forward each
    expected = uncond + cfg_scale * (cond - uncond)
    got = NeighborSampler(cfg_scale=cfg_scale).teacher_forced_logits(model, tokens, labels)
    assert (got - expected).abs().max() <= 1e-5


def test_training_logits_mix_heads_as_the_official_code():
    model = randomised("nar-tiny")
    g, v = model.config.grid_size, model.vocab_size
    tokens, labels = torch.randint(0, v, (2, g * g)), torch.tensor([1, 2])
    with torch.no_grad():
        h, rope = model.trunk.embed_block(tokens, labels, torch.arange(1 + g * g))
        per_head = model.head_logits(model.neighbor_features(h, rope, model.attention_mask()))
        mixed = model(tokens, labels).view(2, g, g, v)
    right, below = per_head[:, :, 0], per_head[:, :, 1]  # [B, 1 + N, V]
    r = right[:, 1:].view(2, g, g, v).roll(1, dims=2)  # R of (h, w-1) lands on (h, w)
    b = below[:, 1:].view(2, g, g, v).roll(1, dims=1)  # B of (h-1, w) lands on (h, w)
    torch.testing.assert_close(mixed[:, 0, 0], (right[:, 0] + below[:, 0]) / 2)
    torch.testing.assert_close(mixed[:, 0, 1:], r[:, 0, 1:])
    torch.testing.assert_close(mixed[:, 1:, 0], b[:, 1:, 0])
    torch.testing.assert_close(mixed[:, 1:, 1:], (r[:, 1:, 1:] + b[:, 1:, 1:]) / 2)


def test_video_training_loss_is_the_official_larp_ar_formula():
    """NAR-videos ``LARP_AR.forward`` in training: each head's logits on the [T, H, W] grid,
    rolled one cell along its axis (R: w, D: h, B: t), the condition token's three heads averaged
    for the origin, every other cell the mean of the heads that reach it; one cross-entropy
    against the ids themselves (no further shift)."""
    model = randomised("nar-video-tiny")
    (t, h, w), v = model.token_shape, model.vocab_size
    tokens, labels = torch.randint(0, v, (3, t * h * w)), torch.tensor([1, 2, 9])
    with torch.no_grad():
        emb, rope = model.trunk.embed_block(tokens, labels, torch.arange(1 + t * h * w))
        per_head = model.head_logits(model.neighbor_features(emb, rope, model.attention_mask()))
        loss = model.loss(tokens, labels)
    right, down, back = (per_head[:, :, k] for k in range(3))  # [B, 1 + N, V] each; heads R, D, B
    cond = (right[:, 0] + back[:, 0] + down[:, 0]) / 3
    r, d, b = (x[:, 1:].reshape(3, t, h, w, v).roll(1, dims=dim) for x, dim in ((right, 3), (down, 2), (back, 1)))
    mixed = torch.zeros_like(r)  # the official eight cases, line by line
    mixed[:, 0, 0, 0] = cond
    mixed[:, 0, 0, 1:] = r[:, 0, 0, 1:]
    mixed[:, 1:, 0, 0] = b[:, 1:, 0, 0]
    mixed[:, 0, 1:, 0] = d[:, 0, 1:, 0]
    mixed[:, 1:, 0, 1:] = (r[:, 1:, 0, 1:] + b[:, 1:, 0, 1:]) / 2
    mixed[:, 1:, 1:, 0] = (b[:, 1:, 1:, 0] + d[:, 1:, 1:, 0]) / 2
    mixed[:, 0, 1:, 1:] = (d[:, 0, 1:, 1:] + r[:, 0, 1:, 1:]) / 2
    mixed[:, 1:, 1:, 1:] = (r[:, 1:, 1:, 1:] + b[:, 1:, 1:, 1:] + d[:, 1:, 1:, 1:]) / 3
    official = F.cross_entropy(mixed.reshape(-1, v), tokens.reshape(-1))
    assert abs(loss.item() - official.item()) <= 1e-6


@pytest.mark.parametrize("name, order", [("nar-tiny", "diagonal"), ("nar-video-tiny", "diagonal"),
                                         ("nar-video-tiny", "frame")])
def test_same_seed_same_tokens_alone_or_in_a_batch(name, order):
    model = randomised(name, decode_order=order)
    sampler = NeighborSampler(cfg_scale=2.0, cfg_schedule="linear", temperature=1.3, top_p=0.95)
    labels = torch.tensor([3, 1, 4, 1])
    batch = sampler(model, labels, SampleRNG(7, [10, 11, 12, 13]))
    alone = sampler(model, labels[2:3], SampleRNG(7, [12]))
    assert torch.equal(batch[2:3], alone)
    assert torch.equal(batch, sampler(model, labels, SampleRNG(7, [10, 11, 12, 13])))
    assert not torch.equal(batch, sampler(model, labels, SampleRNG(8, [10, 11, 12, 13])))


def test_cfg_scale_one_equals_no_cfg():
    model = randomised("nar-tiny")
    labels = torch.tensor([2, 5])
    plain = NeighborSampler(top_k=8)(model, labels, SampleRNG(1, 2))
    assert torch.equal(plain, NeighborSampler(cfg_scale=1.0, top_k=8)(model, labels, SampleRNG(1, 2)))
    # The doubled [cond; uncond] batch with guidance 1 everywhere changes nothing either.
    doubled = NeighborSampler(cfg_scale=4.0, top_k=8)
    doubled.logits.guidance = lambda done, total: 1.0
    assert torch.equal(plain, doubled(model, labels, SampleRNG(1, 2)))


def test_bad_labels_are_rejected():
    model = create_model("nar-tiny")
    with pytest.raises(ValueError, match="class labels"):
        NeighborSampler()(model, torch.tensor([10]), SampleRNG(0, 1))


# --------------------------------------------------------------------------------- weights
def llama_block_keys(i: int, dim: int, hidden: int) -> dict:
    """One official LlamaGen / LARP_AR transformer block: key -> shape."""
    return {f"layers.{i}.attention.wqkv.weight": (3 * dim, dim),
            f"layers.{i}.attention.wo.weight": (dim, dim),
            f"layers.{i}.feed_forward.w1.weight": (hidden, dim),
            f"layers.{i}.feed_forward.w2.weight": (dim, hidden),
            f"layers.{i}.feed_forward.w3.weight": (hidden, dim),
            f"layers.{i}.attention_norm.weight": (dim,),
            f"layers.{i}.ffn_norm.weight": (dim,)}


def _official_nar_tiny_keys():
    """Hand-written from the official NAR gpt.py: LlamaGen keys + layers.{n_layer} + medusa_*."""
    dim, hidden, vocab = 64, 192, 64  # SwiGLU hidden: int(2 * 4 * 64 / 3) = 170 -> multiple of 32
    keys = {"cls_embedding.embedding_table.weight": (11, dim), "tok_embeddings.weight": (vocab, dim),
            "norm.weight": (dim,), "output.weight": (vocab, dim),
            "medusa_norm.weight": (dim,), "medusa_output.weight": (vocab, dim)}
    for i in range(3):  # n_layer = 2 trunk blocks + the extra one
        keys.update(llama_block_keys(i, dim, hidden))
    return keys


def test_official_key_tree_converts_and_loads_strictly(tmp_path):
    state = {k: torch.randn(shape) for k, shape in _official_nar_tiny_keys().items()}
    path = tmp_path / "last_version.pt"
    torch.save({"model": state}, path)
    model = create_model("nar-tiny", pretrained=str(path))
    assert isinstance(model, NAR)
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_llamagen_checkpoint_into_nar_fails_naming_the_missing_keys(tmp_path):
    llamagen = create_model("llamagen-tiny")  # same trunk as nar-tiny
    path = tmp_path / "c2i.pt"
    torch.save({"model": llamagen.state_dict()}, path)
    with pytest.raises(WeightsError, match=r"medusa_norm\.weight.*medusa_output\.weight.*layers\.2\."):
        create_model("nar-tiny", pretrained=str(path))
    with pytest.raises(WeightsError) as err:  # strict loading without the converter names them too
        load_state_dict_strict(create_model("nar-tiny"), llamagen.state_dict())
    for key in ("layers.2.attention.wqkv.weight", "medusa_norm.weight", "medusa_output.weight"):
        assert key in str(err.value)


def test_official_video_key_tree_loads_strictly():
    """Hand-written from the official larp_ar.py LARP_AR (attn_num_down = attn_num_back = 1)."""
    dim, hidden, vocab, n = 64, 192, 64, 2 * 3 * 4
    keys = {"cls_embedding.embedding_table.weight": (11, dim), "tok_embeddings.weight": (vocab, dim),
            "abs_pe": (1, 1 + n, dim)}
    for tag in "RDB":
        keys.update({f"norm_{tag}.weight": (dim,), f"output_{tag}.weight": (vocab, dim)})
    for i in range(4):
        keys.update(llama_block_keys(i, dim, hidden))
    model = create_model("nar-video-tiny")
    assert isinstance(model, NARVideo)
    load_state_dict_strict(model, {k: torch.randn(s) for k, s in keys.items()})


def test_save_and_load_pretrained_roundtrip(tmp_path):
    model = randomised("nar-video-tiny")
    model.save_pretrained(tmp_path)
    again = NARVideo.from_pretrained(tmp_path)
    assert again.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


# --------------------------------------------------------------------------------- learning
def _mnist_token_grids(grid: int = 8, levels: int = 16):
    """One digit per class 0..7, mean-pooled to ``grid x grid`` and quantised to ``levels`` ids."""
    from vargen.data import MNISTDigits

    data = MNISTDigits("train", image_size=32)
    picks = [int(torch.nonzero(data.labels == c)[0]) for c in range(8)]
    images = data.images[picks, :1]  # [8, 1, 32, 32] in [-1, 1]
    pooled = F.adaptive_avg_pool2d(images, grid)[:, 0]  # [8, grid, grid]
    tokens = ((pooled + 1) / 2 * levels).floor().clamp(0, levels - 1).long()
    return tokens, torch.arange(8)


def test_tiny_nar_memorises_mnist_token_grids_and_regenerates_them():
    torch.manual_seed(0)
    tokens, labels = _mnist_token_grids()
    model = create_model("nar-tiny", grid_size=8, vocab_size=16, class_dropout_prob=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    first = None
    for _ in range(300):
        loss = model.loss(tokens, labels)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first, (first, loss.item())
    model.eval()
    sampler = NeighborSampler(top_k=1)
    generated = sampler(model, labels, SampleRNG(0, 8))
    assert sampler.stats["forward_passes"] == 15
    assert torch.equal(generated, tokens)
