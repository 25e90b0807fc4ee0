"""``python -m vargen.train`` (what ``torchrun ... -m vargen.train`` runs): ``vargen train``.

The training code is the :mod:`vargen.training` package.
"""
from __future__ import annotations

import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    from vargen.cli import main as cli_main
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
