"""LlamaGen raster generator, shared layers and the raster sampler (tiny configs)."""
import pytest
import torch

import vargen
from vargen.hub import WeightsError
from vargen.nn import rope_2d
from vargen.samplers import LogitsProcessor, RasterSampler

from helpers import mnist_token_grids


def tiny(**overrides):
    model = vargen.create_model("llamagen-tiny", **overrides).eval()
    # Official init zeroes the output head; give it weights so logits are informative.
    torch.nn.init.normal_(model.output.weight, std=0.3)
    return model


def official_llamagen_keys(n_layer: int):
    """The key tree of FoundationVision/LlamaGen autoregressive/models/gpt.py (c2i)."""
    keys = {"cls_embedding.embedding_table.weight", "tok_embeddings.weight", "norm.weight", "output.weight"}
    for i in range(n_layer):
        keys |= {f"layers.{i}.attention.wqkv.weight", f"layers.{i}.attention.wo.weight",
                 f"layers.{i}.feed_forward.w1.weight", f"layers.{i}.feed_forward.w2.weight",
                 f"layers.{i}.feed_forward.w3.weight", f"layers.{i}.attention_norm.weight",
                 f"layers.{i}.ffn_norm.weight"}
    return keys


def test_key_tree_matches_official():
    model = tiny()
    assert set(model.state_dict()) == official_llamagen_keys(model.config.n_layer)


def test_preset_sizes_match_official_param_counts():
    # Built on the meta device: parameter counts without allocating 3B floats.
    with torch.device("meta"):
        counts = {n: vargen.create_model(n).num_params() for n in ("llamagen-b", "llamagen-l")}
    assert abs(counts["llamagen-b"] / 1e6 - 111) < 1.5
    assert abs(counts["llamagen-l"] / 1e6 - 343) < 2


