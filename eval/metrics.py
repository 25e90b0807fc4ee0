"""FID, Inception Score, KID and precision/recall on InceptionV3 features.

- FID: Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule..." (TTUR,
  https://github.com/bioinf-jku/TTUR); the trace term by ``scipy.linalg.sqrtm`` with ADM's
  eps retry and imaginary-part check (openai/guided-diffusion evaluations), or torch-fidelity
  0.4's eigenvalue formula (``method="eigvals"``).
- IS: Salimans et al. 2016, 10 splits after a seeded shuffle (torch-fidelity's convention).
- KID: Binkowski et al. 2018, unbiased MMD^2 with the cubic polynomial kernel over random subsets
  (torch-fidelity defaults: 100 subsets of 1000, seed 2020).
- Precision / recall: Kynkaanniemi et al. 2019, k = 3 nearest-neighbour manifolds.

Convention as torch-fidelity 0.4: the first argument is generated, the second is real.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import numpy as np
import scipy.linalg
import torch
from tqdm.auto import tqdm

from vargen.data.folder import list_images, open_rgb
from vargen.eval.inception import RANDOM_SOURCE, InceptionFeatures
from vargen.eval.stats import FeatureStats, check_images_nhwc, load_stats, npz_image_batches, save_stats
from vargen.images import to_uint8

ImageSource = Union[str, Path, torch.Tensor, np.ndarray]
PROTOCOL = ("torch-fidelity InceptionV3 (TF 2015-12-05 graph port), TF1-compatible bilinear resize to 299, "
            "uint8 input, pool3 float64 statistics")


# ---------------------------------------------------------------------------------------------
# Metric math on features / statistics
def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     method: str = "sqrtm", eps: float = 1e-6) -> float:
    """``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
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
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def inception_score(logits: torch.Tensor, splits: int = 10, shuffle: bool = True, seed: int = 2020
                    ) -> Tuple[float, float]:
    """``exp(E_x KL(p(y|x) || p(y)))`` over ``splits`` chunks of ``[N, 1008]`` logits: (mean, std)."""
    n = logits.shape[0]
    if n < splits:
        raise ValueError(f"inception score needs at least {splits} samples, got {n}")
    if shuffle:
        logits = logits[np.random.RandomState(seed).permutation(n)]
    logits = logits.double()
    p, log_p = logits.softmax(1), logits.log_softmax(1)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
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
    return torch.cat(inside).float().mean().item()


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


# ---------------------------------------------------------------------------------------------
# Image sources -> uint8 [B, 3, H, W] batches
def image_batches(source: ImageSource, batch_size: int = 50, limit: Optional[int] = None
                  ) -> Iterator[torch.Tensor]:
    """Batches from an image folder, an ADM ``.npz`` (``arr_0``), a registered dataset
    (``"mnist:heldout"``), or an in-memory tensor (``[N, 3, H, W]``, uint8 or [-1, 1]) / uint8 NHWC array."""
    if isinstance(source, np.ndarray):
        source = torch.from_numpy(check_images_nhwc(source)).permute(0, 3, 1, 2)
    if isinstance(source, torch.Tensor):
        images = source if source.dtype == torch.uint8 else to_uint8(source)
        yield from images[:limit].split(batch_size)
        return
    path = Path(source)
    if path.suffix == ".npz":
        yield from npz_image_batches(path, batch_size, limit)
    elif path.is_dir():
        yield from _folder_batches(path, batch_size, limit)
    else:
        from vargen.data import get_dataset
        dataset = get_dataset(str(source))  # KeyError names the registered datasets
        n = len(dataset) if limit is None else min(limit, len(dataset))
        for start in range(0, n, batch_size):
            yield to_uint8(torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, n))]))


def _folder_batches(root: Path, batch_size: int, limit: Optional[int]) -> Iterator[torch.Tensor]:
    # Images are fed at their own size (the network resizes), as torch-fidelity and ADM do.
    files = list_images(root)[:limit]
    if not files:
        raise ValueError(f"no images found under {root}")
    batch: list = []
    for f in files:
        image = torch.from_numpy(np.asarray(open_rgb(f))).permute(2, 0, 1)
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            yield torch.stack(batch)
            batch = []
        batch.append(image)
    yield torch.stack(batch)


# ---------------------------------------------------------------------------------------------
# Features and end-to-end metrics
def extract(source: ImageSource, extractor: InceptionFeatures, keep: int = 0, logits: bool = False,
            batch_size: int = 50, limit: Optional[int] = None, desc: str = "features"
            ) -> Tuple[FeatureStats, Optional[torch.Tensor]]:
    """Stream ``source`` through ``extractor``: pool3 statistics (+ up to ``keep`` raw rows) and,
    if ``logits``, the ``[N, 1008]`` logits for IS."""
    stats, all_logits = FeatureStats(keep=keep), []
    for batch in tqdm(image_batches(source, batch_size, limit), desc=desc, unit="batch", leave=False,
                      disable=not sys.stderr.isatty()):
        out = extractor(batch)
        stats.update(out["2048"])
        if logits:
            all_logits.append(out["logits_unbiased"].cpu())
    if stats.n == 0:
        raise ValueError(f"{source!s:.80}: no images")
    return stats, (torch.cat(all_logits) if logits else None)


