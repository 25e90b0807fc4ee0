"""Captions made from class labels, for training and evaluating text-to-image models offline.

``mnist-templates``: each digit label becomes one of eight phrasings, with words and numerals
("a handwritten seven", "the number 7", ...). The first six (:data:`SEEN_TEMPLATES`) are the
training captions; the last two (:data:`HELDOUT_TEMPLATES`) never appear in training and measure
whether a model reads the digit in a phrasing it has not seen. Sample ``i`` of a run with seed
``s`` gets template ``sample_seed(s, i) % 6``: a pure function of (seed, index), so the captions do
not change with batch size, process count or resume point.

    >>> captions, index = template_captions("mnist-templates", labels, seed=0)
    >>> captions[index[i]]          # sample i's caption; captions: the unique strings (10 x 6)
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from vargen.seeding import sample_seed

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SEEN_TEMPLATES = ("a handwritten {word}", "the number {n}", "digit {n}", "an image of {a_word}",
                  "the digit {word}", "a {n} written by hand")
HELDOUT_TEMPLATES = ("a drawing of the number {word}", "handwritten digit {n}")
CAPTION_SETS = ("mnist-templates",)


def _article(word: str) -> str:
    return ("an " if word[0] in "aeio" else "a ") + word


def digit_caption(template: str, digit: int) -> str:
    """``template`` filled with ``digit`` ({word}: "seven", {a_word}: "a seven", {n}: "7")."""
    word = WORDS[int(digit)]
    return template.format(word=word, a_word=_article(word), n=int(digit))


def caption_templates(name: str, heldout: bool = False) -> Tuple[str, ...]:
    """The seen (training) or held-out templates of the caption set ``name``."""
    if name not in CAPTION_SETS:
        raise ValueError(f"unknown caption set {name!r}; known: {', '.join(CAPTION_SETS)}")
    return HELDOUT_TEMPLATES if heldout else SEEN_TEMPLATES


def template_captions(name: str, labels: torch.Tensor, seed: int = 0,
                      heldout: bool = False) -> Tuple[List[str], torch.Tensor]:
    """``(captions, index)``: the unique captions (digit-major: ``digit * K + template``) and each
    sample's caption index ``[N]``, template ``sample_seed(seed, i) % K`` for sample ``i``."""
    templates = caption_templates(name, heldout)
    labels = torch.as_tensor(labels).long().reshape(-1)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(WORDS)):
        raise ValueError(f"caption set {name!r} captions digit labels 0..9, got labels in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    captions = [digit_caption(t, d) for d in range(len(WORDS)) for t in templates]
    choice = torch.tensor([sample_seed(seed, i) % len(templates) for i in range(len(labels))], dtype=torch.long)
    return captions, labels * len(templates) + choice


def captions_for(templates: Sequence[str], digits: Sequence[int]) -> List[str]:
    """One caption per (template, digit) pair, template-major (evaluation grids)."""
    return [digit_caption(t, d) for t in templates for d in digits]


__all__ = ["template_captions", "caption_templates", "digit_caption", "captions_for", "SEEN_TEMPLATES",
           "HELDOUT_TEMPLATES", "CAPTION_SETS", "WORDS"]
