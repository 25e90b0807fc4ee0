"""Weights I/O: ``save_pretrained`` / ``from_pretrained`` (config.json + model.safetensors, local
folder or Hugging Face Hub repo), official checkpoints through converters, strict loading.

Every vargen network derives from :class:`VargenModule`, which is an ``nn.Module`` plus
huggingface_hub's ``PyTorchModelHubMixin`` (model cards, ``push_to_hub``). Saving is atomic
(temporary names, then rename) and loading is strict: a missing, unexpected or mis-shaped key is
an error that names it. Pickle checkpoints are read with ``torch.load(weights_only=True)`` only.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any, Callable, Dict, Mapping, Optional, Type, TypeVar, Union

import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin, constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vargen.atomic import atomic_dir, atomic_write, recover_dir  # noqa: F401 (re-exported)
from vargen.loaders import WeightsError, check_tensors, torch_load

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
OFFICIAL_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
# Seconds to wait for the Hub's TCP handshake before giving up (huggingface_hub retries an
# unreachable host with backoff for ~25 s); a proxy in the environment skips the probe.
HUB_CONNECT_TIMEOUT = 5.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
# Keys under which official training scripts nest the weights, in the order they are tried.
CHECKPOINT_LAYOUTS = ("model", "module", "state_dict", "model_ema", "ema")
# MAR-family training checkpoints hold "model" and "model_ema", and their evaluation uses the EMA.
EMA_FIRST_LAYOUTS = ("model_ema", "ema", "model", "module", "state_dict")

T = TypeVar("T", bound="VargenModule")
StateDict = Dict[str, torch.Tensor]


class VargenModule(nn.Module, PyTorchModelHubMixin, library_name="vargen",
                   repo_url="https://github.com/vargen/vargen", tags=["vargen"]):
    """Base class: a network built from one dataclass ``config``.

    Subclasses set ``config_class`` and ``kind`` (``"tokenizer"`` or ``"generator"``) and take
    the config as their only constructor argument.
    """

    config_class: type = None  # type: ignore[assignment]
    kind: str = "generator"

    def __init__(self, config: Any):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} expects a {self.config_class.__name__}, "
                            f"got {type(config).__name__}")
        self.config = config

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _save_pretrained(self, save_directory: Path) -> None:
        config = {"_class_name": type(self).__name__, **dataclasses.asdict(self.config)}
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(Path(save_directory) / WEIGHTS_NAME, lambda p: save_file(state, p))
        atomic_write(Path(save_directory) / CONFIG_NAME,
                      lambda p: Path(p).write_text(json.dumps(config, indent=2, sort_keys=True)))

    @classmethod
    def from_pretrained(cls: Type[T], pretrained_model_name_or_path: Union[str, Path], *,
                        revision: Optional[str] = None, cache_dir: Optional[str] = None,
                        local_files_only: bool = False, token: Optional[str] = None,
                        **config_overrides: Any) -> T:
        """Load a folder or Hub repo written by ``save_pretrained``, strictly."""
        source = str(pretrained_model_name_or_path)
        config_path = resolve_file(source, CONFIG_NAME, revision=revision, cache_dir=cache_dir,
                                   local_files_only=local_files_only, token=token)
        weights_path = resolve_file(source, WEIGHTS_NAME, revision=revision, cache_dir=cache_dir,
                                    local_files_only=local_files_only, token=token)
        config = read_config(cls, config_path, **config_overrides)
        model = cls(config)
        load_state_dict_strict(model, load_safetensors(weights_path), source=weights_path)
        return model


def config_from_dict(config_class: type, values: Mapping[str, Any], where: str = "config") -> Any:
    """Rebuild a dataclass config from JSON values (lists back to tuples where the field is one)."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise WeightsError(f"{where}: unknown field(s) {unknown} for {config_class.__name__}")
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default
        if isinstance(value, list) and isinstance(default, tuple):
            value = tuple(value)
        kwargs[name] = value
    return config_class(**kwargs)


def read_config(cls: type, path: Union[str, Path], **overrides: Any) -> Any:
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"cannot read config {path}: {e}") from e
    saved_class = values.pop("_class_name", cls.__name__)
    if saved_class != cls.__name__:
        raise WeightsError(f"{path} holds a {saved_class}, not a {cls.__name__}")
    values.update(overrides)
    return config_from_dict(cls.config_class, values, where=str(path))


