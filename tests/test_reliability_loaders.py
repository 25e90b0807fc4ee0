"""No weights file runs code (issue 31): a malicious TorchScript archive (its compiled
``__setstate__`` creates a marker file when ``torch.jit.load`` runs it) handed to ``vargen fid`` /
``ref-stats`` (``--inception-weights``) and ``vargen fvd`` (``--i3d-weights``), and a poisoned
pickle in torch's hub cache under torchvision's AlexNet name (LPIPS in ``vargen recon``): the
marker never appears and each is one clear error. Every pickle-capable load call of the package
sits in :mod:`vargen.loaders` (an AST walk fails on a new one elsewhere), and NaN / integer
weights are refused at load with the file and tensor named."""
import ast
import os
import pickle
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vargen import loaders
from vargen.cli import main
from vargen.hub import WeightsError, load_from

ROOT = Path(__file__).resolve().parents[1]
LOADER = ROOT / "vargen" / "loaders.py"


# ------------------------------------------------------------------------------ the malicious files
def torchscript_with_hook(path: Path, marker: Path) -> Path:
    """A TorchScript archive whose module's ``__setstate__`` (compiled TorchScript, run by
    ``torch.jit.load``) creates ``marker`` through ``torch.from_file(shared=True)``."""
    class Hook(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.marker = str(marker)
            self.w = torch.zeros(2)

        def forward(self, x):
            return x + self.w

        @torch.jit.export
        def __getstate__(self):
            return (self.w, self.marker, self.training)

        @torch.jit.export
        def __setstate__(self, state: Tuple[torch.Tensor, str, bool]):
            self.marker = state[1]
            self.training = state[2]
            self.w = state[0] + 0 * torch.from_file(self.marker, shared=True, size=2)

    class Evil(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.hook = Hook()

        def forward(self, x):
            return self.hook(self.lin(x))

    with pytest.warns(Warning):  # "torch.jit.script is deprecated"
        torch.jit.script(Evil()).save(str(path))
    return path


class _Touch:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "code from a weights file ran"


@pytest.fixture
def evil_ts(tmp_path, marker):
    return torchscript_with_hook(tmp_path / "ts.pt", marker)


def test_the_torchscript_attack_is_real(tmp_path, evil_ts):
    # Sanity: torch.jit.load does run the hook (in a copy pointing at another marker).
    other = tmp_path / "ran"
    torchscript_with_hook(tmp_path / "other.pt", other)
    with pytest.warns(Warning):
        torch.jit.load(str(tmp_path / "other.pt"))
    assert other.exists()
    # As data it is just its tensors, and nothing runs.
    tensors = loaders.read_torchscript_tensors(evil_ts)
    assert set(tensors) == {"lin.weight", "lin.bias", "hook.0"}


def _images(path: Path, n: int = 4) -> Path:
    np.savez(path, arr_0=np.zeros((n, 16, 16, 3), np.uint8))
    return path


def _clips(path: Path, n: int = 2) -> Path:
    np.savez(path, arr_0=np.zeros((n, 4, 16, 16, 3), np.uint8))
    return path


@pytest.mark.parametrize("command", ["fid", "ref-stats", "fvd"])
def test_malicious_torchscript_never_runs_from_the_cli(tmp_path, evil_ts, marker, command, capsys):
    if command == "fid":
        argv = ["fid", str(_images(tmp_path / "a.npz")), str(_images(tmp_path / "b.npz")),
                "--inception-weights", str(evil_ts)]
    elif command == "ref-stats":
        argv = ["ref-stats", str(_images(tmp_path / "a.npz")), str(tmp_path / "ref.npz"),
                "--inception-weights", str(evil_ts)]
    else:
        argv = ["fvd", str(_clips(tmp_path / "g.npz")), str(_clips(tmp_path / "r.npz")), "--num-frames", "4",
                "--i3d-weights", str(evil_ts)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ts.pt" in err[0], err
    assert not (tmp_path / "ref.npz").exists()


def test_unpinned_torchscript_is_never_jit_loaded(evil_ts):
    with pytest.raises(WeightsError, match="not the pinned"):
        loaders.load_pinned_torchscript(evil_ts, "0" * 64)


def test_torchscript_i3d_is_read_as_data(tmp_path):
    from vargen.eval.fvd import I3DFeatures
    from vargen.eval.i3d import I3D
    net = I3D().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    with pytest.warns(Warning):
        torch.jit.trace(net, torch.zeros(1, 3, 8, 32, 32)).save(str(tmp_path / "i3d.pt"))
    features = I3DFeatures(tmp_path / "i3d.pt", resolution=32)
    assert features.verified is False  # read as data: never run, so never compared
    for key, value in net.state_dict().items():
        assert torch.equal(features.net.state_dict()[key], value), key


def test_poisoned_hub_cache_pickle_never_runs(tmp_path, marker, monkeypatch):
    from vargen.eval import recon
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    with open(hub / "checkpoints" / recon.ALEXNET_FILE, "wb") as f:
        pickle.dump({"features.0.weight": _Touch(marker)}, f)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    images = torch.zeros(2, 3, 32, 32)

    class Identity(torch.nn.Module):
        def encode(self, x):
            return x

        def decode(self, z):
            return z
    with pytest.raises(WeightsError, match="alexnet-owt-7be5be79.pth.*sha256"):
        recon.reconstruction_metrics(Identity(), images, fid=False)
    # A file whose name pins its own hash still goes through weights_only=True.
    named = hub / "checkpoints" / "x.pth"
    os.replace(hub / "checkpoints" / recon.ALEXNET_FILE, named)
    prefix = loaders.hashlib.sha256(named.read_bytes()).hexdigest()[:8]
    pinned = named.rename(hub / "checkpoints" / f"poison-{prefix}.pth")
    with pytest.raises(WeightsError, match="weights_only=True"):
        loaders.load_torch_hub_file(pinned)


def test_poisoned_hub_cache_pickle_never_runs_from_vargen_recon(tmp_path, marker, monkeypatch, capsys):
    from PIL import Image
    from vargen.eval import recon
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    with open(hub / "checkpoints" / recon.ALEXNET_FILE, "wb") as f:
        pickle.dump(_Touch(marker), f)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    assert main(["recon", "--tokenizer", "vq-mnist", "--no-fid", "--data", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert recon.ALEXNET_FILE in err[-1] and "error:" in err[-1], err


def test_hub_cache_file_with_its_pinned_hash_loads(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"w": torch.ones(2)}, path)
    prefix = loaders.hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    pinned = path.rename(tmp_path / f"net-{prefix}.pth")
    assert torch.equal(loaders.load_torch_hub_file(pinned)["w"], torch.ones(2))


# ------------------------------------------------------------------------------ one loader module
PICKLE_CALLS = {("torch", "load"), ("jit", "load"), ("pickle", "load"), ("pickle", "loads"),
                ("pickle", "Unpickler"), ("torch.jit", "load"), ("serialization", "load")}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def pickle_capable_calls(path: Path):
    """``(line, what)`` of every torch.load / torch.jit.load / pickle.load(s) / pickle.Unpickler
    (called or subclassed) / numpy.load(allow_pickle not False) in a file, aliases included."""
    tree = ast.parse(path.read_text(), str(path))
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "pickle", "torch.jit", "numpy",
                                                                "torch.serialization", "_pickle", "dill"):
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    found = []
    for node in ast.walk(tree):
        targets = [node.func] if isinstance(node, ast.Call) else list(node.bases) if isinstance(node, ast.ClassDef) else []
        for target in targets:
            name = _dotted(target)
            name = aliases.get(name.split(".")[0], name.split(".")[0]) + name[len(name.split(".")[0]):]
            parts = name.split(".")
            if len(parts) < 2:
                continue
            head, last = ".".join(parts[:-1]), parts[-1]
            if (head.split(".")[-1], last) in PICKLE_CALLS or head in ("pickle", "_pickle", "dill") \
                    and last in ("load", "loads", "Unpickler"):
                found.append((node.lineno, name))
            elif last == "load" and head in ("np", "numpy") and isinstance(node, ast.Call):
                flag = [k for k in node.keywords if k.arg == "allow_pickle"]
                if flag and not (isinstance(flag[0].value, ast.Constant) and flag[0].value.value is False):
                    found.append((node.lineno, f"{name}(allow_pickle=...)"))
    return found


def test_every_pickle_capable_load_is_in_the_loader_module():
    outside = []
    for folder in ("vargen", "models", "samplers", "eval"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path != LOADER:
                outside += [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in pickle_capable_calls(path)]
    assert not outside, "route these through vargen/loaders.py:\n" + "\n".join(outside)
    assert {what for _, what in pickle_capable_calls(LOADER)} >= {"torch.load", "torch.jit.load"}


def test_the_walk_sees_aliases_and_subclasses(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import pickle\nfrom torch import load as L\nimport numpy as np\n"
                     "class U(pickle.Unpickler): pass\nL('x')\nnp.load('y', allow_pickle=True)\n"
                     "np.load('z')\ntorch.jit.load('w')\n")
    assert [line for line, _ in pickle_capable_calls(probe)] == [4, 5, 6, 8]


# ------------------------------------------------------------------------------ nonsense weights
@pytest.mark.parametrize("poison, expected", [
    (lambda sd: {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in sd.items()},
     "non-finite"),
    (lambda sd: {k: v.to(torch.int32) if v.is_floating_point() else v for k, v in sd.items()}, "torch.int32"),
    (lambda sd: {**sd, next(iter(sd)): torch.full_like(next(iter(sd.values())), float("inf"))}, "non-finite"),
])
def test_nan_and_integer_weights_are_refused_naming_file_and_tensor(tmp_path, poison, expected):
    import vargen
    model = vargen.create_model("llamagen-tiny")
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in poison(model.state_dict()).items()}, str(path))
    with pytest.raises(WeightsError, match=expected) as e:
        load_from(type(model), model.config, path)
    assert "bad.safetensors" in str(e.value) and "tensor '" in str(e.value)
