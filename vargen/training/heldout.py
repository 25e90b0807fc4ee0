"""The held-out metrics a run writes into its model card, measured on the training side.

A model lists the metrics it reports in the class attribute ``card_metrics`` (a tuple of
names; none by default); what measures them follows from what the model is, never from its
family: a classifier (``kind == "classifier"``) gets its accuracy, a tokenizer of clips (one that
has ``check_videos``) the video reconstruction metrics of :mod:`vargen.eval.recon` (Moving-MNIST
only: the per-frame accuracy needs its digit labels), any other tokenizer PSNR / SSIM. They are
taken on the held-out split of a registered dataset (``{}`` for an image folder or a token file)
and named ``{dataset}_heldout_{metric}``. Models, tokenizers and the classifier import none of
this: data and evaluation sit above them.
"""
from __future__ import annotations

from typing import Any, Dict

import torch.nn as nn


def heldout_metrics(model: nn.Module, data: str) -> Dict[str, Any]:
    """``{f"{dataset}_heldout_{name}": value}`` for the ``card_metrics`` of ``model`` on the held-out
    split of the dataset ``data`` names (``"mnist"``, ``"mnist:train"``); ``{}`` when the model
    reports none or ``data`` is not a registered dataset."""
    from vargen.data import DATASETS
    wanted = tuple(getattr(model, "card_metrics", ()))
    base = str(data).partition(":")[0]
    if not wanted or base not in DATASETS:
        return {}
    if getattr(model, "kind", None) == "classifier":
        metrics = _classification(model, base)
    elif hasattr(model, "check_videos"):
        if base != "moving-mnist":
            return {}
        metrics = _video_reconstruction(model, base)
    else:
        from vargen.eval.recon import reconstruction_metrics
        metrics = reconstruction_metrics(model, f"{base}:heldout", fid=False)
    return {f"{base}_heldout_{k}": v for k, v in metrics.items() if k in wanted}


def _classification(model: nn.Module, base: str) -> Dict[str, float]:
    from vargen.data import cache, get_dataset
    heldout = cache.dataset_tensors(get_dataset(base, "heldout", model.config.image_size))
    return {"accuracy": model.accuracy(heldout["images"], heldout["labels"])}


def _video_reconstruction(model: nn.Module, base: str, image_size: int = 32) -> Dict[str, Any]:
    from vargen.data import get_dataset
    from vargen.eval.recon import video_reconstruction_metrics
    heldout = get_dataset(base, "heldout", image_size)
    return video_reconstruction_metrics(model, heldout.videos(), heldout.labels, heldout.digit_size)
