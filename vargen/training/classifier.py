"""Training the digit classifier that evaluation uses to judge generated digits.

:class:`vargen.classifier.DigitClassifier` is a component like a tokenizer; this helper is the
training side's one-call recipe for it (``vargen train --model digit-classifier --data mnist``
does the same from the shell).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Union

from .config import TrainConfig
from .loop import train


def train_classifier(out: Union[str, Path], steps: int = 1500, batch_size: int = 64,
                     lr: float = 1e-3, seed: int = 0, **options: Any) -> Dict[str, Any]:
    """Train ``digit-classifier`` on MNIST's train split; returns the trainer's result
    (with ``mnist_heldout_accuracy``). ``options`` are further :class:`TrainConfig` fields."""
    return train(TrainConfig(model="digit-classifier", data="mnist", steps=steps,
                             batch_size=batch_size, lr=lr, seed=seed, out=str(out), **options))
