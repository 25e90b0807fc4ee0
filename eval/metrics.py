"""FID, Inception Score, KID and precision/recall of image sets, end to end.

Images (a folder, an ADM ``.npz``, a registered dataset or a tensor) are streamed once through
InceptionV3 (:mod:`vargen.eval.inception`) into running statistics, and the formulas of
:mod:`vargen.eval.scores` (FID, sFID on the 2023-d ``mixed_6/conv`` spatial features as the ADM
evaluator computes it, IS, KID, precision/recall) are applied to them. Convention as torch-fidelity
0.4: the first argument is generated, the second is real. :func:`evaluate_all` gives the ADM
evaluator's table (Inception Score, FID, sFID, Precision, Recall) plus KID from one pass over each
image set; :func:`reference_statistics` writes ADM-style reference statistics, resumably.
"""
from __future__ import annotations

import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from vargen import checks
from vargen.data.folder import list_images, open_rgb
from vargen.eval.inception import RANDOM_SOURCE, InceptionFeatures, default_batch_size, resolve_device
from vargen.eval.scores import frechet_distance, inception_score, kernel_distance, precision_recall
from vargen.eval.stats import (FeatureStats, check_images_nhwc, load_stats, npz_image_batches, save_npz,
                               save_stats, write_json)
from vargen.images import to_uint8

ImageSource = Union[str, Path, torch.Tensor, np.ndarray]
PROTOCOL = ("torch-fidelity InceptionV3 (TF 2015-12-05 graph port), TF1-compatible bilinear resize to 299, "
            "uint8 input, fp32 with TF32 off, pool3 and mixed_6/conv[..., :7] float64 statistics")
# The ADM evaluator's printed names, in its order (evaluations/evaluator.py), then what vargen adds.
ADM_TABLE = (("Inception Score", "inception_score"), ("FID", "fid"), ("sFID", "sfid"),
             ("Precision", "precision"), ("Recall", "recall"))
EXTRA_TABLE = (("KID", "kid"),)
ADM_IS_SPLIT_SIZE = 5000


# ---------------------------------------------------------------------------------------------
# Image sources -> uint8 [B, 3, H, W] batches
def image_batches(source: ImageSource, batch_size: int = 50, limit: Optional[int] = None
                  ) -> Iterator[torch.Tensor]:
    """Batches from an image folder, an ADM ``.npz`` (``arr_0``), a registered dataset
    (``"mnist:heldout"``), or an in-memory tensor (``[N, 3, H, W]``, uint8 or [-1, 1]) / uint8 NHWC array."""
    batch_size = checks.number("batch_size", batch_size, minimum=1, integer=True)
    limit = checks.number("limit", limit, minimum=1, integer=True, optional=True)
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
@dataclass
class Features:
    """What one streaming pass over an image set keeps: pool3 statistics (+ raw rows for KID/PR),
    spatial statistics (sFID) and the logits (IS), each only if asked for."""
    pool: FeatureStats
    spatial: Optional[FeatureStats] = None
    logits: Optional[torch.Tensor] = None

    @property
    def n(self) -> int:
        return self.pool.n


def _device_of(extractor: Any) -> torch.device:
    param = next(iter(extractor.parameters()), None) if isinstance(extractor, torch.nn.Module) else None
    return param.device if param is not None else torch.device("cpu")


