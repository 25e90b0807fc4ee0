"""The ``vargen`` command: ``list``, ``sample`` (and the subcommands other modules add)."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

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


# Sampler options the CLIs expose: option name -> argparse keywords (flag: --option-name).
SAMPLING_OPTIONS: Dict[str, dict] = {
    "cfg_scale": dict(type=float),
    "cfg_schedule": dict(choices=("constant", "linear")),
    "num_steps": dict(type=int, help="flow steps per entity (xAR)"),
    "temperature": dict(type=float),
    "top_k": dict(type=int),
    "top_p": dict(type=float),
}


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """``--sampler`` and the common sampler options (unset ones keep the pipeline's defaults)."""
    p.add_argument("--sampler", default=None, help="override the pipeline's sampler")
    for name, kwargs in SAMPLING_OPTIONS.items():
        p.add_argument("--" + name.replace("_", "-"), default=None, **kwargs)


def sampling_options(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in SAMPLING_OPTIONS if getattr(args, k) is not None}


def check_output(path: str) -> None:
    """Fail before sampling on an ``--out`` suffix that neither images nor videos can be written to."""
    from vargen.images import image_format
    from vargen.video import VIDEO_FORMATS
    if Path(path).suffix.lower() not in VIDEO_FORMATS:
        image_format(path)


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
    p = sub.add_parser("sample", help="generate a grid of class-conditional samples")
    p.add_argument("--model", required=True, help="pipeline name, e.g. nar-mnist")
    p.add_argument("--classes", type=int, nargs="+", required=True)
    p.add_argument("--per-class", type=int, default=1, help="samples per listed class")
    p.add_argument("--seed", type=int, default=0)
    add_sampling_arguments(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="samples.png", help="image grid (.png, .jpg, ...) or, for "
                   "video pipelines, a playable clip (.mp4, .gif; several clips form a grid)")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate of a video --out")

    def run(args):
        import vargen
        check_output(args.out)  # a bad --out fails now, not after sampling
        if args.per_class < 1:
            raise ValueError(f"--per-class must be >= 1, got {args.per_class}")
        pipe = vargen.load_pipeline(args.model, device=args.device)
        options = sampling_options(args)
        labels = [c for c in args.classes for _ in range(args.per_class)]
        images = pipe.generate(labels, seed=args.seed, sampler=args.sampler, progress=True,
                               batch_size=args.batch_size, **options)
        # One row per class when several samples per class were asked for.
        kind = write_samples(images, args.out, nrow=args.per_class if args.per_class > 1
                             else min(len(labels), 10), fps=args.fps)
        print(f"wrote {args.out}: {len(labels)} {kind}, "
              f"{pipe.last_stats.get('forward_passes', '?')} forward passes per batch")
    p.set_defaults(run=run)


# Subcommands defined elsewhere, imported when the parser is built: "module:function" adding
# the subcommand's parser, or a module whose @command functions add theirs on import.
PLUGINS = ("vargen.training.cli:add_parser", "vargen.eval.cli")


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
    parser = argparse.ArgumentParser(prog="vargen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS.values():
        add(sub)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (KeyError, ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        from vargen.hub import WeightsError  # here, so that `vargen list` never imports torch
        if isinstance(e, RuntimeError) and not isinstance(e, WeightsError):
            raise
        # User errors: one clear line, not a traceback.
        print(f"vargen {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # ``python -m vargen.cli``: plugins register their commands in the imported ``vargen.cli``,
    # not in this ``__main__`` copy of it, so run that module's main.
    from vargen.cli import main as _main
    sys.exit(_main())
