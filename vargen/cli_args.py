"""Argument parsing shared by every vargen command line (``vargen ...``, ``python -m
vargen.eval.sample``, ``vargen train``): one-line usage errors, the exit-status contract of
:func:`run_command`, and the sampler / speed options. Ground floor: imports nothing of vargen but
:mod:`vargen.checks`, so any layer's command line may use it.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Dict, List, Optional

from vargen.checks import cli_number

# Sampler options the CLIs expose: option name -> argparse keywords (flag: --option-name).
# Numbers are checked as they are parsed (NaN, inf and out-of-range values are usage errors).
SAMPLING_OPTIONS: Dict[str, dict] = {
    "cfg_scale": dict(type=cli_number(minimum=0)),
    "cfg_schedule": dict(choices=("constant", "linear", "pow-cosine")),
    "cfg_power": dict(type=cli_number(minimum=0), help="exponent of the pow-cosine CFG schedule (RAR)"),
    "num_steps": dict(type=cli_number(integer=True, minimum=1, maximum=10000),
                      help="flow steps per entity (xAR) or token (at most 10000)"),
    "temperature": dict(type=cli_number(minimum=0)),
    "top_k": dict(type=cli_number(integer=True, minimum=0)),
    "top_p": dict(type=cli_number(above=0, maximum=1)),
    "solver": dict(choices=("ddpm", "ddim"), help="the MAR head's steps: ancestral DDPM (as released) or "
                   "deterministic DDIM"),
}


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """``--sampler`` and the common sampler options (unset ones keep the pipeline's defaults)."""
    p.add_argument("--sampler", default=None, help="override the pipeline's sampler")
    add_sampler_options(p)


def add_sampler_options(p: argparse.ArgumentParser, skip: tuple = ()) -> None:
    """The common sampler options, ``--cfg-scale`` ... ``--solver`` (read back by :func:`sampling_options`),
    but those named in ``skip`` (a script that sweeps one defines it itself)."""
    for name, kwargs in SAMPLING_OPTIONS.items():
        if name in skip:
            continue
        p.add_argument("--" + name.replace("_", "-"), default=None, **kwargs)


def add_speed_arguments(p: argparse.ArgumentParser) -> None:
    """``--dtype`` and ``--compile`` (:mod:`vargen.speed`), applied by
    :func:`vargen.speed.load_fast_pipeline`."""
    p.add_argument("--dtype", default=None, help="cast the pipeline: float32, bfloat16, or float16 "
                   "on CUDA (default: the weights' dtype, float32 for the shipped models)")
    p.add_argument("--compile", action="store_true", help="torch.compile the generator's sampling "
                   "steps (slow first batch; falls back to eager with one warning)")


def sampling_options(args: argparse.Namespace, skip: tuple = ()) -> dict:
    return {k: getattr(args, k) for k in SAMPLING_OPTIONS if k not in skip and getattr(args, k) is not None}


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
    types = [KeyError, ValueError, TypeError, OSError, EOFError, ArithmeticError, MemoryError,
             zipfile.BadZipFile, pickle.UnpicklingError]
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


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def run_command(parser: argparse.ArgumentParser, argv: Optional[List[str]],
                run: Callable[[argparse.Namespace], Any]) -> int:
    """The shared entry of every vargen command line: parse ``argv`` and ``run(args)``, returning
    the exit status. A usage error or a user error is one line ``prog: error: ...`` on stderr and
    status 2; Ctrl-C is one line ``prog: interrupted`` (``; resume with the same command`` where
    the parser sets ``resumable=True``) and status 130; anything else (a bug) propagates with its
    traceback."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (2) and --help (0): a status, as every other outcome
        return e.code if isinstance(e.code, int) else 2
    command = getattr(args, "command", None)
    prog = f"{parser.prog} {command}" if command else parser.prog
    try:
        run(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's status for SIGINT; writes are atomic
        _close_progress_bars()
        sys.stderr.flush()
        again = "; resume with the same command" if getattr(args, "resumable", False) else ""
        print(f"{prog}: interrupted{again}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `vargen list | head`: the reader left; stop quietly, as cat does
        _silence_stdout()
        return 141  # 128 + SIGPIPE, the status a shell reports for a command its pipe closed
    except Exception as e:  # noqa: BLE001 (filtered right below)
        if not isinstance(e, _user_error_types()):
            raise
        _close_progress_bars()
        sys.stderr.flush()
        print(f"{prog}: error: {error_message(e)}", file=sys.stderr)
        return 2
    return 0
