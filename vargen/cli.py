"""The ``vargen`` command: ``list``, ``sample`` (and the subcommands other modules add)."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from vargen.checks import cli_number
from vargen.cli_args import (ArgumentParser, add_sampling_arguments, add_speed_arguments, run_command,
                             sampling_options)

COMMANDS: Dict[str, Callable[[argparse._SubParsersAction], None]] = {}


def command(name: str):
    """Register a function that adds subcommand ``name`` to the parser."""
    def wrap(fn):
        COMMANDS[name] = fn
        return fn
    return wrap


@command("list")
def _add_list(sub):
    p = sub.add_parser("list", help="list registered models and pipelines")
    p.add_argument("pattern", nargs="?", default="*")

    def run(args):
        from vargen.registry import list_models, list_pipelines, model_summary
        for name in list_models(args.pattern):  # from the lazy table: no family is imported
            kind, location = model_summary(name)
            where = f"  weights: {location}" if location else ""
            print(f"{name:24s} {kind:10s}{where}")
        for name in list_pipelines(args.pattern):
            print(f"{name:24s} pipeline")
    p.set_defaults(run=run)


# The most images `vargen sample` holds and writes as one grid; more: python -m vargen.eval.sample.
MAX_GRID_IMAGES = 1024


def check_output(path: str) -> None:
    """Fail before sampling on an ``--out`` suffix that neither images nor videos can be written to."""
    from vargen.images import image_format
    from vargen.video import VIDEO_FORMATS
    if Path(path).suffix.lower() not in VIDEO_FORMATS:
        image_format(path)


def check_output_kind(path: str, is_video: bool) -> None:
    """Fail before sampling on an ``--out`` of the wrong kind for the pipeline (write_samples' checks)."""
    from vargen.video import VIDEO_FORMATS
    suffix = Path(path).suffix.lower()
    if is_video and suffix not in VIDEO_FORMATS:
        raise ValueError(f"this pipeline generates videos: write them to a .mp4 or .gif, not {path}")
    if not is_video and suffix == ".mp4":
        raise ValueError(f"this pipeline generates images: write them to a .png / .jpg grid, not {path}")


def write_samples(samples, path: str, nrow: int, fps: float = 8.0) -> str:
    """Images ``[B, 3, H, W]`` as one grid image; videos ``[B, 3, T, H, W]`` as one clip (.mp4 /
    .gif, a grid of clips when B > 1). Returns "images" or "videos"."""
    from vargen.images import save_grid
    from vargen.video import VIDEO_FORMATS, write_video
    is_video_file = Path(path).suffix.lower() in VIDEO_FORMATS
    if samples.dim() == 5:
        if not is_video_file:
            raise ValueError(f"this pipeline generates videos: write them to a .mp4 or .gif, not {path}")
        write_video(samples, path, fps=fps, nrow=nrow)
        return "videos"
    if Path(path).suffix.lower() == ".mp4":
        raise ValueError(f"this pipeline generates images: write them to a .png / .jpg grid, not {path}")
    save_grid(samples, path, nrow=nrow)  # .gif: a still grid image
    return "images"


@command("sample")
def _add_sample(sub):
    p = sub.add_parser("sample", help="generate a grid of class- or text-conditional samples")
    p.add_argument("--model", required=True, help="pipeline name, e.g. nar-mnist")
    condition = p.add_mutually_exclusive_group(required=True)
    condition.add_argument("--classes", type=cli_number(integer=True), nargs="+",
                           help="class ids (checked against the model's range once it is loaded)")
    condition.add_argument("--prompt", nargs="+", help="prompts of a text-to-image pipeline "
                           "(quote each: --prompt \"a red bicycle\" \"a cat\")")
    p.add_argument("--negative-prompt", default=None, help="text-to-image: the unconditional prompt of CFG")
    p.add_argument("--no-clean-captions", action="store_true", help="text-to-image: feed prompts to the text "
                   "encoder only lower-cased, not through the release's caption cleaning (vargen.text)")
    p.add_argument("--per-class", type=cli_number(integer=True, minimum=1), default=1,
                   help="samples per listed class (or prompt)")
    p.add_argument("--seed", type=cli_number(integer=True, minimum=0), default=0)
    add_sampling_arguments(p)
    add_speed_arguments(p)
    p.add_argument("--batch-size", type=cli_number(integer=True, minimum=1), default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="samples.png", help="image grid (.png, .jpg, ...) or, for "
                   "video pipelines, a playable clip (.mp4, .gif; several clips form a grid)")
    p.add_argument("--fps", type=cli_number(above=0), default=8.0, help="frame rate of a video --out")

    def run(args):
        from vargen import checks
        # Everything that can be refused is refused before the pipeline loads or sampling starts.
        check_output(args.out)
        checks.output_file(args.out, "--out")
        if args.no_clean_captions and args.prompt is None:
            raise ValueError("--no-clean-captions: only text-to-image prompts are cleaned; pass --prompt")
        conditions = args.classes if args.prompt is None else args.prompt
        count = len(conditions) * args.per_class
        if count > MAX_GRID_IMAGES:
            raise ValueError(f"--per-class {args.per_class} x {len(conditions)} conditions = {count} images, more "
                             f"than one grid holds ({MAX_GRID_IMAGES}); for many samples use "
                             f"`python -m vargen.eval.sample --model {args.model} --num-samples {count} --out DIR`, "
                             f"which streams them to resumable shards")
        device = checks.device(args.device)
        from vargen.speed import load_fast_pipeline
        pipe = load_fast_pipeline(args.model, device, args.dtype, args.compile)
        if args.prompt is None:
            checks.class_labels(args.classes, pipe.transformer.num_classes, name=f"--classes ({args.model})")
        elif getattr(pipe, "text_encoder", None) is None:
            raise ValueError(f"--prompt: {args.model} is class-conditional; pass --classes")
        if args.no_clean_captions:
            pipe.text_encoder.clean_captions = False
        check_output_kind(args.out, pipe.is_video)
        options = sampling_options(args)
        pipe.make_sampler(args.sampler, **options)  # a refused option fails before sampling
        if args.prompt is not None:
            options.update(prompt=[c for c in args.prompt for _ in range(args.per_class)],
                           negative_prompt=args.negative_prompt)
        labels = [c for c in conditions for _ in range(args.per_class)]
        images = pipe.generate(None if args.prompt else labels, seed=args.seed, sampler=args.sampler,
                               progress=True, batch_size=args.batch_size, **options)
        # One row per class when several samples per class were asked for.
        kind = write_samples(images, args.out, nrow=args.per_class if args.per_class > 1
                             else min(len(labels), 10), fps=args.fps)
        print(f"wrote {args.out}: {len(labels)} {kind}, "
              f"{pipe.last_stats.get('forward_passes', '?')} forward passes per batch")
    p.set_defaults(run=run)


# Subcommands defined elsewhere, imported when the parser is built: "module:function" adding
# the subcommand's parser, or a module whose @command functions add theirs on import.
PLUGINS = ("vargen.training.cli:add_parser", "vargen.eval.cli", "vargen.demo:add_parser")


def _load_plugin_commands() -> None:
    for spec in PLUGINS:
        module, _, function = spec.partition(":")
        try:
            loaded = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        if function:
            COMMANDS.setdefault(spec, getattr(loaded, function))


def main(argv: Optional[List[str]] = None) -> int:
    _load_plugin_commands()
    parser = ArgumentParser(prog="vargen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS.values():
        add(sub)
    return run_command(parser, argv, lambda args: args.run(args))


if __name__ == "__main__":
    # ``python -m vargen.cli``: plugins register their commands in the imported ``vargen.cli``,
    # not in this ``__main__`` copy of it, so run that module's main.
    from vargen.cli import main as _main
    sys.exit(_main())