def test_rope_2d_is_llamagen_layout():
    head_dim, grid = 16, 3
    table = rope_2d(grid, head_dim, cls_token_num=1)
    assert table.shape == (1 + grid * grid, head_dim // 2, 2)
    assert table[0].abs().sum() == 0  # condition token: zero rotation (official quirk)
    # Pair p < head_dim/4 rotates with the row, the rest with the column.
    freqs = 1.0 / (10000 ** (torch.arange(0, head_dim // 2, 2).float() / (head_dim // 2)))
    r, c = 2, 1
    angles = torch.cat([r * freqs, c * freqs])
    expected = torch.stack([angles.cos(), angles.sin()], -1)
    torch.testing.assert_close(table[1 + r * grid + c], expected)


def test_cached_decoding_matches_full_forward():
    model = tiny()
    tokens = torch.randint(0, 64, (3, 16))
    labels = torch.tensor([0, 5, 9])
    with torch.no_grad():
        full = model(tokens, labels)  # [3, 16, V]
        model.setup_cache(3)
        steps = [model.prefill(labels)]
        for i in range(15):
            steps.append(model.decode(tokens[:, i:i + 1], torch.tensor([i]))[:, -1])
        model.clear_cache()
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=0)


def test_block_input_equals_token_by_token():
    model = tiny()
    tokens = torch.randint(0, 64, (2, 16))
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        model.setup_cache(2)
        model.prefill(labels)
        block = model.decode(tokens[:, :10], torch.arange(10))
        model.clear_cache()
        model.setup_cache(2)
        model.prefill(labels)
        single = torch.cat([model.decode(tokens[:, i:i + 1], torch.tensor([i])) for i in range(10)], 1)
        # Truncation: roll back 4 entries and re-feed them; logits must not change.
        model.truncate_cache(model.cache_length - 4)
        refed = model.decode(tokens[:, 6:10], torch.arange(6, 10))
        model.clear_cache()
    torch.testing.assert_close(block, single, atol=1e-5, rtol=0)
    torch.testing.assert_close(refed, single[:, 6:10], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_same_seed_same_tokens_alone_or_in_batch(cfg_scale):
    model = tiny()
    sampler = RasterSampler(cfg_scale=cfg_scale, top_k=20, top_p=0.9)
    labels = torch.tensor([3, 1, 4, 1])
    batch = sampler(model, labels, vargen.SampleRNG(7, 4))
    for i in range(4):
        alone = sampler(model, labels[i:i + 1], vargen.SampleRNG(7, [i]))
        assert torch.equal(alone[0], batch[i])
    assert sampler.stats["forward_passes"] == 16
    other_seed = sampler(model, labels, vargen.SampleRNG(8, 4))
    assert not torch.equal(other_seed, batch)


def test_logits_processor_filters_and_guides():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert (LogitsProcessor(top_k=2).probs(logits)[0, 2:] == 0).all()
    p = LogitsProcessor(top_p=0.7).probs(logits)[0]  # keeps 0.5 and the 0.3 that crosses 0.7
    assert (p[:2] > 0).all() and (p[2:] == 0).all()
    cond, uncond = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    proc = LogitsProcessor(cfg_scale=3.0)
    torch.testing.assert_close(proc.combine(torch.cat([cond, uncond])), torch.tensor([[4.0, -2.0]]))
    linear = LogitsProcessor(cfg_scale=3.0, cfg_schedule="linear")
    assert linear.guidance(0, 5) == 1.0 and linear.guidance(4, 5) == 3.0
    # LlamaGen's generate guides the prefill's token and decode steps i <= cfg_interval (token i+1).
    interval = LogitsProcessor(cfg_scale=3.0, cfg_interval=2)
    assert [interval.guidance(t, 8) for t in range(6)] == [3.0, 3.0, 3.0, 3.0, 1.0, 1.0]
    assert LogitsProcessor(cfg_scale=3.0, cfg_schedule="linear").guidance(0, 1) == 3.0  # one AR step

    with pytest.raises(ValueError, match="top_p"):
        LogitsProcessor(top_p=0.0)


@pytest.mark.parametrize("tied", [False, True])
def test_top_k_then_top_p_sorts_only_the_candidates(tied):
    """The top-k + top-p shortcut equals top-k masking followed by top-p over the whole row:
    exactly on continuous logits; with ties (bf16-rounded, as a bf16 generator's), the same
    kept values (ties at the k-th value stay in; which of two equal logits crosses top-p is the
    sort's choice either way)."""
    torch.manual_seed(0)
    logits = torch.randn(3, 17, 512) * 3
    cases = [(logits, k, p) for k, p in ((40, 0.9), (300, 0.5), (512, 0.99), (1, 0.3))]
    if tied:
        logits = logits.bfloat16().float().round(decimals=1)
        # seven distinct values: over a hundred ties at the 100th, more than the room past k
        coarse = (logits / 3).round()
        assert (coarse >= coarse.topk(100, -1).values[..., -1:]).sum(-1).max() > 100 + 64
        cases = [(logits, k, p) for _, k, p in cases] + [(coarse, 100, 0.9)]
    ties_at_k = []
    for logits, k, p in cases:
        shortcut = LogitsProcessor(top_k=k, top_p=p).filter(logits)
        reference = LogitsProcessor(top_p=p).filter(LogitsProcessor(top_k=k).filter(logits))
        if tied:  # the same kept values
            kept = lambda x: x.sort(-1, descending=True).values  # noqa: E731
            assert torch.equal(kept(shortcut), kept(reference))
        else:
            assert torch.equal(shortcut, reference)
            assert ((shortcut > float("-inf")).sum(-1) <= k).all()
        ties_at_k.append(bool(((logits >= logits.topk(k, -1).values[..., -1:]).sum(-1) > k).any()))
    assert any(ties_at_k) == tied  # the tied case did widen the candidate list
    empty = torch.zeros(2, 0, 512)  # no positions (an empty window): nothing to filter
    assert LogitsProcessor(top_k=40, top_p=0.9).filter(empty).shape == empty.shape


def test_class_label_out_of_range_is_a_clear_error():
    model = tiny()
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 9\]"):
        RasterSampler()(model, torch.tensor([10]), vargen.SampleRNG(0, 1))
    with pytest.raises(ValueError, match="token grid"):
        model.loss(torch.zeros(1, 5, 5, dtype=torch.long), torch.tensor([0]))


def test_official_checkpoint_converts_and_loads_strictly(tmp_path):
    source = tiny()
    state = {k: v.clone() for k, v in source.state_dict().items()}
    zeros = {k: torch.zeros_like(v) for k, v in state.items()}
    # LlamaGen's sample scripts take "model" even when the checkpoint also holds "ema".
    for layout, obj in {"raw": state, "model": {"model": state, "ema": zeros, "args": None},
                        "module": {"module": state}, "state_dict": {"state_dict": state}}.items():
        path = tmp_path / f"{layout}.pt"
        torch.save(obj, path)
        loaded = vargen.create_model("llamagen-tiny", pretrained=str(path))
        for k, v in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k
    del state["layers.1.feed_forward.w3.weight"]
    torch.save({"model": state}, tmp_path / "broken.pt")
    with pytest.raises(WeightsError, match=r"layers\.1\.feed_forward\.w3\.weight"):
        vargen.create_model("llamagen-tiny", pretrained=str(tmp_path / "broken.pt"))


def test_tiny_raster_model_fits_mnist_tokens():
    tokens, labels = mnist_token_grids(n=8, grid=4, vocab=64)
    model = vargen.create_model("llamagen-tiny", class_dropout_prob=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    first = None
    for step in range(150):
        loss = model.loss(tokens, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.1 * first
    # A memorised model reproduces its training grids with greedy sampling.
    out = RasterSampler(top_k=1)(model.eval(), labels, vargen.SampleRNG(0, len(labels)))
    assert (out == tokens).float().mean() > 0.95
