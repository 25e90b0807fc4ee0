"""Evaluation: IS / FID / sFID / precision-recall (ADM's table) and KID on InceptionV3 features,
FVD on I3D features, ADM ``.npz`` reference statistics, and distributed resumable sample generation.

    >>> from vargen.eval import compute_metrics, generate_samples
    >>> compute_metrics("runs/nar/samples.npz", "mnist:heldout", kid=True, prc=True)
    >>> evaluate_all("samples.npz", "VIRTUAL_imagenet256_labeled.npz", json_path="eval.json")  # ADM's table

Names are imported lazily so that ``vargen`` subcommands do not pay for torch-fidelity/torchvision.
"""
import importlib

_EXPORTS = {
    "vargen.eval.fvd": ("I3D", "I3DFeatures", "compute_fvd"),
    "vargen.eval.inception": ("InceptionFeatures", "resolve_inception_weights"),
    "vargen.eval.metrics": ("compute_metrics", "evaluate_all", "frechet_distance", "inception_score",
                            "kernel_distance", "precision_recall", "reference_statistics"),
    "vargen.eval.sample": ("generate_samples",),
    "vargen.eval.stats": ("FeatureStats", "load_stats", "save_stats"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'vargen.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
