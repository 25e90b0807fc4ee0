"""``vargen demo``: a web page (Gradio) to try pipelines side by side on the same class, seed and
sampler settings, with forward passes, seconds and the command that reproduces each result.

    pip install -e ".[demo]" && vargen demo                 # http://127.0.0.1:7860, the shipped *-mnist
    vargen demo --pipelines "nar-*" --port 8000

Offline by default: the pipelines offered are those whose weights are here (shipped in
``weights/`` or already in the Hugging Face cache). The page only sends settings; the server
never opens a path the client names, and every result is a fresh file in a temporary folder.
Requests are queued (one at a time, at most ``--max-queue`` waiting) and each carries its own
settings, so a request never runs another user's. Bad input gets the CLI's message, in the page.

Imports gradio and torch only when the page is built, so ``vargen --help`` stays light.
"""
from __future__ import annotations

import argparse
import fnmatch
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from vargen import checks
from vargen.cli_args import SAMPLING_OPTIONS

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_PATTERN = "*-mnist"
FIRST_SHOWN = ("nar-mnist", "llamagen-mnist")  # checked when the page opens: NAR against its raster baseline
MAX_STEPS = 1000  # a flow sampler's steps per entity beyond this is refused (minutes per image here)


@dataclass
class Result:
    """One pipeline's answer to one request."""

    pipeline: str
    files: List[str] = field(default_factory=list)  # PNG (images) or MP4 (videos) on the server
    forward_passes: Optional[int] = None
    seconds: float = 0.0
    command: str = ""
    python: str = ""
    error: str = ""


def weights_here(name: str) -> bool:
    """Whether a registered model's weights are on this machine (shipped, or in the Hub cache)."""
    from vargen.registry import get_entry
    weights = get_entry(name).weights
    if weights.local:
        import vargen.weights
        return (Path(vargen.weights.__file__).parent / weights.local / "model.safetensors").is_file()
    if not weights.hub_repo:
        return False
    from huggingface_hub import try_to_load_from_cache
    return isinstance(try_to_load_from_cache(weights.hub_repo, weights.filename), str)


def offered_pipelines(pattern: str = DEFAULT_PATTERN) -> List[str]:
    """Registered pipelines matching ``pattern`` whose tokenizer and network weights are here."""
    from vargen.registry import get_pipeline_spec, list_pipelines
    names = []
    for name in list_pipelines(pattern):
        spec = get_pipeline_spec(name)
        if weights_here(spec.tokenizer) and weights_here(spec.generator):
            names.append(name)
    return names


