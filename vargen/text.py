"""Text encoders for text-to-image generators: a ``transformers`` T5 encoder and its tokenizer
turned into the caption features a text-conditioned generator takes.

LlamaGen's release (https://github.com/FoundationVision/LlamaGen, ``language/t5.py``,
``autoregressive/sample/sample_t2i.py``): ``google/flan-t5-xl``'s ``T5EncoderModel`` (2048-d),
captions tokenized to ``max_length=120`` (``padding="max_length"``, truncation, special tokens),
features of padding tokens zeroed, then **left padding** (the valid tokens moved to the end;
``--no-left-padding`` keeps them first), bf16 on GPU::

    >>> enc = load_text_encoder("google/flan-t5-xl")     # Hub cache or a local folder
    >>> feats = enc(["a red bicycle"])                   # [1, 120, 2048] float32, zero rows = padding

Caption cleaning (``clean_captions``, on by default): :func:`clean_caption` is the release's
``T5Embedder.text_preprocessing`` with ``use_text_preprocessing=True`` (PixArt's / DeepFloyd IF's
``clean_caption``, applied twice: URLs, HTML, @mentions, CJK, file names and web-shop phrases
removed, dashes and quotes normalised, ftfy and HTML unescaping, lower case, single spaces). It is
on in every released entry point: ``sample_t2i.py``, ``sample_t2i_ddp.py`` and
``extract_t5_feature.py`` (the training features) all build ``T5Embedder`` without the argument,
whose default is True. ``clean_captions=False`` is the release's other path, :func:`preprocess`
(``lower().strip()``; vargen also folds runs of whitespace). ``transformers``, ``ftfy`` and
``bs4`` are imported here only, inside functions: listing models, ``--help`` and
class-conditional pipelines never import them.
"""
from __future__ import annotations

import contextlib
import html
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union
from urllib.parse import unquote_plus

import torch
import torch.nn as nn

from vargen.hub import resolve_file

DEFAULT_TEXT_ENCODER = "google/flan-t5-xl"
MAX_LENGTH = 120
SETTINGS_FILE = "vargen_text_encoder.json"  # max_length / left_padding / clean_captions of a saved encoder


def preprocess(text: str) -> str:
    """A prompt as the encoder reads it without cleaning: lower case, stripped, single spaces."""
    return re.sub(r"\s+", " ", str(text)).strip().lower()


def _rules(*pairs: tuple) -> list:
    return [(re.compile(pattern), repl) for pattern, repl in pairs]


# The release's cleaning rules (language/t5.py ``clean_caption``), in its order; the steps
# between the three lists are not regexes (HTML parsing, the dash rule, ftfy).
_FILE_TYPES = "png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4"
_WEB_ADDRESS = r"[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@)"
_BEFORE_HTML = _rules(
    ("<person>", "person"),
    *[(rf"\b((?:{scheme}:(?:\/{{1,3}}|[a-zA-Z0-9%])|{_WEB_ADDRESS}))", "") for scheme in ("https?", "www")])
_BEFORE_FTFY = _rules(
    (r"@[\w\d]+\b", ""),                                   # @nickname
    (r"[\u31c0-\u9fff]+", ""),                             # CJK: the release's 7 adjoining ranges
    (r"[\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030\u30A0"
     r"\uFE31\uFE32\uFE58\uFE63\uFF0D]+", "-"),            # every dash
    (r"[`´«»“”¨]", '"'), (r"[‘’]", "'"),                   # one kind of quote
    (r"&quot;?", ""), (r"&amp", ""),
    (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),          # IP addresses
    (r"\d:\d\d\s+$", ""),                                  # article ids
    (r"\\n", " "),                                         # a literal backslash-n
    (r"#\d{1,3}\b", ""), (r"#\d{5,}\b", ""), (r"\b\d{6,}\b", ""),
    (rf"[\S]+\.(?:{_FILE_TYPES})", ""),                    # file names
    (r"[\"\']{2,}", '"'), (r"[\.]{2,}", " "),
    (r"[#®•©™&@·º½¾¿¡§~)(\]\[}{|\\/*]+", " "),             # ***SALE***, #tag
    (r"\s+\.\s+", " "))
_AFTER_FTFY = _rules(
    (r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""), (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""), (r"\b\d+[a-zA-Z]+\d+\b", ""),
    (r"(worldwide\s+)?(free\s+)?shipping", ""), (r"(free\s)?download(\sfree)?", ""),
    (r"\bclick\b\s(?:for|on)\s\w+", ""), (rf"\b(?:{_FILE_TYPES})(\simage[s]?)?", ""),
    (r"\bpage\s+\d+\b", ""),
    (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),  # product codes: j2d1a2a
    (r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),                 # sizes: 1920x1080 (Latin, Cyrillic x, ×)
    (r"\b\s+\:\s+", ": "), (r"(\D[,\./])\b", r"\1 "), (r"\s+", " "),
    # no strip here: the release's ``caption.strip()`` discards its result, so a leading space
    # keeps the anchored rules below from matching
    (r"^[\"\']([\w\W]+)[\"\']$", r"\1"), (r"^[\'\_,\-\:;]", ""), (r"[\'\_,\-\:\-\+]$", ""),
    (r"^\.\S+$", ""))


