"""A small digit classifier for judging generated MNIST digits.

Not from a paper: a plain VGG-style CNN (three conv stages of two 3x3 convs, max-pooling, a
linear head) on 32x32x3 images in [-1, 1], trained on ``MNISTDigits("train")`` (4000 digits)
and measured on the 1000 held-out digits. Evaluation uses it to check that a class-conditional
generator draws the digit it was asked for (``accuracy(images, labels)``).

    >>> clf = vargen.create_model("digit-classifier", pretrained=True)
    >>> clf.accuracy(images, labels)          # images [B, 3, 32, 32] in [-1, 1]

Train it with ``vargen train --model digit-classifier --data mnist ...`` or
:func:`vargen.training.train_classifier`; the trainer measures the held-out accuracy
(``card_metrics``, :mod:`vargen.training.heldout`) and puts it into the model card.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from vargen.hub import VargenModule
from vargen.registry import Weights, register_model
from vargen.recipes import CLASSIFIER


@dataclass
class DigitClassifierConfig:
    num_classes: int = 10
    image_size: int = 32
    widths: Tuple[int, ...] = (32, 64, 128)  # channels of each conv stage (each halves H, W)
    dropout: float = 0.25
    augment_shift: int = 2  # random translation (pixels) applied by loss() in training mode


class DigitClassifier(VargenModule):
    config_class = DigitClassifierConfig
    kind = "classifier"
    trains_on = "images"
    card_metrics = ("accuracy",)  # held-out, in the trained model's card (vargen.training.heldout)

    def __init__(self, config: DigitClassifierConfig):
        super().__init__(config)
        c = config
        if c.image_size % (2 ** len(c.widths)):
            raise ValueError(f"image_size must be divisible by 2**len(widths) = "
                             f"{2 ** len(c.widths)}, got {c.image_size}")
        layers, cin = [], 3
        for width in c.widths:
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True),
                       nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(cin, c.num_classes)

    def check_images(self, images: torch.Tensor) -> None:
        size = self.config.image_size
        if not torch.is_floating_point(images):
            raise TypeError(f"images must be float in [-1, 1], got {images.dtype} "
                            f"(convert uint8 with x / 127.5 - 1)")
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"expected images [B, 3, {size}, {size}], got {tuple(images.shape)}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes]`` for ``images [B, 3, H, W]`` in [-1, 1]."""
        self.check_images(images)
        h = self.features(images)                 # [B, C, H/8, W/8]
        h = self.dropout(h.amax(dim=(2, 3)))      # [B, C] global max-pool
        return self.head(h)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """Random translation by up to ``augment_shift`` pixels (background -1 pads)."""
        s = self.config.augment_shift
        if s == 0:
            return images
        b, _, h, w = images.shape
        padded = F.pad(images, (s, s, s, s), value=-1.0)
        dy, dx = torch.randint(0, 2 * s + 1, (2, b))
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # [B, 1, H, 1]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # [B, 1, 1, W]
        batch = torch.arange(b)[:, None, None, None]
        return padded.permute(0, 2, 3, 1)[batch, rows, cols].squeeze(1).permute(0, 3, 1, 2)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy; in training mode the images are randomly shifted first."""
        if labels.dtype not in (torch.int64, torch.int32) or labels.shape != images.shape[:1]:
            raise ValueError(f"labels must be integer [B={images.shape[0]}], got "
                             f"{labels.dtype} {tuple(labels.shape)}")
        if self.training:
            images = self.augment(images)
        return F.cross_entropy(self(images), labels.long())

    def training_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The training contract: ``(loss, logs)`` on images ``inputs`` of classes ``labels``."""
        return self.loss(inputs, labels), {}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Predicted class ids ``[B]`` (eval mode, batched)."""
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            return torch.cat([self(images[i:i + batch_size].to(device)).argmax(-1).cpu()
                              for i in range(0, len(images), batch_size)])
        finally:
            self.train(was_training)

    def accuracy(self, images: torch.Tensor, labels: Union[torch.Tensor, list]) -> float:
        """Fraction of ``images`` classified as ``labels``."""
        labels = torch.as_tensor(labels).long().cpu()
        if labels.shape != images.shape[:1]:
            raise ValueError(f"need one label per image: {len(images)} images, "
                             f"labels {tuple(labels.shape)}")
        return (self.predict(images) == labels).float().mean().item()


register_model("digit-classifier", DigitClassifier, DigitClassifierConfig(), weights=Weights(
    local="digit-classifier",
    sha256="1cf760816b342bf741007db04e89d475704859ee057f9d811f38563fb91b43e2",
    metrics={"mnist_heldout_accuracy": 0.983}, source="trained with vargen train (see its README)"),
    recipe=CLASSIFIER)
register_model("digit-classifier-tiny", DigitClassifier, DigitClassifierConfig(widths=(8, 8, 8)),
               recipe=CLASSIFIER)