def reference_statistics(source: ImageSource, out: Union[str, Path], extractor: Optional[InceptionFeatures] = None,
                         batch_size: int = 50, limit: Optional[int] = None, **inception: Any) -> Dict[str, Any]:
    """Write ADM-style ``mu``/``sigma`` of ``source`` to ``out``; returns a summary."""
    extractor = extractor or InceptionFeatures(**inception)
    stats, _ = extract(source, extractor, batch_size=batch_size, limit=limit, desc="reference")
    info = {"num_images": stats.n, **extractor.describe()}
    save_stats(out, stats.mu, stats.sigma, num_images=np.int64(stats.n),
               inception_weights=np.str_(extractor.weights_source))
    return info


def compute_metrics(samples: ImageSource, reference: ImageSource, *, fid: bool = True, isc: bool = False,
                    kid: bool = False, prc: bool = False, extractor: Optional[InceptionFeatures] = None,
                    weights: Union[str, Path, None] = None, allow_random: bool = False, device: Any = None,
                    batch_size: int = 50, limit: Optional[int] = None, max_features: int = 50000,
                    fid_method: str = "sqrtm", isc_splits: int = 10, kid_subsets: int = 100,
                    kid_subset_size: int = 1000, prc_k: int = 3) -> Dict[str, Any]:
    """Metrics of generated ``samples`` against ``reference`` (images, or an ``.npz`` with ``mu``/``sigma``).

    Raw features are kept only for KID / precision-recall, at most ``max_features`` per side.
    KID's subset size is lowered to the smaller set size when needed (recorded in the result).
    """
    need_features = kid or prc
    ref_stats = load_stats(reference) if isinstance(reference, (str, Path)) and str(reference).endswith(".npz") else None
    if ref_stats is not None and need_features:
        if not ref_stats["has_images"]:
            raise ValueError(f"{reference} holds only mu/sigma; KID and precision/recall need reference images "
                             "(an arr_0 .npz, a folder or a dataset)")
        ref_stats = None  # an ADM reference batch: every metric from its arr_0 images
    if extractor is None:
        extractor = InceptionFeatures(weights, allow_random=allow_random)
        if device is not None:
            extractor.to(device)
    keep = max_features if need_features else 0
    result: Dict[str, Any] = {**extractor.describe(), "protocol": PROTOCOL}
    ref_weights = ref_stats and ref_stats["inception_weights"]
    if ref_weights:
        result["reference_inception_weights"] = ref_weights
        if (RANDOM_SOURCE == ref_weights) != extractor.random_weights:
            raise ValueError(f"{reference} was computed with Inception weights {ref_weights!r}, the samples "
                             f"with {extractor.weights_source!r}: FID between them is meaningless")
    if isc and not extractor.has_logits:
        result["inception_score"] = None
        result["inception_score_note"] = (f"not available: the Inception weights ({extractor.weights_source}) have "
                                          "no 1008-way classifier; supply torch-fidelity's .pth for IS")
        print(f"vargen.eval: Inception Score {result['inception_score_note']}", file=sys.stderr)
        isc = False
    gen, gen_logits = extract(samples, extractor, keep, isc, batch_size, limit, desc="samples")
    result["num_samples"] = gen.n
    if ref_stats is not None:
        ref_mu, ref_sigma = ref_stats["mu"], ref_stats["sigma"]
        result["num_reference"] = "precomputed statistics"
    else:
        ref, _ = extract(reference, extractor, keep, False, batch_size, None, desc="reference")
        ref_mu, ref_sigma = ref.mu, ref.sigma
        result["num_reference"] = ref.n
    if fid:
        result["fid"] = frechet_distance(gen.mu, gen.sigma, ref_mu, ref_sigma, method=fid_method)
    if isc:
        result["inception_score"], result["inception_score_std"] = inception_score(gen_logits, isc_splits)
    if kid:
        size = min(kid_subset_size, len(gen.features), len(ref.features))
        if size < 2:
            raise ValueError(f"KID needs at least 2 images per set, got {len(gen.features)} generated "
                             f"and {len(ref.features)} reference")
        result["kid"], result["kid_std"] = kernel_distance(gen.features, ref.features, kid_subsets, size)
        result["kid_subset_size"] = size
    if prc:
        result["precision"], result["recall"] = precision_recall(gen.features, ref.features, prc_k)
    return result
