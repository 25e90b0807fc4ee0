"""The metric formulas, on InceptionV3 features or their statistics (no network, no images).

- FID: Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule..." (TTUR,
  https://github.com/bioinf-jku/TTUR); the trace term by ``scipy.linalg.sqrtm`` with ADM's
  eps retry and imaginary-part check (openai/guided-diffusion evaluations), or torch-fidelity
  0.4's eigenvalue formula (``method="eigvals"``). sFID and FVD are the same Frechet distance on
  other features.
- IS: Salimans et al. 2016, 10 splits after a seeded shuffle (torch-fidelity's convention), or ADM's
  consecutive splits of 5000 without shuffle (``split_size=5000``).
- KID: Binkowski et al. 2018, unbiased MMD^2 with the cubic polynomial kernel over random subsets
  (torch-fidelity defaults: 100 subsets of 1000, seed 2020).
- Precision / recall: Kynkaanniemi et al. 2019, k = 3 nearest-neighbour manifolds.

:mod:`vargen.eval.metrics` streams images through the network and applies these.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import scipy.linalg
import torch

from vargen import checks


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     method: str = "sqrtm", eps: float = 1e-6) -> float:
    """``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    for name, stat in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        checks.finite(f"statistics {name}", stat)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    if method == "eigvals":
        tr_covmean = np.sqrt(np.linalg.eigvals(sigma1 @ sigma2).astype(np.complex128)).real.sum()
    elif method == "sqrtm":
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            # Near-singular product (e.g. fewer samples than dimensions): ADM's regularisation.
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if np.iscomplexobj(covmean):
            imag = np.max(np.abs(covmean.imag))
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                raise ValueError(f"sqrtm has a large imaginary component {imag:.3g}; the covariances are "
                                 f"ill-conditioned (too few samples?) — try method='eigvals'")
            covmean = covmean.real
        tr_covmean = np.trace(covmean)
    else:
        raise ValueError(f"method must be 'sqrtm' or 'eigvals', got {method!r}")
    distance = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)
    if not np.isfinite(distance):
        raise ValueError(f"the Frechet distance is {distance} (overflowing statistics?); try method='eigvals'")
    return distance


def inception_score(logits: torch.Tensor, splits: int = 10, shuffle: bool = True, seed: int = 2020,
                    split_size: Optional[int] = None) -> Tuple[float, float]:
    """``exp(E_x KL(p(y|x) || p(y)))`` over chunks of ``[N, 1008]`` logits: (mean, std) over chunks.

    Default: ``splits`` equal chunks after a seeded shuffle (torch-fidelity). ``split_size``: ADM's
    convention instead, consecutive chunks of that many samples in file order (the last may be shorter).
    """
    n = logits.shape[0]
    checks.finite("logits", logits)
    if split_size is not None:
        if n < 1 or split_size < 1:
            raise ValueError(f"inception score needs samples and split_size >= 1, got {n} and {split_size}")
        bounds = [(lo, min(lo + split_size, n)) for lo in range(0, n, split_size)]
    else:
        if n < splits:
            raise ValueError(f"inception score needs at least {splits} samples, got {n}")
        if shuffle:
            logits = logits[np.random.RandomState(seed).permutation(n)]
        bounds = [(i * n // splits, (i + 1) * n // splits) for i in range(splits)]
    logits = logits.double()
    p, log_p = logits.softmax(1), logits.log_softmax(1)
    scores = []
    for lo, hi in bounds:
        q = p[lo:hi].mean(0, keepdim=True)
        scores.append((p[lo:hi] * (log_p[lo:hi] - q.log())).sum(1).mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> float:
    m = x.shape[0]
    k_xx = (x @ x.T * gamma + coef0) ** degree
    k_yy = (y @ y.T * gamma + coef0) ** degree
    k_xy = (x @ y.T * gamma + coef0) ** degree
    off_diag = k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)
    return off_diag / (m * (m - 1)) - 2 * k_xy.sum() / (m * m)


def kernel_distance(generated: torch.Tensor, real: torch.Tensor, subsets: int = 100,
                    subset_size: int = 1000, degree: int = 3, gamma: Optional[float] = None,
                    coef0: float = 1.0, seed: int = 2020) -> Tuple[float, float]:
    """KID (mean, std) over ``subsets`` random subsets (same draws as torch-fidelity)."""
    n1, n2 = len(generated), len(real)
    if min(n1, n2) < subset_size:
        raise ValueError(f"KID subset size {subset_size} exceeds the number of samples "
                         f"({n1} generated, {n2} real); lower kid_subset_size")
    g, r = generated.double().cpu().numpy(), real.double().cpu().numpy()
    gamma = 1.0 / g.shape[1] if gamma is None else gamma
    rng = np.random.RandomState(seed)
    mmds = [_mmd2_unbiased(g[rng.choice(n1, subset_size, replace=False)],
                           r[rng.choice(n2, subset_size, replace=False)], degree, gamma, coef0)
            for _ in range(subsets)]
    return float(np.mean(mmds)), float(np.std(mmds))


def _kth_neighbour_radii(x: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    # k+1: every point is its own nearest neighbour at distance 0.
    return torch.cat([torch.cdist(chunk, x).kthvalue(k + 1, dim=1).values for chunk in x.split(batch)])


def _inside_manifold(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, batch: int) -> float:
    inside = [(torch.cdist(chunk, support) <= radii[None]).any(1) for chunk in queries.split(batch)]
    return torch.cat(inside).double().mean().item()


def precision_recall(generated: torch.Tensor, real: torch.Tensor, k: int = 3, batch: int = 10000
                     ) -> Tuple[float, float]:
    """Precision: share of generated samples inside the real k-NN manifold; recall: share of real
    samples inside the generated one (memory bounded by ``batch`` rows of distances)."""
    if min(len(generated), len(real)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    generated, real = generated.float(), real.float()
    precision = _inside_manifold(generated, real, _kth_neighbour_radii(real, k, batch), batch)
    recall = _inside_manifold(real, generated, _kth_neighbour_radii(generated, k, batch), batch)
    return precision, recall
