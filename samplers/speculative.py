"""Speculative samplers for any raster AR model: SJD (lossless) and GSD (grouped, lossy).

SJD: "Accelerating Auto-regressive Text-to-Image Generation with Training-free Speculative Jacobi
Decoding", Teng et al., ICLR 2025, arXiv 2410.01699; official code
https://github.com/tyshiwo1/Accelerating-T2I-AR-with-SJD (``scheduler/jacobi_iteration_*.py``).
GSD: "Grouped Speculative Decoding for Autoregressive Image Generation", So et al., ICCV 2025,
arXiv 2508.07747; official code https://github.com/junhyukso/GSD (built on the SJD code).

One loop serves both; they differ only in ``acceptance``. Per sample, each step feeds a window of
``window`` tokens ``[last committed token, d_1 .. d_{window-1}]`` (drafts, each with its draft
distribution q) in ONE forward pass over the KV cache, which yields target distributions p at
every window position. Drafts are verified in order, accepted with probability
``min(1, p(d) / q(d))``; at the first rejection that position is resampled from
``norm(max(0, p - q))`` and the rest of the window is dropped from the cache; if every draft is
accepted the last position's sample is a bonus token. The target samples made after the rejection
(on a now-invalid prefix) are carried to the next step as drafts with q = their p, and the window
is topped up with fresh drafts: a uniformly random token with one-hot q (official default) or a
copy of the token to the left (official LlamaGen default ``repeat_horizon``). This is exact
speculative sampling, so SJD's output distribution equals plain raster sampling under the same
``LogitsProcessor``.

Model capability: :class:`SpeculativeDecoding` (``decode(tokens [B, T], positions [B, T])``
causal inside the block with per-row positions, ``truncate_cache(lengths [B])`` per row); GSD
also needs :class:`TokenEmbedding` unless a codebook is passed.

Batches: every sample advances by its own accepted length (the official code commits the minimum
over the batch); the KV cache keeps per-row lengths. Every random number of sample i comes from
``rng``'s generator i, a fixed block per step the sample takes part in, so a sample is the same
alone or in a batch.

Deviations from the official code: the residual is normalised directly instead of re-applying the
logits processors to ``log(max(0, p - q))`` (re-applying top-k/top-p to the residual would break
exactness); the Jacobi range's upper end ``r`` exists there because of static cache sizes and
Lumina's end-of-image tokens, here the window is clipped to the remaining tokens instead
(``tail`` > 0 restores one-token steps at the end, e.g. ``tail=18`` as the official LlamaGen run).
"""
from __future__ import annotations

import math

from typing import Optional, Tuple

import torch

from vargen import checks
from vargen.seeding import SampleRNG, sample_from_probs

from .base import DiscreteSampler
from .capabilities import SpeculativeDecoding, TokenEmbedding, require

DRAFT_INITS = ("random", "copy-left", "copy-previous")