def saved_class_name(folder: Union[str, Path]) -> Optional[str]:
    """The ``_class_name`` a ``save_pretrained`` folder's config.json records (None if absent)."""
    config = Path(folder) / CONFIG_NAME
    if not config.exists():
        return None
    try:
        return json.loads(config.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"cannot read config {config}: {e}") from e


def resolve_file(source: str, filename: str, **hub_kwargs: Any) -> str:
    """A local path for ``filename`` in a local folder or a Hub repo (cache and offline aware)."""
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{filename} not found in folder {source}")
        return path
    if os.path.exists(source) or source.startswith((".", "/", "~")) or source.count("/") > 1:
        if not os.path.exists(source):
            recover_dir(Path(source))  # a save killed between its renames left the old copy aside
            if os.path.isdir(source):
                return resolve_file(source, filename, **hub_kwargs)
            raise FileNotFoundError(f"folder {source} does not exist (expected a folder written by "
                                    f"save_pretrained, holding {filename}; a Hub repo id has one '/')")
        raise FileNotFoundError(f"{source!r} is neither a folder with {filename} nor a Hub repo id")
    offline = constants.HF_HUB_OFFLINE or hub_kwargs.get("local_files_only")
    if not offline:
        cached = try_to_load_from_cache(source, filename, cache_dir=hub_kwargs.get("cache_dir"),
                                        revision=hub_kwargs.get("revision"))
        unreachable = _hub_unreachable()
        if unreachable:
            if isinstance(cached, str):
                return cached  # what hf_hub_download falls back to, without its retries
            raise FileNotFoundError(
                f"{source}/{filename} is not in the local Hugging Face cache and the Hub at "
                f"{constants.ENDPOINT} cannot be reached ({unreachable}). Download it on a machine "
                f"with network (huggingface-cli download {source} {filename}), pass a local path, "
                f"or set HF_HUB_OFFLINE=1 to use only the cache.")
        if not isinstance(cached, str):
            print(f"vargen: downloading {source}/{filename} from {constants.ENDPOINT} ...",
                  file=sys.stderr, flush=True)
    try:
        return hf_hub_download(repo_id=source, filename=filename, **hub_kwargs)
    except LocalEntryNotFoundError as e:
        raise FileNotFoundError(
            f"{source}/{filename} is not in the local Hugging Face cache and cannot be downloaded "
            f"(offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). Download it on a "
            f"machine with network (huggingface-cli download {source} {filename}) or pass a local "
            f"path.") from e
    except EntryNotFoundError as e:
        raise FileNotFoundError(f"{filename} does not exist in Hub repo {source}") from e


def _hub_unreachable() -> Optional[str]:
    """Why the Hub endpoint's host refuses a TCP connection within ``HUB_CONNECT_TIMEOUT``, or None
    when it accepts one (or a proxy is configured, which the probe cannot see through)."""
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_CONNECT_TIMEOUT).close()
    except OSError as e:
        return f"{url.hostname}:{port}: {e.strerror or e}"
    return None


def sha256_of(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Union[str, Path], expected: Optional[str]) -> None:
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected:
        raise WeightsError(f"sha256 mismatch for {path}: expected {expected}, got {actual}. "
                           f"The file is corrupt or not the registered one.")


def load_safetensors(path: Union[str, Path]) -> StateDict:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file (truncated or corrupt?): "
                           f"{e}") from e


