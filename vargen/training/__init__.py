"""Training: one loop for every trainable model (tokenizers, generators, classifiers).

    vargen train --model llamagen-tiny --data mnist --tokenizer runs/vq/final \\
        --steps 2000 --batch-size 64 --out runs/llamagen-mnist
    torchrun --nproc_per_node 2 -m vargen.train --model ... (same options)

Every trainable model has ``training_loss(inputs, labels) -> (loss, logs)`` (tokenizers ignore
the labels) and declares what it trains on (``trains_on``: ``"images"`` or ``"tokens"``); the
loop calls nothing else and never asks what kind of model it holds. Unset optimiser options come
from the registry entry's :class:`Recipe` (``register_model(..., recipe=...)``). A model may
define ``heldout_metrics(data) -> dict``; its result goes into the exported model card.

    config.py      TrainConfig, resume keys, the reproducing command line
    recipes.py     Recipe and the official recipes (LLAMAGEN, NAR, LARP_AR, XAR, ...)
    data.py        GlobalBatchSampler, the data a model trains on, tokenizer loading
    checkpoint.py  atomic checkpoints, resume checks, RNG states, log truncation
    loop.py        train(), lr schedule, EMA
    card.py        the exported model card
    cli.py         ``vargen train``

Attributes are imported on first use, so ``import vargen.training.recipes`` needs no torch.
"""
from vargen.lazy import lazy_exports

_EXPORTS = {
    ".config": ("TrainConfig", "RESUME_KEYS", "command_line"),
    ".recipes": ("Recipe",),
    ".data": ("GlobalBatchSampler", "load_data", "load_tokenizer"),
    ".checkpoint": ("CHECKPOINT_NAME", "LOG_NAME", "CheckpointError", "load_checkpoint"),
    ".loop": ("train", "lr_at", "update_ema"),
    ".card": ("model_card",),
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