class Demo:
    """The server side: loaded pipelines (each once) and one request at a time per pipeline."""

    def __init__(self, pipelines: Sequence[str], device: str = "cpu", out_dir: Optional[str] = None):
        if not pipelines:
            raise ValueError("no pipeline to offer: none matches, or none has its weights here "
                             "(vargen list shows them; the shipped ones are *-mnist)")
        self.pipelines = list(pipelines)
        self.device = checks.device(device)
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="vargen-demo-"))
        self._loaded: Dict[str, Any] = {}
        self._locks = {name: threading.Lock() for name in self.pipelines}

    def pipeline(self, name: str):
        if name not in self._loaded:
            from vargen.pipeline import load_pipeline
            self._loaded[name] = load_pipeline(name, device=self.device)
        return self._loaded[name]

    def option_fields(self) -> List[str]:
        """The CLI's sampler options that at least one offered pipeline's sampler declares."""
        from vargen.registry import get_pipeline_spec
        from vargen.samplers import SAMPLERS
        declared = set()
        for name in self.pipelines:
            declared |= set(SAMPLERS[get_pipeline_spec(name).sampler].option_names())
        return [o for o in SAMPLING_OPTIONS if o in declared]

    def check(self, names: Sequence[str], class_label: Any, seed: Any, options: Dict[str, Any]) -> Tuple[int, int, dict]:
        """Everything refused before any work, with the CLI's wording."""
        unknown = [n for n in names if n not in self.pipelines]
        if not names or unknown:
            raise ValueError(f"choose pipelines among {self.pipelines}" + (f"; not offered: {unknown}" if unknown else ""))
        label = checks.number("class label", class_label, minimum=0, integer=True)
        seed = checks.seed(seed)
        checked = {}
        for option, value in options.items():
            if value is None or value == "":
                continue
            parse = SAMPLING_OPTIONS[option].get("type")
            if parse is None:  # a choice (cfg_schedule)
                choices = SAMPLING_OPTIONS[option]["choices"]
                if value not in choices:
                    raise ValueError(f"--{option.replace('_', '-')} must be one of {choices}, got {value!r}")
                checked[option] = value
                continue
            try:
                checked[option] = parse(str(value))
            except argparse.ArgumentTypeError as e:
                raise ValueError(f"--{option.replace('_', '-')}: {e}") from None
        if checked.get("num_steps", 0) > MAX_STEPS:
            raise ValueError(f"--num-steps {checked['num_steps']} is more than the demo runs ({MAX_STEPS}); "
                             f"use vargen sample for long runs")
        return label, seed, checked

    def run(self, names: Sequence[str], class_label: Any, seed: Any, sampler: Optional[str] = None,
            options: Optional[Dict[str, Any]] = None, progress=None) -> List[Result]:
        label, seed, options = self.check(names, class_label, seed, dict(options or {}))
        results = []
        for i, name in enumerate(names):
            if progress is not None:
                progress(i / len(names), desc=f"{name}")
            results.append(self._one(name, label, seed, sampler, options))
        return results

    def _one(self, name: str, label: int, seed: int, sampler: Optional[str], options: Dict[str, Any]) -> Result:
        import torch
        from vargen.registry import get_pipeline_spec
        from vargen.samplers import SAMPLERS
        result = Result(name)
        sampler_name = sampler or get_pipeline_spec(name).sampler
        accepted = set(SAMPLERS[sampler_name].option_names()) if sampler_name in SAMPLERS else set()
        own = {k: v for k, v in options.items() if k in accepted}  # what this pipeline's sampler declares
        try:
            pipe = self.pipeline(name)
            checks.class_labels([label], pipe.transformer.num_classes, name=f"class label ({name})")
            with self._locks[name]:
                start = time.perf_counter()
                with torch.no_grad():
                    pixels = pipe.generate([label], seed=seed, sampler=sampler, progress=False, **own)
                result.seconds = time.perf_counter() - start
                result.forward_passes = pipe.last_stats.get("forward_passes")
        except (ValueError, TypeError, KeyError, RuntimeError) as e:
            from vargen.cli_args import error_message
            result.error = error_message(e)
            return result
        result.files = [self._write(name, label, seed, pixels)]
        flags = "".join(f" --{k.replace('_', '-')} {v}" for k, v in own.items())
        sampler_flag = f" --sampler {sampler}" if sampler else ""
        suffix = Path(result.files[0]).suffix
        result.command = (f"vargen sample --model {name} --classes {label} --seed {seed}{sampler_flag}{flags} "
                          f"--out {name}{suffix}")
        kwargs = "".join(f", {k}={v!r}" for k, v in {**({"sampler": sampler} if sampler else {}), **own}.items())
        result.python = f"vargen.load_pipeline({name!r}).generate([{label}], seed={seed}{kwargs})"
        return result

    def _write(self, name: str, label: int, seed: int, pixels) -> str:
        folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.out_dir))
        if pixels.dim() == 5:
            from vargen.video import write_video
            path = folder / f"{name}-class{label}-seed{seed}.mp4"
            write_video(pixels, str(path), fps=8.0, nrow=1)
        else:
            from vargen.images import save_grid
            path = folder / f"{name}-class{label}-seed{seed}.png"
            save_grid(pixels, str(path), nrow=1)
        return str(path)


def details(results: Sequence[Result]) -> str:
    """The per-pipeline report under the gallery (markdown)."""
    lines = []
    for r in results:
        if r.error:
            lines.append(f"**{r.pipeline}**: error: {r.error}")
            continue
        lines.append(f"**{r.pipeline}**: {r.forward_passes} forward passes, {r.seconds:.2f} s\n\n"
                     f"```\n{r.command}\n{r.python}\n```")
    return "\n\n".join(lines)


