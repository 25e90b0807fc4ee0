"""The import graph: no cycle anywhere (function-level imports included), a registry that
imports no model family, and name listing that needs neither torch nor any family (issue 11)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import vargen
from vargen import zoo

ROOT = Path(__file__).resolve().parents[1]
# setup.cfg's package_dir: folder -> package
PACKAGES = {"vargen": "vargen", "models": "vargen.models", "samplers": "vargen.samplers",
            "eval": "vargen.eval"}
# Modules that define or register model families: what listing names must not import.
FAMILIES = sorted({module for module, _, _ in zoo.MODELS.values()} | {
    "vargen.models.llamagen", "vargen.models.nar", "vargen.models.nar_video", "vargen.models.xar",
    "vargen.tokenizers.vq", "vargen.tokenizers.kl", "vargen.classifier"})


def module_files() -> Dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def imports_of(name: str, path: Path, known: Set[str]) -> Set[str]:
    """Every package module ``name`` imports, at any level of the file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
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


def test_the_walker_sees_function_level_and_relative_imports():
    edges = graph()
    assert "vargen.hub" in edges["vargen.registry"]            # inside create_model
    assert "vargen.models.llama" in edges["vargen.models.llamagen"]  # from .llama import
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert not cycle, " -> ".join(cycle)


def test_registry_imports_no_family_and_no_torch():
    path = ROOT / "vargen" / "registry.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
            names |= {f"{node.module}.{a.name}" for a in node.names}
    bad = sorted(n for n in names if n.split(".")[0] == "torch"
                 or any(n == f or n.startswith(f + ".") for f in FAMILIES)
                 or n.startswith(("vargen.models", "vargen.tokenizers", "vargen.samplers")))
    assert not bad, bad


def test_help_and_list_import_neither_torch_nor_a_family():
    script = f"""
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
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torch" or m in {FAMILIES!r})
print(json.dumps({{"loaded": loaded, "listed": out.getvalue().count("\\n")}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["listed"] > len(zoo.MODELS)  # the help text, every model and the pipelines


def test_lazy_table_agrees_with_the_registrations():
    for name, (module, kind, location) in zoo.MODELS.items():
        entry = vargen.get_entry(name)
        assert (entry.kind, entry.weights.location) == (kind, location), name
    from vargen.registry import _REGISTRY
    missing = sorted(set(_REGISTRY) - set(zoo.MODELS))
    assert not missing, f"registered but not in vargen/zoo.py (add one line each): {missing}"
