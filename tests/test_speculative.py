"""SJD / GSD: SJD is lossless w.r.t. raster sampling, GSD with a group of one is SJD, forward-pass
counts never exceed raster decoding's, and batched samples equal the samples made one at a time."""
from collections import Counter

import pytest
import torch
from scipy.stats import chi2_contingency

from vargen.models.llamagen import LlamaGen, LlamaGenConfig
from vargen.models.rar import RAR, RARConfig
from vargen.samplers import GSDSampler, RasterSampler, SJDSampler, create_sampler
from vargen.seeding import SampleRNG


def peaked_llamagen(vocab: int, grid: int, seed: int = 0) -> LlamaGen:
    """Random LlamaGen whose next-token distributions are far from uniform and context dependent."""
    torch.manual_seed(seed)
    model = LlamaGen(LlamaGenConfig(dim=32, n_layer=1, n_head=2, multiple_of=16, vocab_size=vocab,
                                    num_classes=3, grid_size=grid, token_dropout_p=0.0,
                                    resid_dropout_p=0.0, ffn_dropout_p=0.0)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    torch.nn.init.normal_(model.output.weight, std=0.7)
    return model


def peaked_rar(vocab: int, grid: int, seed: int = 0) -> RAR:
    """Random RAR (adaLN-Zero blocks, target-aware positions) with peaked, context-dependent
    next-token distributions: the raster capability SJD drives, on a second family."""
    torch.manual_seed(seed)
    model = RAR(RARConfig(dim=32, n_layer=1, n_head=2, intermediate_size=64, vocab_size=vocab, grid_size=grid,
                          num_classes=3, dropout=0.0, attn_dropout=0.0, position_padding=2,
                          timestep_padding=2)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    torch.nn.init.normal_(model.lm_head.weight, std=0.15)  # adaLN makes features large
    return model


def homogeneity_pvalue(a: torch.Tensor, b: torch.Tensor) -> float:
    """Chi-square two-sample test on whole token sequences (rare sequences pooled into one bin)."""
    ca, cb = Counter(map(tuple, a.flatten(1).tolist())), Counter(map(tuple, b.flatten(1).tolist()))
    table, rare = [], [0, 0]
    for seq in set(ca) | set(cb):
        row = [ca.get(seq, 0), cb.get(seq, 0)]
        if sum(row) >= 10:
            table.append(row)
        else:
            rare = [rare[0] + row[0], rare[1] + row[1]]
    table.append(rare)
    return float(chi2_contingency(table)[1])


class AcceptAlways(SJDSampler):
    def acceptance(self, p, q, drafts):
        return torch.ones(drafts.shape)


class ResampleFromTarget(SJDSampler):
    @staticmethod
    def residual(p, q):
        return p


SAMPLES = 4000
OPTIONS = dict(cfg_scale=1.5, top_k=3)


@pytest.fixture(scope="module", params=[peaked_llamagen, peaked_rar], ids=["llamagen", "rar"])
def lossless_setup(request):
    model = request.param(vocab=4, grid=2)
    labels = torch.ones(SAMPLES, dtype=torch.long)
    raster = RasterSampler(**OPTIONS)(model, labels, SampleRNG(1, SAMPLES))
    return model, labels, raster


@pytest.mark.parametrize("init", ["random", "copy-previous"])
def test_sjd_is_lossless(lossless_setup, init):
    model, labels, raster = lossless_setup
    sjd = SJDSampler(window=4, init=init, **OPTIONS)
    tokens = sjd(model, labels, SampleRNG(2, SAMPLES))
    assert sum(sjd.stats["per_sample_accepted_drafts"]) > SAMPLES // 2  # drafts really were used
    assert homogeneity_pvalue(tokens, raster) > 1e-3


@pytest.mark.parametrize("broken", [AcceptAlways, ResampleFromTarget])
def test_broken_acceptance_rules_are_detected(lossless_setup, broken):
    """The same statistic rejects SJD with a wrong rule: it has the power to catch a lossy loop."""
    model, labels, raster = lossless_setup
    tokens = broken(window=4, init="copy-previous", **OPTIONS)(model, labels, SampleRNG(2, SAMPLES))
    assert homogeneity_pvalue(tokens, raster) < 1e-6


@pytest.mark.parametrize("init", ["random", "copy-left"])
def test_gsd_with_group_of_one_is_sjd(init):
    model = peaked_llamagen(vocab=16, grid=4)
    labels = torch.tensor([0, 1, 2, 0])
    sjd = SJDSampler(window=5, init=init, cfg_scale=1.5)
    gsd = GSDSampler(group_size=1, window=5, init=init, cfg_scale=1.5)
    assert torch.equal(sjd(model, labels, SampleRNG(7, 4)), gsd(model, labels, SampleRNG(7, 4)))
    assert sjd.stats == gsd.stats


@pytest.mark.parametrize("name,opts", [("sjd", {}), ("sjd", {"init": "copy-left", "tail": 3}),
                                       ("gsd", {"group_size": 50, "dist_threshold": 100.0})])
def test_forward_passes_never_exceed_raster(name, opts):
    model = peaked_llamagen(vocab=16, grid=4)
    n = 16
    sampler = create_sampler(name, window=6, **opts)
    tokens = sampler(model, torch.arange(3), SampleRNG(0, 3))
    stats = sampler.stats
    assert tokens.shape == (3, 4, 4) and int(tokens.max()) < 16
    assert stats["forward_passes"] == max(stats["per_sample_forward_passes"]) <= n
    for forwards, drafts in zip(stats["per_sample_forward_passes"], stats["per_sample_accepted_drafts"]):
        assert forwards + drafts == n  # every forward commits one token beyond its accepted drafts
    assert stats["mean_accepted_length"] >= 1.0


def test_window_of_one_is_plain_decoding_cost():
    model = peaked_llamagen(vocab=16, grid=4)
    sampler = SJDSampler(window=1)
    sampler(model, torch.arange(2), SampleRNG(0, 2))
    assert sampler.stats["forward_passes"] == 16


@pytest.mark.parametrize("name,opts", [("sjd", {}), ("sjd", {"init": "copy-left"}),
                                       ("gsd", {"dist_threshold": 100.0})])
def test_batched_equals_one_at_a_time_with_cfg(name, opts):
    model = peaked_llamagen(vocab=16, grid=4)
    labels = torch.tensor([0, 1, 2, 1, 0])
    sampler = create_sampler(name, window=6, cfg_scale=2.0, top_k=12, **opts)
    batched = sampler(model, labels, SampleRNG(3, range(5)))
    per_sample = sampler.stats["per_sample_forward_passes"]
    assert len(set(per_sample)) > 1  # samples advanced by different amounts (ragged caches)
    alone = torch.cat([sampler(model, labels[i:i + 1], SampleRNG(3, [i])) for i in range(5)])
    assert torch.equal(batched, alone)


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="window"):
        SJDSampler(window=0)
    with pytest.raises(ValueError, match="init"):
        SJDSampler(init="zeros")
    with pytest.raises(ValueError, match="group_size"):
        GSDSampler(group_size=0)
    with pytest.raises(ValueError, match="codebook"):
        GSDSampler(codebook=torch.zeros(4))


def test_ragged_kv_cache_matches_separate_rows():
    """Rows truncated to different lengths, then extended by one block, attend like separate caches."""
    from vargen.nn.attention import Attention
    torch.manual_seed(0)
    attn = Attention(16, 2).eval()
    x, block = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    attn.setup_cache(2, 10, "cpu", torch.float32)
    attn(x)
    attn.cache.truncate(torch.tensor([2, 4]))
    ragged = attn(block)
    for row, keep in enumerate([2, 4]):
        attn.setup_cache(1, 10, "cpu", torch.float32)
        attn(x[row:row + 1, :keep])
        assert torch.allclose(attn(block[row:row + 1]), ragged[row:row + 1], atol=1e-6)
    with pytest.raises(ValueError, match="truncate"):
        attn.cache.truncate(torch.tensor([9]))


@pytest.mark.parametrize("group_size", [1, 2, 14, 50])
@pytest.mark.parametrize("vocab", [5, 64, 4096])
def test_gsd_group_is_the_stable_sorted_neighbourhood_without_sorting(group_size, vocab):
    """GSD's group (found by nearest keys, no sort over V) equals the slice of ranks
    ``[k - G//2, k - G//2 + G)`` of a stable ascending argsort, ties and vocabularies smaller than
    G included, in the same order (so the acceptance sums add in the same order)."""
    torch.manual_seed(vocab + group_size)
    p = torch.softmax(torch.randn(3, 7, vocab), -1)
    p[0, 0, : vocab // 2] = p[0, 0, 0]                 # a run of tied probabilities
    p[1, 1] = 0.0
    p[1, 1, 3] = 1.0                                    # all but one tied at zero
    drafts = torch.randint(0, vocab, (3, 7))
    order = p.argsort(dim=-1, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(vocab).expand_as(order))
    ranks = rank.gather(-1, drafts[..., None]) - group_size // 2 + torch.arange(group_size)
    want_inside = (ranks >= 0) & (ranks < vocab)
    want = torch.where(want_inside, order.gather(-1, ranks.clamp(0, vocab - 1)), -1)
    group, inside = create_sampler("gsd", group_size=group_size).group(p, drafts)
    assert torch.equal(inside, want_inside)
    assert torch.equal(torch.where(inside, group, -1), want)
