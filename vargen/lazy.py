"""Lazy package attributes (PEP 562): a package names what it exports and where, and a name's
module is imported on first access. Keeps ``import vargen`` and ``vargen list`` free of torch."""
from __future__ import annotations

import importlib
from typing import Callable, Dict, Iterable


def lazy_exports(package: str, exports: Dict[str, Iterable[str]]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: ``exports`` maps a submodule (relative, e.g.
    ``".llamagen"``) to the names it provides."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name], package), name)

    return __getattr__
