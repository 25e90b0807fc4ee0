"""``vargen train``: the command-line face of :func:`vargen.training.train`.

Imports no torch until the command runs, so ``vargen --help`` stays light.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import os
from typing import Any, Tuple

from vargen.checks import MAX_IMAGE_SIZE, cli_number

from .config import MAX_BATCH_SIZE, TrainConfig

COUNT = cli_number(integer=True, minimum=0)
POSITIVE = cli_number(integer=True, minimum=1)
RATE = cli_number(minimum=0)


def _parse_override(text: str) -> Tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--override expects key=value, got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value  # a bare string ("nan" and "inf" among them: checked below)
    values = parsed if isinstance(parsed, (tuple, list)) else (parsed,)
    for x in values:
        try:
            finite = math.isfinite(float(x)) if isinstance(x, (str, float)) else True
        except ValueError:
            finite = True  # a real string
        if not finite:
            raise argparse.ArgumentTypeError(f"--override {key}={value}: {x!r} is not a finite number")
    return key, parsed


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig(model="", out="")
    p.add_argument("--model", required=True, help="registered model name (vargen list)")
    p.add_argument("--override", type=_parse_override, action="append", default=[],
                   metavar="KEY=VALUE", help="model config field, e.g. class_dropout_prob=0")
    p.add_argument("--data", default=d.data, help="dataset (mnist, mnist:heldout), image folder, "
                   "or token .safetensors file")
    p.add_argument("--split", default=d.split)
    p.add_argument("--image-size", type=cli_number(integer=True, minimum=1, maximum=MAX_IMAGE_SIZE),
                   default=d.image_size)
    p.add_argument("--tokenizer", default=None, help="tokenizer for generators: registered name "
                   "with weights or save_pretrained folder")
    p.add_argument("--captions", default=None, help="text-to-image: caption the labels with a caption set "
                   "(mnist-templates)")
    p.add_argument("--text-encoder", default=None, help="text-to-image: the captions' encoder (a shipped "
                   "name such as t2i-mnist-t5, a folder or a Hub repo id); features cached once")
    p.add_argument("--steps", type=COUNT, default=d.steps)
    p.add_argument("--batch-size", type=cli_number(integer=True, minimum=1, maximum=MAX_BATCH_SIZE),
                   default=d.batch_size, help="global batch size")
    p.add_argument("--lr", type=RATE, default=None, help="default: the model's recipe")
    p.add_argument("--weight-decay", type=RATE, default=None)
    p.add_argument("--betas", type=cli_number(minimum=0, below=1), nargs=2, default=None)
    p.add_argument("--grad-clip", type=RATE, default=None, help="0 disables")
    p.add_argument("--ema-decay", type=cli_number(minimum=0, below=1), default=None, help="0 disables EMA")
    p.add_argument("--warmup-steps", type=COUNT, default=d.warmup_steps)
    p.add_argument("--schedule", choices=("constant", "cosine"), default=None,
                   help="default: the model's recipe")
    p.add_argument("--min-lr", type=RATE, default=None)
    p.add_argument("--seed", type=COUNT, default=d.seed)
    p.add_argument("--ckpt-every", type=POSITIVE, default=d.ckpt_every)
    p.add_argument("--keep-every", type=COUNT, default=d.keep_every,
                   help="also keep checkpoint.pt as ckpt-STEP.pt every this many steps (training curves)")
    p.add_argument("--log-every", type=POSITIVE, default=d.log_every)
    p.add_argument("--precision", choices=("bf16", "fp32"), default=d.precision)
    p.add_argument("--device", default=None)
    p.add_argument("--no-deterministic", dest="deterministic", action="store_false", default=None)
    p.add_argument("--cache-dir", default=None, help="token cache (default ~/.cache/vargen/tokens)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--strategy", choices=("ddp", "fsdp"), default=d.strategy, help="under torchrun: DDP "
                   "replicas, or FSDP2 shards with sharded checkpoints (docs/scale-out.md)")
    p.add_argument("--accum", type=POSITIVE, default=d.accum, help="micro-batches per process and step "
                   "(the global batch stays --batch-size)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations in backward")
    p.add_argument("--peak-tflops", type=cli_number(minimum=0, below=1e6), default=None,
                   help="peak TFLOP/s of one device, for MFU in the log (default: known CUDA devices)")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, log.jsonl, final/")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"overrides"}
    values = {k: v for k, v in vars(args).items() if k in names}
    return TrainConfig(overrides=dict(args.override), **values)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a registered model (resumes from OUT/checkpoint.pt)")
    add_arguments(p)

    def run(args):
        from vargen import checks
        checks.output_folder(args.out, "--out")  # before any data is read or tokenized
        from .loop import train
        result = train(config_from_args(args))
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result))
    p.set_defaults(run=run, resumable=True)  # Ctrl-C: a rerun continues from OUT/checkpoint.pt
