"""Sharded checkpoints (torch.distributed.checkpoint) never unpickle code: their ``.metadata`` goes
through vargen.loaders.checkpoint_reader, and no other reader of such a folder exists."""
import ast
import os
import pickle
from pathlib import Path

import pytest
import torch

from vargen.loaders import RefusedPickle, checkpoint_reader

ROOT = Path(__file__).resolve().parents[1]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_real_checkpoint_reads_and_a_poisoned_metadata_is_refused(tmp_path):
    import torch.distributed.checkpoint as dcp
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.arange(6.0)}, checkpoint_id=str(tmp_path / "good"))
        state = {"w": torch.zeros(6)}
        dcp.load(state, storage_reader=checkpoint_reader(tmp_path / "good"))
    assert torch.equal(state["w"], torch.arange(6.0))
    marker = tmp_path / "PWNED"
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / ".metadata").write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(RefusedPickle, match="posix.system|os.system"):
        checkpoint_reader(tmp_path / "evil").read_metadata()
    assert not marker.exists()


def test_every_checkpoint_read_goes_through_the_safe_reader():
    bad = []
    for folder in ("vargen", "models", "samplers", "eval"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "loaders.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                keywords = {k.arg for k in node.keywords}
                if name == "FileSystemReader" or (name == "load" and "checkpoint_id" in keywords):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, f"read a checkpoint folder through vargen.loaders.checkpoint_reader: {bad}"
