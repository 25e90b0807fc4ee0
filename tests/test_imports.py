"""The import graph, held to the layer table of ../shared/DESIGN.md: imports only point down
(function-level imports, ``_EXPORTS`` lazy tables and the zoo's module strings included), no
cycle at module or package level, a registry that imports no family, name listing that needs
neither torch nor any family, and a shipped pipeline that loads only its own family."""
from __future__ import annotations

import ast
import fnmatch
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

import vargen
from vargen import zoo

ROOT = Path(__file__).resolve().parents[1]
# setup.cfg's package_dir: folder -> package
PACKAGES = {"vargen": "vargen", "models": "vargen.models", "samplers": "vargen.samplers",
            "eval": "vargen.eval"}

# The layers, lowest first: a module may import its own layer and the layers below it. Patterns
# are fnmatch globs over module names; the first layer with a matching pattern wins.
LAYERS: List[Tuple[str, Tuple[str, ...]]] = [
    ("ground", ("vargen.checks", "vargen.hub", "vargen.loaders", "vargen.atomic", "vargen.seeding", "vargen.images", "vargen.video",
                "vargen.lazy", "vargen.recipes", "vargen.zoo", "vargen.cli_args", "vargen.nn", "vargen.nn.*")),
    ("registry", ("vargen.registry",)),
    ("components", ("vargen.tokenizers", "vargen.tokenizers.*", "vargen.models", "vargen.models.*",
                    "vargen.samplers", "vargen.samplers.*", "vargen.data", "vargen.data.*",
                    "vargen.classifier", "vargen.text", "vargen.text_cache")),
    ("pipeline", ("vargen.pipeline", "vargen.speed")),
    ("eval", ("vargen.eval", "vargen.eval.fvd", "vargen.eval.i3d", "vargen.eval.inception",
              "vargen.eval.metrics", "vargen.eval.metrics_*", "vargen.eval.features", "vargen.eval.recon",
              "vargen.eval.sample", "vargen.eval.stats", "vargen.eval.*")),
    ("training", ("vargen.training", "vargen.training.*")),
    ("cli", ("vargen.cli", "vargen.eval.cli", "vargen.training.cli", "vargen.train", "vargen.demo", "vargen")),
]
# Inside the components layer, kinds do not import each other: a tokenizer never imports a
# generator, a sampler never a model, data never either.
COMPONENT_KINDS = {"vargen.tokenizers": "tokenizers", "vargen.models": "models",
                   "vargen.samplers": "samplers", "vargen.data": "data", "vargen.classifier": "classifier"}
# Modules of the models package that are shared parts, not families (any family may import them).
SHARED_MODEL_PARTS = {"vargen.models", "vargen.models.base", "vargen.models.neighbors", "vargen.models.entities",
                      "vargen.models.diffloss"}


def layer_of(module: str) -> int:
    for rank, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            # a CLI module inside a package (vargen.eval.cli) is the CLI's, not its package's
            later = [r for r, (_, ps) in enumerate(LAYERS) if module in ps]
            return later[-1] if later else rank
    raise AssertionError(f"{module} is in no layer of tests/test_imports.py LAYERS: add it")


def kind_of(module: str) -> str:
    for prefix, kind in COMPONENT_KINDS.items():
        if module == prefix or module.startswith(prefix + "."):
            return kind
    return ""


def module_files() -> Dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _resolve(name: str, is_package: bool, base: str, level: int) -> str:
    if not level:
        return base
    anchor = name.split(".")
    anchor = anchor if is_package else anchor[:-1]
    anchor = anchor[:len(anchor) - (level - 1)]
    return ".".join(anchor + ([base] if base else []))