def build(demo: Demo, max_queue: int = 16):
    """The Gradio page over ``demo``."""
    import gradio as gr
    from vargen.samplers import SAMPLERS

    fields = demo.option_fields()
    default = [n for n in FIRST_SHOWN if n in demo.pipelines] or demo.pipelines[:2]
    with gr.Blocks(title="vargen demo") as page:
        gr.Markdown("# vargen: autoregressive generators side by side\nSame class, seed and settings "
                    "for every pipeline chosen; each result says its forward passes, seconds and the "
                    "command that reproduces it.")
        with gr.Row():
            chosen = gr.CheckboxGroup(demo.pipelines, value=default, label="pipelines", elem_id="pipelines")
        with gr.Row():
            class_label = gr.Number(value=7, precision=0, label="class label", elem_id="class-label")
            seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
            sampler = gr.Dropdown(["(pipeline default)", *sorted(SAMPLERS)], value="(pipeline default)",
                                  label="sampler", elem_id="sampler")
        with gr.Accordion("sampler options (blank: the pipeline's default; each pipeline takes the "
                          "ones its sampler declares)", open=False):
            with gr.Row():
                boxes = [gr.Textbox(value="", label=f.replace("_", " "), elem_id=f"opt-{f}") for f in fields]
        with gr.Row():
            go = gr.Button("Generate", variant="primary", elem_id="generate")
            stop = gr.Button("Stop", elem_id="stop")
        gallery = gr.Gallery(label="results", columns=4, elem_id="results")
        report = gr.Markdown(elem_id="report")
        downloads = gr.File(label="downloads (PNG / MP4)", file_count="multiple", elem_id="downloads")

        def generate(names, label, seed_value, sampler_value, *values, progress=gr.Progress()):
            options = dict(zip(fields, values))
            try:
                results = demo.run(names, label, seed_value,
                                   None if sampler_value == "(pipeline default)" else sampler_value,
                                   options, progress=progress)
            except (ValueError, TypeError) as e:
                from vargen.cli_args import error_message
                raise gr.Error(error_message(e))
            shown = [(r.files[0], r.pipeline) for r in results if r.files]
            return shown, details(results), [f for r in results for f in r.files] or None

        event = go.click(generate, [chosen, class_label, seed, sampler, *boxes], [gallery, report, downloads],
                         api_name="generate")
        stop.click(None, cancels=[event])
    page.queue(max_size=max_queue, default_concurrency_limit=1)
    return page


def serve(pipelines: Sequence[str], host: str = "127.0.0.1", port: int = 7860, device: str = "cpu",
          max_queue: int = 16, block: bool = True):
    """Build and launch the page; returns the Gradio app (``block=False``: in a background thread)."""
    if host not in LOCAL_HOSTS:
        warnings.warn(f"vargen demo is listening on {host}: anyone who can reach this address can "
                      f"run generations on this machine", RuntimeWarning, stacklevel=2)
    page = build(Demo(pipelines, device), max_queue)
    page.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True,
                ssr_mode=False, show_error=True)
    return page


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="a web page to try pipelines side by side (pip install -e \".[demo]\")")
    p.add_argument("--pipelines", default=DEFAULT_PATTERN, help="glob over pipeline names (default: the shipped *-mnist)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=checks.cli_number(integer=True, minimum=1, maximum=65535), default=7860)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-queue", type=checks.cli_number(integer=True, minimum=1), default=16,
                   help="requests waiting at most (more are turned away)")

    def run(args):
        import os
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls
        try:
            import gradio  # noqa: F401
        except ModuleNotFoundError:
            raise ValueError('vargen demo needs Gradio: pip install -e ".[demo]"') from None
        names = [n for n in offered_pipelines("*") if fnmatch.fnmatch(n, args.pipelines)]
        print(f"vargen demo: {len(names)} pipelines ({', '.join(names)}) on http://{args.host}:{args.port}")
        serve(names, args.host, args.port, args.device, args.max_queue)
    p.set_defaults(run=run)
