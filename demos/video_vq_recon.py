"""Held-out Moving-MNIST clips (top row) and their video-vq-mnist reconstructions (bottom row) in
one playable file, and the held-out reconstruction numbers of the model card.

    python demos/video_vq_recon.py --out docs/video_vq_recon.gif           # or .mp4
    python demos/video_vq_recon.py --measure                              # PSNR / accuracy on all 1000
"""
from __future__ import annotations

import argparse
import json

import torch

import vargen
from vargen.data import get_dataset
from vargen.training.heldout import heldout_metrics
from vargen.video import write_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="video_vq_recon.gif")
    parser.add_argument("--clips", type=int, default=8, help="clips shown (the first held-out ones)")
    parser.add_argument("--scale", type=int, default=2, help="integer upscaling of the 32x32 frames")
    parser.add_argument("--measure", action="store_true", help="also measure all held-out clips")
    args = parser.parse_args()
    tokenizer = vargen.create_model("video-vq-mnist", pretrained=True).eval()
    heldout = get_dataset("moving-mnist:heldout")
    real = heldout.videos(range(args.clips))
    with torch.no_grad():
        ids = tokenizer.encode(real)                     # [N, 4, 8, 8]
        recon = tokenizer.decode(ids).clamp(-1, 1)      # [N, 3, 16, 32, 32]
    write_video(torch.cat([real, recon]), args.out, nrow=args.clips, scale=args.scale)
    print(f"wrote {args.out}: {args.clips} held-out clips (top) and reconstructions from "
          f"{tuple(ids.shape[1:])} ids (bottom)")
    if args.measure:
        print(json.dumps(heldout_metrics(tokenizer, "moving-mnist")))


if __name__ == "__main__":
    main()
