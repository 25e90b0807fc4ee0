"""Reconstruction metrics of a tokenizer: rFID, PSNR, SSIM, and LPIPS when its weights exist.

    vargen recon --tokenizer mingtok-mnist --data mnist:heldout
    >>> from vargen.eval.recon import reconstruction_metrics
    >>> reconstruction_metrics(vargen.create_model("vq-mnist", pretrained=True), "mnist:heldout")

Every image of ``data`` is encoded and decoded once (``tokenizer.decode(tokenizer.encode(x))``);
reconstructions are clamped to [-1, 1] and compared with the originals as tokenizer papers do:

- PSNR and SSIM per image, then averaged, on pixels mapped to [0, 1] (data range 1), from
  torchmetrics (``peak_signal_noise_ratio``, ``structural_similarity_index_measure`` with Wang et
  al.'s 11x11 Gaussian window, sigma 1.5, K = (0.01, 0.03)). torchmetrics because it is
  maintained, batched on the GPU, and its SSIM matches scikit-image's ``gaussian_weights=True``.
- rFID: FID of the reconstructions against the originals (:func:`vargen.eval.compute_metrics`,
  real Inception weights as every vargen FID).
- LPIPS (AlexNet, torchmetrics) only when torchvision's ImageNet AlexNet is in torch's hub cache:
  its weights do not ship in any wheel, so offline the result says ``lpips: None`` and why.

Clips have their own measure, :func:`video_reconstruction_metrics`: per-clip PSNR on the uint8
clips, MSE, the number of codes used and, for Moving-MNIST, the digit classifier's per-frame
accuracy on the reconstructions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

from vargen import checks

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision AlexNet_Weights.IMAGENET1K_V1


@torch.no_grad()
def reconstruct(tokenizer: nn.Module, images: torch.Tensor, batch_size: int = 100, return_tokens: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """``decode(encode(x))`` over ``images [N, 3, H, W]`` (or clips ``[N, 3, T, H, W]``) in [-1, 1],
    clamped, float32 on CPU; with ``return_tokens`` also the tokens, on CPU."""
    was_training = tokenizer.training
    tokenizer.eval()
    try:
        weight = next(tokenizer.parameters(), None)
        device = images.device if weight is None else weight.device
        recons, tokens = [], []
        for x in images.split(batch_size):
            codes = tokenizer.encode(x.to(device))
            if return_tokens:
                tokens.append(codes.cpu())
            recons.append(tokenizer.decode(codes).float().clamp(-1, 1).cpu())
    finally:
        tokenizer.train(was_training)
    return (torch.cat(recons), torch.cat(tokens)) if return_tokens else torch.cat(recons)


def psnr_ssim(reconstructions: torch.Tensor, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR (dB) and SSIM ``[N]`` of two ``[N, 3, H, W]`` batches in [-1, 1]."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
    if reconstructions.shape != images.shape or images.dim() != 4:
        raise ValueError(f"need two [N, 3, H, W] batches of one shape, got {tuple(reconstructions.shape)} "
                         f"and {tuple(images.shape)}")
    x, y = (reconstructions.double() + 1) / 2, (images.double() + 1) / 2
    psnr = peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")
    return psnr.float(), ssim.float()


def lpips_weights() -> Optional[Path]:
    """torchvision's AlexNet in torch's hub cache (LPIPS' backbone), or None."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    return path if path.is_file() else None


def _hub_cache_state_dict(url: str, *args: Any, **kwargs: Any) -> Dict[str, torch.Tensor]:
    """What torchvision's ``load_state_dict_from_url`` returns, read from torch's hub cache only:
    the hash its file name pins is checked on every load and the file is read ``weights_only=True``
    (:func:`vargen.loaders.load_torch_hub_file`); nothing is downloaded."""
    from vargen.loaders import load_torch_hub_file
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not path.is_file():
        raise FileNotFoundError(f"{path} (from {url}) is not in torch's hub cache; LPIPS needs it")
    return load_torch_hub_file(path)


def lpips_metric(net_type: str = "alex") -> nn.Module:
    """torchmetrics' LPIPS with its torchvision backbone read by :func:`_hub_cache_state_dict`
    (torchvision itself would unpickle the cached file with ``weights_only=False``)."""
    from unittest import mock
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
    with mock.patch("torchvision.models._api.load_state_dict_from_url", _hub_cache_state_dict):
        return LearnedPerceptualImagePatchSimilarity(net_type=net_type, normalize=False)


@torch.no_grad()
def lpips(reconstructions: torch.Tensor, images: torch.Tensor, batch_size: int = 100,
          metric: Optional[nn.Module] = None) -> float:
    metric = lpips_metric("alex") if metric is None else metric
    for x, y in zip(reconstructions.split(batch_size), images.split(batch_size)):
        metric.update(x.float(), y.float())
    return metric.compute().item()


def reconstruction_metrics(tokenizer: nn.Module, data: Union[str, torch.Tensor] = "mnist:heldout", *,
                           fid: bool = True, fid_reference: Union[str, Path, None] = None,
                           inception_weights: Union[str, Path, None] = None, allow_random: bool = False,
                           extractor: Any = None, image_size: int = 32, batch_size: int = 100,
                           limit: Optional[int] = None, device: Any = None) -> Dict[str, Any]:
    """rFID / PSNR / SSIM (/ LPIPS) of ``tokenizer`` on a dataset (``"mnist:heldout"``; a name
    without a split means its held-out split), an image folder, or ``[N, 3, H, W]`` in [-1, 1].

    rFID compares the reconstructions with the originals, or with ``fid_reference`` (an ADM
    ``.npz`` of the same images, e.g. from ``vargen ref-stats``, so several tokenizers share one
    Inception pass over the originals). ``extractor`` replaces the Inception network (tests).
    """
    from vargen.data import cache, get_dataset
    checks.image_size("image_size", image_size)
    images = data if isinstance(data, torch.Tensor) else \
        cache.dataset_tensors(get_dataset(data, "heldout", image_size))["images"]
    batch_size = checks.number("batch_size", batch_size, minimum=1, integer=True)
    images = images[:checks.number("limit", limit, minimum=1, integer=True, optional=True)]
    checks.pixels("images", images)
    if len(images) == 0:
        raise ValueError(f"{data!s:.80}: no images")
    if device is not None:
        device = checks.device(device, "device")
        tokenizer = tokenizer.to(device)
    lpips_net = lpips_metric("alex") if lpips_weights() is not None else None  # its file checked before work
    recon = reconstruct(tokenizer, images, batch_size)
    psnr, ssim = psnr_ssim(recon, images)
    result: Dict[str, Any] = {"num_images": len(images), "psnr": psnr.mean().item(), "ssim": ssim.mean().item()}
    if fid:
        from vargen.eval.metrics import compute_metrics
        fid_result = compute_metrics(recon, images if fid_reference is None else fid_reference,
                                     extractor=extractor, weights=inception_weights, allow_random=allow_random,
                                     device=device, batch_size=batch_size)
        result["rfid"] = fid_result["fid"]
        result["inception_weights"] = fid_result["inception_weights"]
        result["random_weights"] = fid_result["random_weights"]
    if lpips_net is not None:
        result["lpips"] = lpips(recon, images, batch_size, lpips_net)
    else:
        result["lpips"] = None
        result["lpips_note"] = (f"not computed: LPIPS needs torchvision's ImageNet AlexNet ({ALEXNET_FILE} in "
                                f"{Path(torch.hub.get_dir()) / 'checkpoints'}), which no wheel ships offline")
    result["metric_library"] = "torchmetrics (PSNR, SSIM 11x11 Gaussian sigma 1.5, on [0, 1])"
    return result


def video_reconstruction_metrics(tokenizer: nn.Module, videos: torch.Tensor, labels: Optional[torch.Tensor] = None,
                                 digit_size: int = 16, batch_size: int = 50,
                                 classifier: Optional[nn.Module] = None) -> Dict[str, Any]:
    """Encode + decode clips ``videos [N, 3, T, H, W]`` in [-1, 1] with a discrete video tokenizer:
    mean per-clip PSNR (dB, on the uint8 clips), MSE in [-1, 1], codes used and, with ``labels``,
    the digit classifier's per-frame accuracy on the reconstructions
    (:func:`vargen.data.moving_mnist.frame_accuracy`; ``classifier`` None: the shipped
    ``digit-classifier``)."""
    from vargen.images import to_uint8
    recon, ids = reconstruct(tokenizer, videos, batch_size, return_tokens=True)
    err = (to_uint8(recon).float() - to_uint8(videos).float()).pow(2).flatten(1).mean(1)
    metrics = {"psnr": (10 * torch.log10(255.0 ** 2 / err.clamp_min(1e-10))).mean().item(),
               "mse": (recon - videos.float()).pow(2).mean().item(),
               "codes_used": int(ids.unique().numel())}
    if labels is not None:
        from vargen.data.moving_mnist import frame_accuracy
        if classifier is None:
            from vargen.registry import create_model
            device = next(tokenizer.parameters()).device
            classifier = create_model("digit-classifier", pretrained=True).to(device).eval()
        metrics["frame_accuracy"] = frame_accuracy(classifier, recon, labels, digit_size)
    return metrics