def extract(source: ImageSource, extractor: InceptionFeatures, keep: int = 0, logits: bool = False,
            batch_size: Optional[int] = None, limit: Optional[int] = None, desc: str = "features",
            spatial: bool = False, start: Optional[Features] = None, skip: int = 0,
            on_batch: Optional[Callable[[int, Features], None]] = None) -> Features:
    """Stream ``source`` through ``extractor`` once: pool3 statistics (+ up to ``keep`` raw rows), and
    if asked the spatial statistics and the ``[N, 1008]`` logits. ``batch_size`` None: sized for the
    extractor's device (:func:`~vargen.eval.inception.default_batch_size`). A resumed pass adds to
    ``start``, the features of its first ``skip`` batches; ``on_batch(batches_done, features)``
    runs after every batch."""
    batch_size = default_batch_size(_device_of(extractor)) if batch_size is None else batch_size
    out = start or Features(FeatureStats(keep=keep), FeatureStats() if spatial else None)
    all_logits = []
    for i, batch in enumerate(tqdm(image_batches(source, batch_size, limit), desc=desc, unit="batch",
                                   leave=False, disable=not sys.stderr.isatty())):
        if i < skip:
            continue
        features = extractor(batch)
        out.pool.update(features["2048"])
        if spatial:
            out.spatial.update(features["spatial"])
        if logits:
            all_logits.append(features["logits_unbiased"].cpu())
        if on_batch is not None:
            on_batch(i + 1, out)
    if out.n == 0:
        raise ValueError(f"{source!s:.80}: no images")
    out.logits = torch.cat(all_logits) if logits else None
    return out


def reference_statistics(source: ImageSource, out: Union[str, Path], extractor: Optional[InceptionFeatures] = None,
                         batch_size: Optional[int] = None, limit: Optional[int] = None, save_every: int = 5000,
                         **inception: Any) -> Dict[str, Any]:
    """Write ADM-style ``mu``/``sigma`` and spatial ``mu_s``/``sigma_s`` of ``source`` to ``out``.

    Resumable: every ``save_every`` images the running sums go to ``OUT.progress`` (atomically); a
    rerun of the same command skips the batches they hold and adds to them in the same order, so
    its ``out`` is byte-identical to an uninterrupted run's. Tensors and arrays are not resumed."""
    extractor = extractor or InceptionFeatures(**inception)
    batch_size = batch_size or default_batch_size(_device_of(extractor))
    resumable = isinstance(source, (str, Path))
    progress = Path(f"{out}.progress")
    key = json.dumps({"source": str(source), "limit": limit, "batch_size": batch_size,
                      "inception_weights": extractor.weights_source}, sort_keys=True)
    start, skip = _load_progress(progress, key, _device_of(extractor)) if resumable else (None, 0)
    if start is not None:
        print(f"vargen ref-stats: resuming from {progress}: {start.n} images ({skip} batches) done, "
              f"skipping them", file=sys.stderr, flush=True)
    saved = [start.n if start is not None else 0]

    def save(batches: int, feats: Features) -> None:
        if resumable and feats.n - saved[0] >= save_every:
            save_npz(progress, key=np.str_(key), batches=np.int64(batches), **feats.pool.state("pool_"),
                     **feats.spatial.state("spatial_"))
            saved[0] = feats.n
    feats = extract(source, extractor, batch_size=batch_size, limit=limit, desc="reference", spatial=True,
                    start=start, skip=skip, on_batch=save)
    info = {"num_images": feats.n, **extractor.describe()}
    save_stats(out, feats.pool.mu, feats.pool.sigma, feats.spatial.mu, feats.spatial.sigma,
               num_images=np.int64(feats.n), inception_weights=np.str_(extractor.weights_source))
    progress.unlink(missing_ok=True)
    return info