def load_official_checkpoint(path: Union[str, Path], prefer_ema: bool = False) -> StateDict:
    """Read an official pickle checkpoint safely and unwrap its weights.

    Accepts ``{"model": sd}``, ``{"module": sd}``, ``{"state_dict": sd}``, EMA layouts, or a raw
    state dict; ``prefer_ema`` tries the EMA keys first (MAR / xAR evaluate the EMA, LlamaGen's
    sample scripts take "model"), as it always does for ``vargen train``'s ``checkpoint.pt``.
    ``argparse.Namespace`` (stored as ``args`` by LlamaGen/MAR training) is the only non-tensor
    class allowed.
    """
    path = str(path)
    if path.endswith(".safetensors"):
        return load_safetensors(path)
    try:
        obj = torch_load(path, allowed=(argparse.Namespace,))
    except Exception as e:  # torch raises several types for truncated or unsafe pickles
        raise WeightsError(f"cannot read checkpoint {path} with weights_only=True: {e}") from e
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    # vargen train's own checkpoint.pt: its EMA, as the exported final/ folder, for every model.
    prefer_ema = prefer_ema or "train_config" in obj
    layouts = EMA_FIRST_LAYOUTS if prefer_ema else CHECKPOINT_LAYOUTS
    for key in layouts:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{path}: no state dict found (looked under {layouts} and "
                           f"at top level; non-tensor keys {bad[:5]})")
    return obj


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                           source: Any = "state dict") -> None:
    """``load_state_dict(strict=True)`` with an error that lists every bad key and shape.

    Modules with a ``fit_state_dict(state_dict, prefix)`` first adapt to the checkpoint where its
    layout is a legitimate variant (a class table without the null row)."""
    for name, module in model.named_modules():
        if hasattr(module, "fit_state_dict"):
            module.fit_state_dict(state_dict, prefix=f"{name}." if name else "")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [f"{k}: expected {tuple(expected[k].shape)}, got {tuple(state_dict[k].shape)}"
              for k in expected if k in state_dict and expected[k].shape != state_dict[k].shape]
    if missing or unexpected or shapes:
        parts = [f"cannot load {source} into {type(model).__name__}:"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:20]}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:20]}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {shapes[:10]}")
        raise WeightsError("\n  ".join(parts))
    check_tensors(state_dict, source, expected)  # NaN / inf, or floats where the model holds ints
    model.load_state_dict(state_dict, strict=True)


def load_from(model_cls: type, config: Any, source: Union[str, Path],
              converter: Optional[Callable[[StateDict], StateDict]] = None,
              strict_config: bool = True, sha256: Optional[str] = None,
              prefer_ema: bool = False, official_safetensors: bool = False) -> nn.Module:
    """Build ``model_cls(config)`` and fill it from a folder, repo id, or weights file.

    Official pickles go through ``converter`` and are unwrapped with the EMA first when
    ``prefer_ema`` (both from the entry's ``Weights``: the families whose official evaluation
    runs the EMA weights). ``.safetensors`` files go through the converter only when
    ``official_safetensors`` (a family whose official release is safetensors, e.g. LARP, MingTok)."""
    source = str(source)
    if source.endswith(OFFICIAL_SUFFIXES + (".safetensors",)) and not os.path.isdir(source):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"checkpoint {source} does not exist")
        verify_sha256(source, sha256)
        state = load_official_checkpoint(source, prefer_ema)
        # A .safetensors file is vargen's own layout, unless the family's official release is
        # safetensors, whose converter then applies.
        if converter is not None and (not source.endswith(".safetensors") or official_safetensors):
            state = converter(state)
        model = model_cls(config)
        load_state_dict_strict(model, state, source=source)
        return model
    # A save_pretrained folder or repo: its config.json is the truth unless overrides were given.
    if strict_config:
        return model_cls.from_pretrained(source)
    model = model_cls(config)
    load_state_dict_strict(model, load_safetensors(resolve_file(source, WEIGHTS_NAME)), source)
    return model


def load_registered(entry: Any, config: Any) -> nn.Module:
    """Weights of a registry entry: shipped in ``vargen.weights`` or downloaded from the Hub."""
    weights = entry.weights
    if weights.local is not None:
        import vargen.weights
        folder = Path(vargen.weights.__file__).parent / weights.local
        verify_sha256(folder / WEIGHTS_NAME, weights.sha256)
        model = entry.model_cls(config)
        load_state_dict_strict(model, load_safetensors(folder / WEIGHTS_NAME), source=folder)
        return model
    path = resolve_file(weights.hub_repo, weights.filename)
    return load_from(entry.model_cls, config, path, converter=weights.converter,
                     sha256=weights.sha256, prefer_ema=weights.prefer_ema,
                     official_safetensors=weights.official_safetensors)