class SJDSampler(DiscreteSampler):
    """Speculative Jacobi decoding.

    Args:
        window: tokens fed per forward pass, the last committed one plus ``window - 1`` drafts
            (official ``max_num_new_tokens`` = 16).
        init: fresh drafts; ``"random"`` (uniform token, one-hot q; official Lumina/Emu3/GSD),
            ``"copy-left"`` (the token to the left in the same row, random in column 0; official
            LlamaGen ``repeat_horizon``), ``"copy-previous"`` (the previous token in raster order).
        warmup: tokens generated one per step before Jacobi steps start (official ``l`` = 1: the
            prefill's token).
        tail: the last ``tail`` tokens are generated one per step (0: windows are clipped instead).
        cfg_scale .. top_p: the ``LogitsProcessor`` defining the target distribution.
    """

    name = "sjd"
    capability = SpeculativeDecoding

    def __init__(self, window: int = 16, init: str = "random", warmup: int = 1, tail: int = 0,
                 **logits_options):
        super().__init__(**logits_options)
        if init not in DRAFT_INITS:
            raise ValueError(f"init must be one of {DRAFT_INITS}, got {init!r}")
        self.window = checks.number("window (tokens per pass)", window, minimum=1, integer=True)
        self.warmup = checks.number("warmup (>= 1: the prefill's token)", warmup, minimum=1, integer=True)
        self.tail = checks.number("tail", tail, minimum=0, integer=True)
        self.init = init

    # --------------------------------------------------------------------- the rules (overridable)
    def prepare(self, model) -> None:
        """Per-call setup of the acceptance rule (GSD reads the embedding table here)."""

    def acceptance(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
        """Acceptance probability ``[B, S]`` of ``drafts [B, S]`` under target p and draft q ``[B, S, V]``."""
        d = drafts[..., None]
        return (p.gather(-1, d) / q.gather(-1, d)).squeeze(-1).clamp(max=1.0)

    @staticmethod
    def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Distribution to resample a rejected position from: ``norm(max(0, p - q))``."""
        r = (p - q).clamp(min=0)
        mass = r.sum(-1, keepdim=True)
        return torch.where(mass > 1e-12, r / mass.clamp(min=1e-30), p)  # p == q up to rounding

    # --------------------------------------------------------------------- the loop
    def _window_lengths(self, n: torch.Tensor, total: int) -> torch.Tensor:
        """Tokens to feed per row at progress ``n [B]``: 1 outside the Jacobi range, 0 when done."""
        jacobi = (n >= self.warmup) & (n < total - self.tail)
        size = torch.where(jacobi, (total - self.tail - n).clamp(max=self.window), torch.ones_like(n))
        return torch.where(n < total, size, torch.zeros_like(n))

    def _top_up(self, drafts, q, kept, n, last, u, width: int, vocab: int) -> None:
        """Fill draft slots ``>= kept`` (in place) with fresh drafts and one-hot q, all slots at once."""
        fresh = (u * vocab).long().clamp(max=vocab - 1)  # [B, S] uniform random tokens
        slot = torch.arange(drafts.shape[1], device=drafts.device)
        new = slot >= kept[:, None]  # [B, S]
        token = fresh
        if self.init != "random":
            # a copy chain starts from the last carried draft (or the last committed token) ...
            source = torch.where(kept > 0, drafts.gather(1, (kept - 1).clamp(min=0)[:, None])[:, 0], last)
            token = source[:, None].expand_as(fresh)
            if self.init == "copy-left":  # ... and restarts with a fresh token at every row start
                column0 = new & ((n[:, None] + slot) % width == 0)
                restart = torch.where(column0, slot, -1).cummax(1).values  # latest row start so far
                token = torch.where(restart >= 0, fresh.gather(1, restart.clamp(min=0)), token)
        drafts.copy_(torch.where(new, token, drafts))
        q.copy_(torch.where(new[..., None], torch.nn.functional.one_hot(token, vocab).to(q.dtype), q))

    def sample(self, model: SpeculativeDecoding, labels: torch.Tensor, rng: SampleRNG) -> torch.Tensor:
        device = labels.device
        w = model.token_grid[-1]  # raster rows of any grid, (H, W) or (T, H, W)
        total, bsz, slots = math.prod(model.token_grid), labels.shape[0], self.window - 1
        cond = self.logits.labels(labels, model.null_class)
        model.setup_cache(cond.shape[0], max_len=model.max_cache_len + self.window)  # room for padded rows
        self.prepare(model)
        tokens = torch.zeros(bsz, total, dtype=torch.long, device=device)
        rows = torch.arange(bsz, device=device)
        forwards = torch.ones(bsz, dtype=torch.long)
        accepted = torch.zeros(bsz, dtype=torch.long)
        passes = 1
        first = self.logits.probs(model.prefill(cond), 0, total)  # [B, V]
        vocab = first.shape[-1]
        tokens[:, 0] = sample_from_probs(first, rng.rand(1)[:, 0].to(device))
        base = model.cache_length  # condition tokens
        n = torch.ones(bsz, dtype=torch.long, device=device)  # committed tokens per sample
        drafts = torch.zeros(bsz, max(slots, 1), dtype=torch.long, device=device)
        q = torch.zeros(bsz, max(slots, 1), vocab, device=device)
        kept = torch.zeros(bsz, dtype=torch.long, device=device)  # carried drafts per sample
        while bool((n < total).any()):
            size = self._window_lengths(n, total)  # [B]
            active = (size > 0).nonzero()[:, 0]
            t = int(size.max())
            # one fixed block of uniforms per active sample: init | accept | sample
            u = torch.zeros(bsz, 3 * slots + 1, device=device)
            u[active] = rng.subset(active.tolist()).rand(3 * slots + 1).to(device)
            u_init, u_acc, u_tok = u[:, :slots], u[:, slots:2 * slots], u[:, 2 * slots:]
            last = tokens[rows, (n - 1).clamp(max=total - 1)]
            if slots:
                self._top_up(drafts, q, kept, n, last, u_init, w, vocab)

            # one forward over [last committed, drafts]; padded rows are cut off below
            block = torch.cat([last[:, None], drafts[:, :t - 1]], dim=1)  # [B, t]
            positions = ((n - 1)[:, None] + torch.arange(t, device=device)).clamp(max=total - 1)
            block, positions = self.logits.double(block), self.logits.double(positions)
            logits = model.decode(block, positions)  # [B', t, V]
            passes += 1
            forwards += (size > 0).long().cpu()
            done = (n[:, None] + torch.arange(t, device=device)).clamp(max=total - 1)
            p = self.logits.probs(logits, done, total)  # [B, t, V]; row j predicts n + j

            # verify drafts in order; a = accepted prefix length per sample
            ok = torch.zeros(bsz, 0, dtype=torch.bool, device=device)
            if t > 1:
                ratio = self.acceptance(p[:, :t - 1], q[:, :t - 1], drafts[:, :t - 1])
                inside = torch.arange(t - 1, device=device) < (size - 1)[:, None]
                ok = (u_acc[:, :t - 1] < ratio) & inside
            a = ok.long().cumprod(1).sum(1)  # [B]
            rejected = a < size - 1
            # the token after the accepted prefix: residual at a rejection, else the bonus
            p_a = p[rows, a.clamp(max=t - 1)]
            if t > 1:
                q_a = q[rows, a.clamp(max=t - 2)]
                p_a = torch.where(rejected[:, None], self.residual(p_a, q_a), p_a)
            token = sample_from_probs(p_a, u_tok[rows, a])

            # commit the accepted drafts and the new token of every live row in one masked write
            # (rows with size 0 are finished and stay untouched)
            live = size > 0
            j = torch.arange(t, device=device)
            committed = torch.cat([drafts[:, :t - 1], token[:, None]], 1)  # [B, t]
            committed = torch.where(j == a[:, None], token[:, None], committed)
            write = live[:, None] & (j <= a[:, None])  # [B, t]; n + a < total, so in range
            tokens[rows[:, None].expand(-1, t)[write], (n[:, None] + j)[write]] = committed[write]
            # carry the target samples made after the rejection as next drafts (q = their p)
            if slots:
                y = sample_from_probs(p, u_tok[:, :t])  # [B, t]
                src = (a[:, None] + 1 + torch.arange(slots, device=device)).clamp(max=t - 1)
                carried = torch.where(rejected, size - 1 - a, torch.zeros_like(a))
                drafts = torch.where(live[:, None], y.gather(1, src), drafts)
                q = torch.where(live[:, None, None], p.gather(1, src[..., None].expand(-1, -1, vocab)), q)
                kept = torch.where(live, carried, kept)
            accepted += torch.where(live, a, torch.zeros_like(a)).cpu()
            n = n + torch.where(live, a + 1, torch.zeros_like(a))
            lengths = base + n - 1
            model.truncate_cache(self.logits.double(lengths))
        self.stats = {
            "forward_passes": passes,
            "per_sample_forward_passes": forwards.tolist(),
            "per_sample_accepted_drafts": accepted.tolist(),
            "mean_accepted_length": float((total / forwards.double()).mean()),  # tokens per forward
        }
        return tokens.view(-1, *model.token_grid)


def _closest_keys(keys: torch.Tensor, n: int, fill: int, largest: bool = False) -> torch.Tensor:
    """The ``n`` largest (or smallest) of ``keys [..., V]`` in ascending order, ``fill`` where V < n."""
    if n > keys.shape[-1]:
        keys = torch.cat([keys, keys.new_full((*keys.shape[:-1], n - keys.shape[-1]), fill)], -1)
    values = keys.topk(n, -1, largest=largest).values
    return values.flip(-1) if largest else values


class GSDSampler(SJDSampler):
    """Grouped speculative decoding: SJD whose acceptance uses a group C of tokens around the draft.

    A draft x at a position with target p and draft q is accepted with probability
    ``min(1, sum_C p / sum_C q)``. C is built dynamically per position: rank the vocabulary by p,
    take ``group_size`` consecutive ranks around x's rank ``k`` (ranks ``[k - G//2, k - G//2 + G)``,
    cut at the ends), and keep only tokens c with ``|p(c) - p(x)| < p_threshold`` and squared L2
    embedding distance ``||e_c - e_x||^2 < dist_threshold`` (always including x). Rejection
    resamples from ``norm(max(0, p - q))`` as SJD. GSD is lossy (the accepted token is x itself).

    Paper vs released code: the paper takes G tokens around the draft, G/2 on each side, with
    G = 25 (MS-COCO) or 50 (Parti-Prompts). The released code (``junhyukso/GSD``,
    ``scheduler/jacobi_iteration_lumina_mgpt.py``) hard-codes the ascending-rank slice
    ``[k - 7, k + 7)`` (7 lower-ranked tokens, x, 6 higher-ranked), p threshold 0.15 and squared L2
    threshold 0.5 on the LM's input embedding table; that is ``group_size=14``, the default here.
    Where the released slice would start below rank 0 it is empty (NaN ratio, rejection); here it
    is cut at rank 0 instead. ``group_size=1`` is SJD exactly.

    Args:
        group_size: G, ranks considered around the draft (14 = released code; paper 25 or 50).
        p_threshold: keep tokens whose target probability differs from the draft's by less.
        dist_threshold: keep tokens whose squared L2 embedding distance to the draft is less.
        codebook: ``[V, D]`` embeddings for the distance (default: the model's ``token_embedding()``).
        **options: the SJD options (window, init, warmup, tail, logits processing).
    """

    name = "gsd"

    def __init__(self, group_size: int = 14, p_threshold: float = 0.15, dist_threshold: float = 0.5,
                 codebook: Optional[torch.Tensor] = None, **options):
        super().__init__(**options)
        self.group_size = checks.number("group_size", group_size, minimum=1, integer=True)
        # > 0: the draft is always in its own group
        self.p_threshold = checks.number("p_threshold", p_threshold, above=0)
        self.dist_threshold = checks.number("dist_threshold", dist_threshold, above=0)
        if codebook is not None and (codebook.dim() != 2 or not codebook.is_floating_point()):
            raise ValueError(f"codebook must be [V, D] float embeddings, got {codebook.dtype} {tuple(codebook.shape)}")
        if codebook is not None:
            checks.finite("codebook", codebook)
        self.codebook = codebook
        self._embed: Optional[torch.Tensor] = None

    def prepare(self, model) -> None:
        if self.codebook is None:
            require(model, TokenEmbedding, self.name)
        table = self.codebook if self.codebook is not None else model.token_embedding()
        if table.shape[0] < model.vocab_size:
            raise ValueError(f"codebook has {table.shape[0]} rows for a vocabulary of {model.vocab_size}")
        self._embed = table.detach().float().to(model.device)

    def group(self, p: torch.Tensor, drafts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The ids ``[B, S, G]`` at ascending-p ranks ``[k - G//2, k - G//2 + G)`` around each draft's
        rank k (ties in index order, as a stable sort), and which of them are inside the vocabulary.
        Without sorting V: each id gets the unique key (float32 bits of p, which order as p for
        p >= 0; then its index), and the neighbours are the nearest keys below and above the draft's.
        Ranked in float32: float64 probabilities that round to the same float32 count as tied."""
        vocab = p.shape[-1]
        bits = max(1, (vocab - 1).bit_length())
        ids = torch.arange(vocab, device=p.device)
        key = (p.float().view(torch.int32).long() << bits) | ids                  # [B, S, V], unique
        draft_key = key.gather(-1, drafts[..., None])                               # [B, S, 1]
        top = torch.iinfo(torch.long).max
        lower = _closest_keys(torch.where(key < draft_key, key, -1), self.group_size // 2, -1, largest=True)
        higher = _closest_keys(torch.where(key > draft_key, key, top), self.group_size - self.group_size // 2 - 1, top)
        inside = torch.cat([lower >= 0, torch.ones_like(draft_key, dtype=torch.bool), higher < top], -1)
        group = torch.cat([lower, draft_key, higher], -1) & ((1 << bits) - 1)      # ascending rank
        return group.clamp(max=vocab - 1), inside

    def acceptance(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
        group, inside = self.group(p, drafts)
        p_group, q_group = p.gather(-1, group), q.gather(-1, group)
        p_draft = p.gather(-1, drafts[..., None])
        dist = (self._embed[group] - self._embed[drafts][..., None, :]).pow(2).sum(-1)  # [B, S, G]
        keep = inside & ((p_group - p_draft).abs() < self.p_threshold) & (dist < self.dist_threshold)
        zero = torch.zeros((), device=p.device)
        ratio = torch.where(keep, p_group, zero).sum(-1) / torch.where(keep, q_group, zero).sum(-1)
        return ratio.clamp(max=1.0)