def _apply(rules: list, text: str) -> str:
    for pattern, repl in rules:
        text = pattern.sub(repl, text)
    return text


def _clean_once(text: str) -> str:
    import ftfy  # lazily: only prompts being cleaned need ftfy and bs4
    from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning

    text = _apply(_BEFORE_HTML, unquote_plus(str(text)).strip().lower())
    with warnings.catch_warnings():  # a caption such as "photo.jpg" is text, not a file to open
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        text = BeautifulSoup(text, features="html.parser").text
    text = _apply(_BEFORE_FTFY, text)
    if len(re.findall(r"[-_]", text)) > 3:  # this-is-my-cute-cat, this_is_my_cute_cat
        text = re.sub(r"[-_]", " ", text)
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _apply(_AFTER_FTFY, text).strip()


def clean_caption(text: str) -> str:
    """A caption as the release cleans it before T5 (``use_text_preprocessing=True``): its
    ``clean_caption`` twice, as its ``text_preprocessing`` does ("the exact text cleaning as was
    in the training stage"). Offline: URLs are only removed as text."""
    return _clean_once(_clean_once(text))


class T5TextEncoder(nn.Module):
    """``encoder`` (a ``transformers`` ``T5EncoderModel``) + its ``tokenizer``: prompts -> caption
    features ``[B, max_length, d_model]`` (float32; padding rows zero, left padded by default).
    ``clean_captions``: prompts through :func:`clean_caption` (the release's default) or only
    :func:`preprocess`."""

    def __init__(self, encoder: nn.Module, tokenizer: Any, max_length: int = MAX_LENGTH,
                 left_padding: bool = True, source: str = "", clean_captions: bool = True):
        super().__init__()
        self.encoder, self.tokenizer = encoder.eval(), tokenizer
        self.max_length, self.left_padding, self.source = int(max_length), bool(left_padding), source
        self.clean_captions = bool(clean_captions)

    @property
    def dim(self) -> int:
        return int(self.encoder.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def tokenize(self, prompts: Sequence[str]) -> tuple:
        """``(input_ids, attention_mask)`` ``[B, max_length]``, right padded as the tokenizer does."""
        prepare = clean_caption if self.clean_captions else preprocess
        out = self.tokenizer([prepare(p) for p in prompts], max_length=self.max_length,
                             padding="max_length", truncation=True, add_special_tokens=True,
                             return_attention_mask=True, return_tensors="pt")
        return out["input_ids"], out["attention_mask"]

    @torch.no_grad()
    def forward(self, prompts: Union[str, Sequence[str]]) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be a string or a non-empty list of strings, got {prompts!r}")
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()  # [B, L, D]
        h = h * mask[..., None]
        if self.left_padding:  # row b: its n valid tokens moved to the end, order kept
            n = mask.sum(1, keepdim=True)  # [B, 1]
            index = (torch.arange(ids.shape[1], device=ids.device)[None] + n) % ids.shape[1]
            h = h.gather(1, index[..., None].expand_as(h))
        return h

    encode = forward

    def save_pretrained(self, folder: Union[str, Path]) -> Path:
        folder = Path(folder)
        self.encoder.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        (folder / SETTINGS_FILE).write_text(json.dumps(
            {"max_length": self.max_length, "left_padding": self.left_padding,
             "clean_captions": self.clean_captions}, indent=2))
        return folder


# Text encoders shipped in ``vargen.weights`` (name -> sha256 of its model.safetensors).
SHIPPED = {"t2i-mnist-t5": "9f421f0b4f3c506894976315423dc6412156a09326571f55d647b132a8c13b18"}


def shipped_folder(source: str) -> str:
    """``NAME`` or ``weights/NAME`` of a shipped text encoder -> its installed folder (sha256
    checked); anything else (a folder, a Hub repo id) unchanged."""
    source = str(source)
    name = source[len("weights/"):] if source.startswith("weights/") else source
    if name not in SHIPPED or os.path.isdir(source) and not source.startswith("weights/"):
        return source
    import vargen.weights
    from vargen.hub import verify_sha256
    folder = Path(vargen.weights.__file__).parent / name
    verify_sha256(folder / "model.safetensors", SHIPPED[name])
    return str(folder)


def load_text_encoder(source: str = DEFAULT_TEXT_ENCODER, *, device: Any = None,
                      torch_dtype: Optional[torch.dtype] = None, max_length: Optional[int] = None,
                      left_padding: Optional[bool] = None, clean_captions: Optional[bool] = None,
                      revision: Optional[str] = None, cache_dir: Optional[str] = None,
                      local_files_only: bool = False, token: Optional[str] = None) -> T5TextEncoder:
    """A T5 encoder from a Hub repo id (the Hugging Face cache first, ``HF_HUB_OFFLINE``
    respected) or a local folder. ``torch_dtype`` defaults to bf16 on CUDA (as released), else
    float32; ``max_length`` / ``left_padding`` / ``clean_captions`` default to a saved folder's
    settings, else 120 / True / True (the release's)."""
    from transformers import AutoTokenizer, T5EncoderModel

    hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
    source = shipped_folder(source)
    resolve_file(source, "config.json", **hub)  # vargen's error for a missing folder / cache entry
    device = torch.device(device) if device is not None else torch.device("cpu")
    if torch_dtype is None:
        torch_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        # safetensors only: a pytorch_model.bin in a handed folder would be unpickled
        encoder = T5EncoderModel.from_pretrained(source, dtype=torch_dtype, use_safetensors=True, **hub)
        tokenizer = AutoTokenizer.from_pretrained(source, **hub)
    except OSError as e:  # transformers' EnvironmentError: a missing file or cache entry
        raise FileNotFoundError(f"cannot load a T5 text encoder from {source!r}: {e}") from e
    settings = {}
    if os.path.isdir(source) and os.path.isfile(os.path.join(source, SETTINGS_FILE)):
        settings = json.loads(Path(source, SETTINGS_FILE).read_text())
    def setting(value: Any, name: str, default: Any) -> Any:
        return value if value is not None else settings.get(name, default)

    return T5TextEncoder(encoder.to(device), tokenizer, setting(max_length, "max_length", MAX_LENGTH),
                         setting(left_padding, "left_padding", True), source=source,
                         clean_captions=setting(clean_captions, "clean_captions", True))


def as_text_encoder(value: Any, **kwargs: Any) -> Optional[nn.Module]:
    """A pipeline's text encoder: None (class-conditional), a loaded one as it is, or a Hub repo
    id / folder loaded with :func:`load_text_encoder` (``kwargs``)."""
    return load_text_encoder(str(value), **kwargs) if isinstance(value, (str, Path)) else value


def is_prompt(value: Any) -> bool:
    """Whether a pipeline's first argument is a prompt (a string or a list of strings)."""
    return isinstance(value, str) or (isinstance(value, (list, tuple)) and bool(value)
                                      and all(isinstance(v, str) for v in value))


def _strings(value: Any, name: str) -> list:
    values = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not values or not all(isinstance(v, str) for v in values):
        raise TypeError(f"{name} must be a string or a non-empty list of strings, got {value!r}")
    return values


def call_conditions(pipe: Any, class_labels: Any, prompt: Any, negative_prompt: Any) -> tuple:
    """A pipeline call's ``(conditions, negatives)``: its class ids checked (``pipe._labels``) and
    None, or the prompts' caption features (``prompt``, or the first argument when it is text)."""
    if prompt is None and class_labels is not None and (pipe.text_encoder is not None or is_prompt(class_labels)):
        if not is_prompt(class_labels):
            raise TypeError(f"{pipe.name or 'this pipeline'} is text-to-image: pass prompts (a string or a "
                            f"list of strings; a prompt file: python -m vargen.eval.sample --prompts FILE), got "
                            f"{class_labels!r}")
        prompt, class_labels = class_labels, None  # the first argument is the prompt
    if class_labels is not None and prompt is not None:
        raise ValueError("pass prompts or class labels, not both")
    if prompt is None and negative_prompt is None:
        return pipe._labels(class_labels), None
    return encode_prompts(pipe.text_encoder, pipe.transformer, prompt, negative_prompt)


@contextlib.contextmanager
def negative_condition(model: nn.Module, negatives: Optional[torch.Tensor], rows: slice):
    """A text model's null condition (CFG's unconditional half) is ``negatives[rows]`` meanwhile
    (nothing changes without negatives)."""
    if negatives is not None:
        model.negative_condition = negatives[rows].to(model.device)
    try:
        yield
    finally:
        if negatives is not None:
            model.negative_condition = None


def encode_prompts(text_encoder: Optional[T5TextEncoder], transformer: nn.Module, prompt: Any,
                   negative_prompt: Any = None) -> tuple:
    """A pipeline call's conditions: ``(features [B, L, D], negatives [B, L, D] or None)`` on
    the host, checked against ``transformer`` (its caption length and width) before it runs."""
    if text_encoder is None:
        raise TypeError("class_labels must be class ids: this pipeline is class-conditional, and "
                        "prompts (text) need a text-to-image pipeline (one with a text encoder)")
    prompts = _strings(prompt, "prompt")
    features = text_encoder(prompts).cpu()
    transformer.check_labels(features)
    if negative_prompt is None:
        return features, None
    negatives = _strings(negative_prompt, "negative_prompt")
    negatives = negatives * len(prompts) if len(negatives) == 1 else negatives
    if len(negatives) != len(prompts):
        raise ValueError(f"negative_prompt: {len(negatives)} prompts for {len(prompts)} prompts; "
                         f"pass one, or one per prompt")
    negatives = text_encoder(negatives).cpu()
    transformer.check_labels(negatives)
    return features, negatives


__all__ = ["T5TextEncoder", "load_text_encoder", "preprocess", "clean_caption", "DEFAULT_TEXT_ENCODER",
           "MAX_LENGTH", "encode_prompts", "is_prompt"]
