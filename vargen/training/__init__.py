"""Training: one loop for every trainable model (tokenizers, generators, classifiers).

    vargen train --model llamagen-tiny --data mnist --tokenizer runs/vq/final \\
        --steps 2000 --batch-size 64 --out runs/llamagen-mnist
    torchrun --nproc_per_node 2 -m vargen.train --model ... (same options)

Every trainable model has ``training_loss(inputs, labels) -> (loss, logs)`` (tokenizers ignore
the labels) and declares what it trains on (``trains_on``: ``"images"`` or ``"tokens"``); the
loop calls nothing else and never asks what kind of model it holds. Unset optimiser options come
from the registry entry's :class:`Recipe` (plain data in :mod:`vargen.recipes`, named by
``register_model(..., recipe=...)``). A model may list held-out metrics in ``card_metrics``;
:func:`heldout_metrics` measures them by what the model is (classifier, image or video
tokenizer), on the training side, and they go into the exported model card.

    config.py      TrainConfig, resume keys, the reproducing command line
    data.py        GlobalBatchSampler, the data a model trains on, tokenizer loading
    checkpoint.py  atomic checkpoints, resume checks, RNG states, log truncation
    loop.py        train(), lr schedule, EMA
    heldout.py     heldout_metrics(model, data): the model card's held-out numbers
    card.py        the exported model card
    classifier.py  train_classifier(): the digit classifier evaluation judges digits with
    cli.py         ``vargen train``

Attributes are imported on first use, so ``import vargen.training`` needs no torch.
"""
from vargen.lazy import lazy_exports

_EXPORTS = {
    ".config": ("TrainConfig", "RESUME_KEYS", "command_line"),
    "vargen.recipes": ("Recipe",),
    ".data": ("GlobalBatchSampler", "load_data"),
    ".checkpoint": ("CHECKPOINT_NAME", "LOG_NAME", "CheckpointError", "load_checkpoint"),
    ".loop": ("train", "lr_at", "update_ema"),
    ".card": ("model_card",),
    ".heldout": ("heldout_metrics",),
    ".classifier": ("train_classifier",),
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