def imports_of(name: str, path: Path, known: Set[str]) -> Set[str]:
    """Every package module ``name`` imports, at any level of the file, plus the modules its
    ``_EXPORTS`` lazy table names (``lazy_exports`` / ``importlib`` by string)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node.module or "", node.level)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        elif (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets)
              and isinstance(node.value, ast.Dict)):
            keys = [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
            targets = [_resolve(name, is_package, k.lstrip("."), len(k) - len(k.lstrip("."))) for k in keys]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def graph() -> Dict[str, Set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def find_cycle(edges: Dict[str, Set[str]]) -> List[str]:
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(n: str) -> List[str]:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                cycle = visit(m)
                if cycle:
                    return cycle
        stack.pop()
        state[n] = 2
        return []

    for n in sorted(edges):
        if n not in state:
            cycle = visit(n)
            if cycle:
                return cycle
    return []


def violations(edges: Dict[str, Set[str]]) -> List[str]:
    """Every import that points up the layer table, or across component kinds, or from one
    model family to another."""
    bad = []
    for src, targets in sorted(edges.items()):
        for dst in sorted(targets):
            up = layer_of(dst) > layer_of(src)
            across = (layer_of(src) == layer_of(dst) == 2 and kind_of(src) != kind_of(dst)
                      and kind_of(src) and kind_of(dst))
            if up or across:
                bad.append(f"{src} ({LAYERS[layer_of(src)][0]}) imports {dst} ({LAYERS[layer_of(dst)][0]})")
    return bad


def package_graph(edges: Dict[str, Set[str]]) -> Dict[str, Set[str]]:
    """Modules collapsed to their subpackage (vargen.models.nar -> vargen.models); the core's
    top-level modules (vargen.registry, ...) stay themselves."""
    def node(m: str) -> str:
        parts = m.split(".")
        return ".".join(parts[:2]) if len(parts) > 2 or m in {"vargen.models", "vargen.samplers", "vargen.eval",
                                                             "vargen.nn", "vargen.data", "vargen.tokenizers",
                                                             "vargen.training"} else m
    out: Dict[str, Set[str]] = {}
    for src, targets in edges.items():
        out.setdefault(node(src), set()).update(node(t) for t in targets if node(t) != node(src))
    out.pop("vargen", None)  # the package facade (vargen/__init__.py) sits on top of everything
    return out


def test_the_walker_sees_function_level_relative_and_lazy_imports():
    edges = graph()
    assert "vargen.hub" in edges["vargen.registry"]               # inside create_model
    assert "vargen.models.base" in edges["vargen.models.llamagen"]  # from .base import
    assert "vargen.models.llamagen" in edges["vargen.models"]      # _EXPORTS: ".llamagen"
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_every_module_has_a_layer():
    for module in module_files():
        layer_of(module)


def test_imports_only_point_down():
    bad = violations(graph())
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("src,dst", [
    ("vargen.models.nar", "vargen.training.loop"),        # a family reaching into the trainer
    ("vargen.tokenizers.mingtok", "vargen.eval.recon"),    # a tokenizer importing the FID code
    ("vargen.eval.sample", "vargen.cli"),                  # eval importing the CLI
    ("vargen.models.nar", "vargen.speed"),                 # a family importing speed
    ("vargen.registry", "vargen.models.nar"),              # the registry importing a family
    ("vargen.samplers.raster", "vargen.models.llamagen"),  # across component kinds
])
def test_an_upward_import_is_caught(src, dst):
    edges = graph()
    edges[src] = edges[src] | {dst}
    assert any(line.startswith(f"{src} ") and f"imports {dst} " in line for line in violations(edges))


def test_no_import_cycle_at_module_or_package_level():
    edges = graph()
    cycle = find_cycle(edges)
    assert not cycle, " -> ".join(cycle)
    cycle = find_cycle(package_graph(edges))
    assert not cycle, " -> ".join(cycle)


def test_a_family_imports_no_other_family():
    # A family is a module the zoo names; other modules of models/ are parts any family may use
    # (base, neighbors, entities, a family's own blocks).
    families = {z.module for z in zoo.MODELS.values() if z.module.startswith("vargen.models.")}
    edges = graph()
    # The raster video baseline is LlamaGen's network on a 3-D grid (a subclass, on purpose).
    allowed = {("vargen.models.raster_video", "vargen.models.llamagen")}
    bad = [(f, t) for f in families for t in edges[f] if t in families and (f, t) not in allowed]
    assert not bad, bad


def test_zoo_modules_are_components():
    for name, entry in zoo.MODELS.items():
        assert LAYERS[layer_of(entry.module)][0] == "components", (name, entry.module)


def test_registry_imports_no_family_and_no_torch():
    path = ROOT / "vargen" / "registry.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
            names |= {f"{node.module}.{a.name}" for a in node.names}
    families = {z.module for z in zoo.MODELS.values()}
    bad = sorted(n for n in names if n.split(".")[0] == "torch"
                 or any(n == f or n.startswith(f + ".") for f in families)
                 or n.startswith(("vargen.models", "vargen.tokenizers", "vargen.samplers")))
    assert not bad, bad


def _run(script: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_help_and_list_import_neither_torch_nor_gradio_nor_a_family():
    families = sorted({z.module for z in zoo.MODELS.values()})
    result = _run(f"""
import contextlib, io, json, sys
from vargen.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        main(["--help"])
    except SystemExit:
        pass
    assert main(["list"]) == 0
    import vargen
    vargen.list_models("nar*")
    vargen.list_pipelines("nar*")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "gradio") or m in {families!r})
print(json.dumps({{"loaded": loaded, "listed": out.getvalue().count("\\n")}}))
""")
    assert result["loaded"] == []
    assert result["listed"] > len(zoo.MODELS)  # the help text, every model and the pipelines


def test_loading_a_shipped_pipeline_imports_only_its_own_family():
    result = _run("""
import json, sys
import vargen
vargen.load_pipeline("nar-mnist")
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("vargen.models.", "vargen.tokenizers.")))))
""")
    families = {z.module for z in zoo.MODELS.values()} - {"vargen.models.nar", "vargen.tokenizers.vq"}
    assert not families & set(result), sorted(families & set(result))
    assert {"vargen.models.nar", "vargen.tokenizers.vq"} <= set(result)


def test_lazy_table_agrees_with_the_registrations():
    from vargen.registry import _PIPELINES, _REGISTRY
    for name, entry in zoo.MODELS.items():
        registered = vargen.get_entry(name)
        assert (registered.kind, registered.weights.location) == (entry.kind, entry.weights), name
        assert (name in _PIPELINES) == entry.pipeline, f"{name}: zoo says pipeline={entry.pipeline}"
    missing = sorted(set(_REGISTRY) - set(zoo.MODELS))
    assert not missing, f"registered but not in vargen/zoo.py (add one line each): {missing}"
