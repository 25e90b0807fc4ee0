"""install_requires is honest: every third-party module the package imports (at top level or lazily
inside a function) comes from a listed distribution, and every listed distribution is imported.
Both sides are read from setup.cfg, so new dependencies need only their setup.cfg line."""
import ast
import configparser
import importlib.metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Import names whose distribution is named differently, for when it is not installed here
# (installed ones are looked up in their metadata).
KNOWN = {"PIL": "pillow", "skimage": "scikit-image", "cv2": "opencv-python", "yaml": "pyyaml"}


def _normalise(dist: str) -> str:  # PEP 503
    return re.sub(r"[-_.]+", "-", dist).lower()


def _setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg["options"]


def _names(text: str) -> set:
    lines = [line.strip() for line in text.splitlines()]
    return {_normalise(re.match(r"[A-Za-z0-9_.\-]+", line).group()) for line in lines if line}


def install_requires():
    """install_requires plus the optional extras a feature imports lazily (``demo``: gradio)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = cfg["options.extras_require"]
    return _names(_setup_cfg()["install_requires"]) | {
        d for extra in extras if extra != "test" for d in _names(extras[extra])}


def imported_modules():
    """Top-level names of absolute imports in the package's source: {name: [files]}."""
    folders = {line.split("=")[1].strip() for line in _setup_cfg()["package_dir"].strip().splitlines()}
    found = {}
    for folder in sorted(folders):
        for path in sorted((ROOT / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], []).append(str(path.relative_to(ROOT)))
    return found


def third_party(found):
    return {name: files for name, files in found.items()
            if name not in sys.stdlib_module_names and name != "vargen"}


def distributions_of(module: str):
    installed = importlib.metadata.packages_distributions().get(module)
    return {_normalise(d) for d in installed} if installed else {_normalise(KNOWN.get(module, module))}


def test_the_walk_finds_the_package_imports():
    found = imported_modules()
    assert {"torch", "vargen", "os"} <= set(found)
    assert "vargen/tokenizers/conv.py" in found["diffusers"]  # lazy imports inside functions count


def test_install_requires_lists_exactly_the_imported_distributions():
    listed = install_requires()
    imported = {module: distributions_of(module) for module in third_party(imported_modules())}
    missing = {m: sorted(d) for m, d in imported.items() if not d & listed}
    assert not missing, f"imported but not in setup.cfg install_requires: {missing}"
    used = set().union(*imported.values())
    assert not listed - used, f"in install_requires but never imported: {sorted(listed - used)}"


def _lower_bound(spec):
    match = re.search(r">=\s*([\d.]+)", spec or "")
    version = tuple(int(x) for x in match.group(1).split(".")) if match else ()
    return (version + (0, 0, 0))[:3]


def test_python_requires_is_at_least_every_dependencys():
    ours = _lower_bound(_setup_cfg()["python_requires"])
    assert ours >= (3, 11, 0)  # diffusers >= 0.42 requires Python 3.11
    for dist in install_requires():
        theirs = _lower_bound(importlib.metadata.metadata(dist).get("Requires-Python"))
        assert ours >= theirs, f"{dist} needs Python >= {theirs}, setup.cfg says >= {ours}"
