"""Why a video generator draws the wrong digit: one ablation row per command (docs/video.md).

Each row generates ``--num-clips`` clips of a shipped video pipeline (classes ``i % 10``, seed 0)
and scores them with the ``digit-classifier`` on digit-centred crops: the share of frames read
as the asked digit, the share of clips "right" (at least half their frames), and the frame
accuracy per quarter of the clip (frames 0-3 ... 12-15: does identity drift over time, or is it
wrong from the first frames?). What a row changes:

- ``--weights``: the generator's weights, a ``save_pretrained`` folder or a ``vargen train`` run's
  ``checkpoint.pt`` / ``ckpt-STEP.pt`` (its EMA weights, else the raw ones), same architecture;
- ``--order diagonal|frame``: NAR's decoding order on the same network (``decode_order``);
- ``--set KEY=VALUE``: sampler options (``cfg_scale``, ``temperature``, ``top_k``, ``top_p``);
- ``--curve RUN``: instead, every ``RUN/ckpt-*.pt`` (``vargen train --keep-every``) in step order,
  with its training loss.

    python demos/ablate_video.py --model nar-video-mnist                          # as shipped
    python demos/ablate_video.py --model nar-video-mnist --order frame            # same net, frame by frame
    python demos/ablate_video.py --model raster-video-mnist --set temperature=0.8 --set top_k=50
    python demos/ablate_video.py --model raster-video-mnist --curve runs/raster-video-mnist  # --keep-every run
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Dict, Optional

import torch

import vargen
from vargen.data.moving_mnist import class_scores, frame_hits
from vargen.training.checkpoint import load_checkpoint


def load_weights(pipe, source: str) -> Optional[int]:
    """Put ``source``'s weights into ``pipe.transformer``; the checkpoint's step, if one."""
    path = Path(source)
    if path.is_dir():
        trained = type(pipe.transformer).from_pretrained(path)
        pipe.transformer.config.decode_order = trained.config.decode_order
        pipe.transformer.load_state_dict(trained.state_dict())
        return None
    ckpt = load_checkpoint(path)
    pipe.transformer.config.decode_order = ckpt["model_config"].get("decode_order", "diagonal")
    pipe.transformer.load_state_dict(ckpt["ema"] or ckpt["model"])
    return int(ckpt["step"])


def score(pipe, classifier, num_clips: int, options: Dict[str, float]) -> Dict[str, object]:
    labels = torch.arange(num_clips) % 10
    calls = []
    hook = pipe.transformer.layers[0].register_forward_hook(lambda *_: calls.append(1))
    clips = pipe.generate(labels, seed=0, batch_size=64, **options)
    hook.remove()
    hits = frame_hits(classifier, clips, labels)  # [N, T]
    quarters = hits.float().view(num_clips, 4, -1).mean((0, 2))
    return {**{k: round(v, 4) for k, v in class_scores(hits).items()},
            "frame_accuracy_by_quarter": [round(q, 3) for q in quarters.tolist()],
            "passes_per_batch": len(calls) / -(-num_clips // 64)}


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a video pipeline (nar-video-mnist, raster-video-mnist)")
    ap.add_argument("--weights", default=None, help="generator weights: folder or run checkpoint")
    ap.add_argument("--order", choices=["diagonal", "frame"], default=None, help="NAR decoding order")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="sampler option")
    ap.add_argument("--curve", default=None, help="a run folder: score each ckpt-STEP.pt in it")
    ap.add_argument("--num-clips", type=int, default=200)
    ap.add_argument("--json", default=None, help="append the rows here (JSON lines)")
    args = ap.parse_args()
    options = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.set)}
    pipe = vargen.load_pipeline(args.model)
    classifier = vargen.create_model("digit-classifier", pretrained=True).eval()
    if args.curve:
        log = {}
        for line in (Path(args.curve) / "log.jsonl").read_text().splitlines():
            entry = json.loads(line)
            log[entry.get("step")] = entry.get("loss")
        ckpts = sorted(Path(args.curve).glob("ckpt-*.pt"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]))
        sources = [str(p) for p in ckpts]
    else:
        sources = [args.weights]
    for source in sources:
        step = load_weights(pipe, source) if source else None
        if args.order:
            pipe.transformer.config.decode_order = args.order
        order = pipe.transformer.config.decode_order if hasattr(pipe.transformer, "neighbor_schedule") else None
        row = {"model": args.model, "weights": source or "shipped", "step": step, "decode_order": order,
               "options": options,
               "num_clips": args.num_clips, **score(pipe, classifier, args.num_clips, options)}
        if args.curve:
            row["train_loss"] = log.get(step)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
