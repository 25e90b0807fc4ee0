"""One grid with a row of digits 0-9 from every shipped MNIST pipeline (same seed for all).

    python demos/zoo_grid.py --out zoo.png
"""
from __future__ import annotations

import argparse

import torch

import vargen
from vargen.images import save_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="zoo.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    for name in vargen.list_pipelines("*-mnist"):
        pipe = vargen.load_pipeline(name)
        rows.append(pipe.generate(torch.arange(10), seed=args.seed))
        print(f"{name:16s} {pipe.last_stats['forward_passes']:4d} forward passes")
    save_grid(torch.cat(rows), args.out, nrow=10)
    print(f"wrote {args.out}: rows = {', '.join(vargen.list_pipelines('*-mnist'))}")


if __name__ == "__main__":
    main()
