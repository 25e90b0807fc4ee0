"""Distributed, resumable sampling over a prompt list (text-to-image, COCO-style captions file).

    python -m vargen.eval.sample --model llamagen-t2i-xl --prompts captions.txt --out runs/t2i
    torchrun --nproc_per_node 8 -m vargen.eval.sample --model ... --prompts captions.txt --out ...

(``python -m vargen.eval.sample_prompts`` runs the same command line; the code is in
:mod:`vargen.eval.sample`, re-exported here.)

The prompt file holds one prompt per line (``.txt``; blank lines skipped) or a JSON list of
strings (or of ``{"caption": ...}`` records). Sample ``i`` is prompt ``i % P`` (``--num-samples``
defaults to the P prompts, once each) and draws its noise from ``(seed, i)``, as the class
sampler does: this is :func:`vargen.eval.sample.generate_samples` (shards, part files, manifest,
``kill -9`` safe resume, gloo/nccl ranks) with the prompt index in place of the class label, so
``samples.npz`` holds ``arr_0`` and ``labels`` = the prompt index of each image. The manifest
records the prompt file's SHA-256: another prompt list never resumes a run.
"""
from __future__ import annotations

# The command line is vargen.eval.sample's (its --prompts FILE): one parser, one entry point.
from vargen.eval.sample import PromptPipeline, generate_prompt_samples, main, read_prompts  # noqa: F401


if __name__ == "__main__":
    raise SystemExit(main())
