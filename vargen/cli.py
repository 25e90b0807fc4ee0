"""The ``vargen`` command: ``list``, ``sample`` (and the subcommands other modules add)."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from vargen.checks import cli_number

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
# Numbers are checked as they are parsed (NaN, inf and out-of-range values are usage errors).
SAMPLING_OPTIONS: Dict[str, dict] = {
    "cfg_scale": dict(type=cli_number(minimum=0)),
    "cfg_schedule": dict(choices=("constant", "linear")),
    "num_steps": dict(type=cli_number(integer=True, minimum=1), help="flow steps per entity (xAR) or token"),
    "temperature": dict(type=cli_number(minimum=0)),
    "top_k": dict(type=cli_number(integer=True, minimum=0)),
    "top_p": dict(type=cli_number(above=0, maximum=1)),
}
# The most images `vargen sample` holds and writes as one grid; more: python -m vargen.eval.sample.
MAX_GRID_IMAGES = 1024


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """``--sampler`` and the common sampler options (unset ones keep the pipeline's defaults)."""
    p.add_argument("--sampler", default=None, help="override the pipeline's sampler")
    for name, kwargs in SAMPLING_OPTIONS.items():
        p.add_argument("--" + name.replace("_", "-"), default=None, **kwargs)


def add_speed_arguments(p: argparse.ArgumentParser) -> None:
    """``--dtype`` and ``--compile`` (:mod:`vargen.speed`), applied by :func:`load_fast_pipeline`."""
    p.add_argument("--dtype", default=None, help="cast the pipeline: float32, bfloat16, or float16 "
                   "on CUDA (default: the weights' dtype, float32 for the shipped models)")
    p.add_argument("--compile", action="store_true", help="torch.compile the generator's sampling "
                   "steps (slow first batch; falls back to eager with one warning)")


def load_fast_pipeline(args: argparse.Namespace, device: Any):
    """``args.model`` on ``device`` with the speed options of :func:`add_speed_arguments`."""
    from vargen.pipeline import load_pipeline
    from vargen.speed import resolve_dtype
    dtype = resolve_dtype(args.dtype, device)  # refused before any weights are read
    pipe = load_pipeline(args.model, device=device, torch_dtype=dtype)
    if args.compile:
        pipe.generator.compile_steps()
    return pipe


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
    p.add_argument("--classes", type=cli_number(integer=True), nargs="+", required=True,
                   help="class ids (checked against the model's range once it is loaded)")
    p.add_argument("--per-class", type=cli_number(integer=True, minimum=1), default=1,
                   help="samples per listed class")
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
        count = len(args.classes) * args.per_class
        if count > MAX_GRID_IMAGES:
            raise ValueError(f"--per-class {args.per_class} x {len(args.classes)} classes = {count} images, more "
                             f"than one grid holds ({MAX_GRID_IMAGES}); for many samples use "
                             f"`python -m vargen.eval.sample --model {args.model} --num-samples {count} --out DIR`, "
                             f"which streams them to resumable shards")
        device = checks.device(args.device)
        pipe = load_fast_pipeline(args, device)
        checks.class_labels(args.classes, pipe.generator.num_classes, name=f"--classes ({args.model})")
        options = sampling_options(args)
        pipe.make_sampler(args.sampler, **options)  # a refused option fails before sampling
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


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``prog: error: ...``, exit status 2), as every other
    error of the vargen commands."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _user_error_types() -> tuple:
    """What a user's input can raise, as opposed to a bug: bad values, missing / unreadable /
    unwritable / corrupt files, refused or unsafe weights, NaN losses."""
    import pickle
    import zipfile
    types = [KeyError, ValueError, TypeError, OSError, EOFError, ArithmeticError, zipfile.BadZipFile,
             pickle.UnpicklingError]
    for module, name in (("vargen.hub", "WeightsError"), ("safetensors", "SafetensorError")):
        loaded = sys.modules.get(module)  # never imported here: `vargen list` stays free of torch
        if loaded is not None and hasattr(loaded, name):
            types.append(getattr(loaded, name))
    return tuple(types)


def error_message(e: BaseException) -> str:
    """An exception as one line (a KeyError's message without its quotes)."""
    text = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(e).__name__


def _close_progress_bars() -> None:
    """End every open tqdm bar's line, so that an error is never printed glued onto it."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def run_command(parser: argparse.ArgumentParser, argv: Optional[List[str]],
                run: Callable[[argparse.Namespace], Any]) -> int:
    """The shared entry of every vargen command line: parse ``argv`` and ``run(args)``, returning
    the exit status. A usage error or a user error is one line ``prog: error: ...`` on stderr and
    status 2; anything else (a bug) propagates with its traceback."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (2) and --help (0): a status, as every other outcome
        return e.code if isinstance(e.code, int) else 2
    command = getattr(args, "command", None)
    prog = f"{parser.prog} {command}" if command else parser.prog
    try:
        run(args)
    except Exception as e:  # noqa: BLE001 (filtered right below)
        if not isinstance(e, _user_error_types()):
            raise
        _close_progress_bars()
        sys.stderr.flush()
        print(f"{prog}: error: {error_message(e)}", file=sys.stderr)
        return 2
    return 0


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