def _load_progress(path: Path, key: str, device: torch.device) -> Tuple[Optional[Features], int]:
    """The features a killed ``reference_statistics`` run saved and how many batches they hold, if
    it was this same run."""
    if not path.exists():
        return None, 0
    try:
        with np.load(path) as saved:
            if str(saved["key"]) != key:
                print(f"vargen ref-stats: ignoring {path}: written by another run ({saved['key']})",
                      file=sys.stderr)
                return None, 0
            return (Features(FeatureStats.from_state(saved, "pool_", device),
                             FeatureStats.from_state(saved, "spatial_", device)), int(saved["batches"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} (the progress of a killed run) cannot be read: {e}; delete it "
                         f"to start over") from e


def _stored_statistics(reference: ImageSource) -> Optional[Dict[str, Any]]:
    return load_stats(reference) if isinstance(reference, (str, Path)) and str(reference).endswith(".npz") else None


def compute_metrics(samples: ImageSource, reference: ImageSource, *, fid: bool = True, isc: bool = False,
                    sfid: bool = False, kid: bool = False, prc: bool = False,
                    extractor: Optional[InceptionFeatures] = None, weights: Union[str, Path, None] = None,
                    allow_random: bool = False, device: Any = None, batch_size: Optional[int] = None,
                    limit: Optional[int] = None, max_features: int = 50000, fid_method: str = "sqrtm",
                    isc_splits: int = 10, isc_split_size: Optional[int] = None, kid_subsets: int = 100,
                    kid_subset_size: int = 1000, prc_k: int = 3) -> Dict[str, Any]:
    """Metrics of generated ``samples`` against ``reference`` (images, or an ``.npz`` with ``mu``/``sigma``).

    As ADM's evaluator: statistics stored in the reference ``.npz`` (``mu``/``sigma``, ``mu_s``/``sigma_s``)
    are used for FID / sFID; its ``arr_0`` images, if any, for KID / precision-recall and for whatever
    statistics it lacks. Raw features are kept only for KID / precision-recall, at most
    ``max_features`` per side. KID's subset size is lowered to the smaller set size when needed
    (recorded in the result). ``device`` None: CUDA if available; ``batch_size`` None: sized for it.
    """
    for name, value, minimum in (("max_features", max_features, 1), ("isc_splits", isc_splits, 1),
                                 ("kid_subsets", kid_subsets, 1), ("kid_subset_size", kid_subset_size, 2),
                                 ("prc_k", prc_k, 1)):
        checks.number(name, value, minimum=minimum, integer=True)
    checks.number("isc_split_size", isc_split_size, minimum=1, integer=True, optional=True)
    checks.number("batch_size", batch_size, minimum=1, integer=True, optional=True)
    for name, source in (("samples", samples), ("reference", reference)):
        if isinstance(source, (str, Path)) and str(source).endswith(".npz") and not Path(source).is_file():
            raise FileNotFoundError(f"{name} {source} does not exist")  # before Inception is loaded
    need_features = kid or prc
    stored = _stored_statistics(reference)
    if stored is not None and need_features and not stored["has_images"]:
        raise ValueError(f"{reference} holds only mu/sigma; KID and precision/recall need reference images "
                         "(an arr_0 .npz, a folder or a dataset)")
    if extractor is None:
        extractor = InceptionFeatures(weights, allow_random=allow_random).to(resolve_device(device))
    keep = max_features if need_features else 0
    result: Dict[str, Any] = {**extractor.describe(), "protocol": PROTOCOL}
    ref_weights = stored and stored["inception_weights"]
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
    stored_spatial = sfid and stored is not None and stored["mu_s"] is not None
    if sfid and stored is not None and not stored_spatial and not stored["has_images"]:
        result["sfid"] = None
        result["sfid_note"] = (f"not available: {reference} holds mu/sigma but no mu_s/sigma_s spatial statistics "
                               "(and no arr_0 images); make it with `vargen ref-stats` or use ADM's reference batch")
        print(f"vargen.eval: sFID {result['sfid_note']}", file=sys.stderr)
        sfid = False
    result["device"] = str(_device_of(extractor))
    result["batch_size"] = default_batch_size(_device_of(extractor)) if batch_size is None else batch_size
    gen = extract(samples, extractor, keep, isc, result["batch_size"], limit, "samples", spatial=sfid)
    result["num_samples"] = gen.n
    ref = None
    if stored is None or need_features or (sfid and not stored_spatial):
        ref = extract(reference, extractor, keep, False, result["batch_size"], None, "reference",
                      spatial=sfid and not stored_spatial)
        result["num_reference"] = ref.n
    if stored is not None:
        result["reference_statistics"] = f"stored in {reference}: " + ", ".join(
            k for k in ("mu", "sigma", "mu_s", "sigma_s") if stored[k] is not None)
        result.setdefault("num_reference", "precomputed statistics")
    if fid:
        ref_mu, ref_sigma = (stored["mu"], stored["sigma"]) if stored is not None else (ref.pool.mu, ref.pool.sigma)
        result["fid"] = frechet_distance(gen.pool.mu, gen.pool.sigma, ref_mu, ref_sigma, method=fid_method)
    if sfid:
        ref_mu, ref_sigma = ((stored["mu_s"], stored["sigma_s"]) if stored_spatial
                             else (ref.spatial.mu, ref.spatial.sigma))
        result["sfid"] = frechet_distance(gen.spatial.mu, gen.spatial.sigma, ref_mu, ref_sigma, method=fid_method)
    if isc:
        result["inception_score"], result["inception_score_std"] = inception_score(
            gen.logits, isc_splits, split_size=isc_split_size)
        result["inception_score_splits"] = (f"consecutive splits of {isc_split_size} (ADM)" if isc_split_size
                                            else f"{isc_splits} splits after a seeded shuffle (torch-fidelity)")
    if kid:
        size = min(kid_subset_size, len(gen.pool.features), len(ref.pool.features))
        if size < 2:
            raise ValueError(f"KID needs at least 2 images per set, got {len(gen.pool.features)} generated "
                             f"and {len(ref.pool.features)} reference")
        result["kid"], result["kid_std"] = kernel_distance(gen.pool.features, ref.pool.features, kid_subsets, size)
        result["kid_subset_size"] = size
    if prc:
        result["precision"], result["recall"] = precision_recall(gen.pool.features, ref.pool.features, prc_k)
    return result


def adm_table(result: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """The ADM evaluator's rows (its names and order: Inception Score, FID, sFID, Precision, Recall),
    then KID; None where a metric was not available (the result's ``*_note`` says why)."""
    return {name: result.get(key) for name, key in ADM_TABLE + EXTRA_TABLE}


def format_adm_table(result: Dict[str, Any]) -> str:
    """ADM's printout (``Inception Score: 215.8...``), then KID and where the numbers come from."""
    lines = []
    for name, key in ADM_TABLE + EXTRA_TABLE:
        value = result.get(key)
        if value is None:
            shown = "n/a" + (f" ({result[key + '_note']})" if key + "_note" in result else "")
        else:
            shown = f"{value:.6g}" + (f" ± {result[key + '_std']:.3g}" if result.get(key + "_std") else "")
        lines.append(f"{name}: {shown}")
    lines.append(f"samples: {result.get('num_samples')}, reference: {result.get('num_reference')}")
    for key in ("inception_weights", "feature_extractor", "reference_inception_weights", "reference_statistics",
                "inception_score_splits", "protocol", "device", "batch_size"):
        if key in result:
            lines.append(f"{key}: {result[key]}")
    if result.get("random_weights"):
        lines.append("!!! RANDOM WEIGHTS: these numbers are not comparable to anything !!!")
    return "\n".join(lines)


def evaluate_all(samples: ImageSource, reference: ImageSource, json_path: Union[str, Path, None] = None,
                 verbose: bool = True, **options: Any) -> Dict[str, Any]:
    """The ADM evaluator's table from one pass over each image set: Inception Score (ADM's splits of
    5000; "n/a" when the weights have no 1008-way head), FID, sFID, Precision, Recall (k=3 on pool3),
    plus KID, with the Inception weights' provenance. Prints it (``verbose``) and writes the result
    as JSON to ``json_path``. ``options`` go to :func:`compute_metrics`.

    A reference holding only statistics (no ``arr_0``) gives FID / sFID; Precision, Recall and KID
    are then "n/a" (they need reference images).
    """
    stored = _stored_statistics(reference)
    images = stored is None or stored["has_images"]
    options.setdefault("isc_split_size", ADM_IS_SPLIT_SIZE)
    result = compute_metrics(samples, reference, fid=True, isc=True, sfid=True, kid=images, prc=images, **options)
    if not images:
        for key in ("precision", "recall", "kid"):
            result[key] = None
            result[key + "_note"] = f"not available: {reference} holds statistics, no reference images"
    result = {"table": adm_table(result), **result}
    if verbose:
        print(format_adm_table(result))
    if json_path:
        write_json(json_path, result)
    return result
