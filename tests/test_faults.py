"""Faults inside a run, in the test process: a refused eval.sample run leaves nothing behind, a
killed shard continues from its part files, unreadable or unsafe run checkpoints, checkpoints
without the null class row, an unreachable Hub. (kill -9 of real processes: test_resume_kill.py.)"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from huggingface_hub import constants

import vargen
from vargen.cli import main as cli_main
from vargen.eval import sample as eval_sample
from vargen.eval.sample import MANIFEST, generate_samples
from vargen.hub import load_state_dict_strict, resolve_file
from vargen.training import CHECKPOINT_NAME, CheckpointError, TrainConfig, train

from test_eval import tiny_pipeline


# ------------------------------------------------------------------------------- eval.sample
def test_too_many_classes_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    import vargen.pipeline
    monkeypatch.setattr(vargen.pipeline, "load_pipeline", lambda name, device, **kw: tiny_pipeline())
    out = tmp_path / "run"
    argv = ["--model", "tiny", "--num-samples", "4", "--batch-size", "2", "--shard-size", "2",
            "--no-progress", "--out", str(out)]
    assert eval_sample.main(argv + ["--num-classes", "20"]) == 2
    assert "--num-classes 20 exceeds the 10 classes of tiny" in capsys.readouterr().err
    assert not out.exists()
    assert eval_sample.main(argv) == 0 and (out / "samples.npz").is_file()  # the corrected rerun


def test_a_manifest_without_shards_is_reused_by_another_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"pipeline": "other", "num_samples": 99}))
    merged = generate_samples(tiny_pipeline(), 4, out, batch_size=2, shard_size=2, progress=False)
    assert json.loads((out / MANIFEST).read_text())["num_samples"] == 4
    with pytest.raises(ValueError, match="holds shards of a different run"):  # now it has shards
        generate_samples(tiny_pipeline(), 6, out, batch_size=2, shard_size=2, progress=False)
    assert merged.exists()


class Killed(Exception):
    pass


def test_a_killed_shard_continues_from_its_batches_to_the_same_bytes(tmp_path, monkeypatch, capsys):
    pipe = tiny_pipeline()
    kw = dict(seed=1, shard_size=6, progress=False)
    whole = generate_samples(pipe, 9, tmp_path / "whole", batch_size=2, **kw)
    generate = pipe.generate
    calls = []

    def dies_on_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise Killed
        return generate(*args, **kwargs)
    monkeypatch.setattr(pipe, "generate", dies_on_third_batch)
    with pytest.raises(Killed):
        generate_samples(pipe, 9, tmp_path / "cut", batch_size=2, **kw)
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == [
        MANIFEST, "part-000000000-000000002.npz", "part-000000002-000000004.npz"]
    monkeypatch.setattr(pipe, "generate", generate)
    capsys.readouterr()
    cut = generate_samples(pipe, 9, tmp_path / "cut", batch_size=2, **kw)
    assert "shard 0 continues at sample 4" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == sorted(p.name for p in (tmp_path / "whole").iterdir())
    for name in ("samples.npz", "shard-000000.npz", "shard-000001.npz"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    # Parts of another batch size are dropped: the shard is rebuilt at this run's batches.
    (tmp_path / "cut" / "shard-000001.npz").unlink()
    eval_sample.save_npz(eval_sample.part_path(tmp_path / "cut", 6, 7), images=np.zeros((1, 8, 8, 3), np.uint8))
    generate_samples(pipe, 9, tmp_path / "cut", batch_size=2, **kw)
    assert cut.read_bytes() == whole.read_bytes()
    assert not list((tmp_path / "cut").glob("part-*"))


# ------------------------------------------------------------------------------- checkpoints
@pytest.fixture()
def tokens(tmp_path):
    from vargen.data import cache
    path = tmp_path / "tokens.safetensors"
    g = torch.Generator().manual_seed(0)
    cache.save_token_file(path, torch.randint(0, 64, (16, 4, 4), generator=g), torch.randint(0, 10, (16,), generator=g))
    return path


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if unpickled


@pytest.mark.parametrize("kind", ["truncated", "malicious", "not-a-run"])
def test_an_unusable_run_checkpoint_is_one_clear_error(tmp_path, tokens, kind, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "llamagen-tiny", "--data", str(tokens), "--steps", "2", "--batch-size", "4",
            "--no-progress", "--out", str(out)]
    if kind == "truncated":
        assert cli_main(argv) == 0
        data = (out / CHECKPOINT_NAME).read_bytes()
        (out / CHECKPOINT_NAME).write_bytes(data[: len(data) // 2])
    else:
        out.mkdir()
        marker = tmp_path / "pwned"
        torch.save({"model": RunsCode(str(marker))} if kind == "malicious" else {"weights": torch.ones(2)},
                   out / CHECKPOINT_NAME)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out / CHECKPOINT_NAME) in err
    assert "delete it" in err and "--out" in err
    assert {"truncated": "truncated or corrupt", "malicious": "refused by torch.load(weights_only=True)",
            "not-a-run": "not a vargen train checkpoint"}[kind] in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(CheckpointError):
        train(TrainConfig(model="llamagen-tiny", out=str(out), data=str(tokens), steps=2, batch_size=4,
                          progress=False))


# ------------------------------------------------------------------------------- null class
def without_null_row(name: str):
    model = vargen.create_model(name, class_dropout_prob=0.0)
    state = model.state_dict()
    key = "cls_embedding.embedding_table.weight"
    state[key] = state[key][: model.num_classes].clone()  # as the official LabelEmbedder at dropout 0
    return state


def test_a_checkpoint_without_the_null_row_loads_and_refuses_cfg(tmp_path):
    from vargen.samplers import create_sampler
    from vargen.seeding import SampleRNG
    state = without_null_row("llamagen-tiny")
    model = vargen.create_model("llamagen-tiny")  # the default (dropout 0.1): the table decides
    load_state_dict_strict(model, state)
    assert model.null_class is None and not model.cls_embedding.has_null
    model.save_pretrained(tmp_path / "m")
    loaded = vargen.create_model("llamagen-tiny", pretrained=str(tmp_path / "m")).eval()
    assert loaded.cls_embedding.embedding_table.num_embeddings == 10
    labels, rng = torch.tensor([3, 7]), SampleRNG(0, range(2))
    assert create_sampler("raster")(loaded, labels, rng).shape == (2, 4, 4)
    with pytest.raises(ValueError, match="needs a null class.*class_dropout_prob=0.*cfg_scale=1"):
        create_sampler("raster", cfg_scale=2.0)(loaded, labels, SampleRNG(0, range(2)))
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 9\] \(10 classes\); got 10"):
        loaded.check_labels(torch.tensor([10]))
    with pytest.raises(ValueError, match="class dropout 0.1 needs the null class"):
        loaded.train().cls_embedding(labels)


def test_flow_sampler_refuses_cfg_without_the_null_row():
    from vargen.samplers import create_sampler
    from vargen.seeding import SampleRNG
    model = vargen.create_model("xar-tiny")
    load_state_dict_strict(model, without_null_row("xar-tiny"))
    with pytest.raises(ValueError, match="needs a null class"):
        create_sampler("flow", cfg_scale=3.0, num_steps=2)(model.eval(), torch.tensor([1]), SampleRNG(0, range(1)))


# ------------------------------------------------------------------------------- network
@pytest.fixture()
def unreachable_hub(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_unreachable_hub_fails_at_once_with_the_fix(unreachable_hub, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"cannot be reached \(127.0.0.1:9: Connection refused\)"
                                                r".*huggingface-cli download FoundationVision/LlamaGen"):
        vargen.create_model("llamagen-vq16", pretrained=True)


def test_unreachable_hub_still_serves_the_cache(unreachable_hub, tmp_path):
    commit = "a" * 40
    repo = tmp_path / "models--someone--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    path = resolve_file("someone/tiny", "config.json", cache_dir=str(tmp_path))
    assert os.path.samefile(path, repo / "snapshots" / commit / "config.json")
