"""Issue 31's silent, raw-traceback, endless and late cases, in tests/test_bad_cli.py's table style
(each row: exit 2, one ``prog: error:`` line naming the input, no traceback, nothing written), the
API cases beside them, and Ctrl-C (SIGINT) of ``vargen sample``, ``python -m vargen.eval.sample``
and ``vargen train``: exit 130, one ``interrupted`` line, nothing half-written, resumable where
promised."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import vargen
from bad_input_assets import assets, snapshot  # noqa: F401,F811 (a fixture)
from vargen import pipeline as vargen_pipeline
from vargen.cli import main as vargen_main
from vargen.data import cache
from vargen.eval import sample as eval_sample
from vargen.eval.stats import load_npz

TRAIN = "train --model llamagen-tiny --data {a}/tokens.safetensors --steps 1 --batch-size 4 --no-progress"
SAMPLE = "sample --model nar-mnist --classes 0 --out {o}/s.png"
EVAL_SAMPLE = "--model nar-mnist --batch-size 2 --shard-size 2 --no-progress --out {o}/run"
CLI = [
    ("train min-lr above lr", "vargen", TRAIN + " --lr 1e-4 --min-lr 1e-3 --out {o}/run", "min_lr"),
    ("train image-size 100000", "vargen", TRAIN + " --image-size 100000 --out {o}/run", "--image-size"),
    ("train batch-size 10000000", "vargen", TRAIN.replace("--batch-size 4", "--batch-size 10000000")
     + " --out {o}/run", "--batch-size"),
    ("train override dim=0", "vargen", TRAIN + " --override dim=0 --out {o}/run", "dim"),
    ("train float labels", "vargen", TRAIN.replace("tokens.safetensors", "float_labels.safetensors")
     + " --out {o}/run", "float_labels.safetensors"),
    ("recon image-size 100000", "vargen", "recon --tokenizer vq-mnist --no-fid --image-size 100000", "--image-size"),
    ("ref-stats save-every 0", "vargen", "ref-stats {a}/good.npz {o}/ref.npz --save-every 0", "--save-every"),
    ("ref-stats save-every -5", "vargen", "ref-stats {a}/good.npz {o}/ref.npz --save-every -5", "--save-every"),
    ("ref-stats out .txt", "vargen", "ref-stats {a}/good.npz {o}/ref.txt --inception-weights random", "ref.txt"),
    ("fvd one clip per side", "vargen", "fvd {a}/one_clip.npz {a}/one_clip.npz --i3d-weights random "
     "--num-frames 4 --resolution 16", "at least 2 clips"),
    ("fid pickled npz", "vargen", "fid {a}/pickled.npz {a}/good.npz --inception-weights random", "pickled.npz"),
    ("sample num-steps 1e8", "vargen", SAMPLE + " --num-steps 100000000", "--num-steps"),
    ("sample image pipeline to mp4", "vargen", "sample --model nar-mnist --classes 0 --out {o}/s.mp4", "s.mp4"),
    ("sample video pipeline to png", "vargen", "sample --model nar-video-mnist --classes 0 --out {o}/s.png", "s.png"),
    ("eval.sample num-samples 1e8", "eval.sample", "--num-samples 100000000 " + EVAL_SAMPLE, "--allow-long-run"),
]
MAINS = {"vargen": vargen_main, "eval.sample": eval_sample.main}


@pytest.fixture(scope="module")
def more(assets):
    """The files these rows add to the shared assets."""
    root = assets.root
    ids = torch.randint(0, 64, (8, 4, 4), generator=torch.Generator().manual_seed(0))
    from safetensors.torch import save_file
    save_file({"tokens": ids, "labels": torch.full((8,), 0.5)}, str(root / "float_labels.safetensors"))
    np.savez(root / "one_clip.npz", arr_0=np.zeros((1, 4, 16, 16, 3), np.uint8))
    np.savez(root / "pickled.npz", arr_0=np.array([{"a": 1}], dtype=object))
    return assets


@pytest.mark.parametrize("command, template, text", [pytest.param(*row[1:4], id=row[0]) for row in CLI])
def test_cli_refuses(more, tmp_path, capsys, monkeypatch, command, template, text):
    def never(*args, **kwargs):
        raise AssertionError("work started before the input was refused")
    monkeypatch.setattr(vargen_pipeline.Pipeline, "generate", never)
    monkeypatch.setattr(cache, "extract_tokens", never)
    before = snapshot(more.root, tmp_path)
    status = MAINS[command](template.format(a=more.root, o=tmp_path).split())
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert "Traceback" not in err
    assert "error:" in lines[-1] and text in lines[-1], err
    assert snapshot(more.root, tmp_path) == before


# ------------------------------------------------------------------------------- the API cases
def test_nan_output_is_refused_not_identical_images():
    pipe = vargen.load_pipeline("nar-mnist")
    with torch.no_grad():
        pipe.transformer.lm_head.weight.fill_(float("nan")) if hasattr(pipe.transformer, "lm_head") else \
            next(pipe.transformer.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN"):
        pipe.generate([0, 1], seed=0, progress=False)


def test_missing_network_folder_of_a_saved_pipeline_is_named(tmp_path):
    import shutil
    pipe = vargen.load_pipeline("nar-mnist")
    folder = pipe.save_pretrained(tmp_path / "pipe")
    network = [p for p in folder.iterdir() if p.is_dir() and p.name in ("transformer", "generator")][0]
    shutil.rmtree(network)
    with pytest.raises(FileNotFoundError, match=f"{network.name} does not exist"):
        vargen.load_pipeline(str(folder))


def test_bad_ids_in_a_cached_token_file_name_the_cache_file(tmp_path):
    from vargen.training.data import check_data
    model = vargen.create_model("llamagen-tiny")
    data = {"inputs": torch.full((2, 4, 4), 1000), "labels": torch.zeros(2, dtype=torch.long),
            "file": str(tmp_path / "mnist-train-32px-abc.safetensors")}
    with pytest.raises(ValueError, match="mnist-train-32px-abc.safetensors.*delete it"):
        check_data(model, data, "mnist")


def test_read_only_token_cache_is_found_before_tokenizing(assets, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("tokenized before the cache folder was checked")
    monkeypatch.setattr(cache, "extract_tokens", never)
    monkeypatch.setattr(cache, "dataset_tensors", never)
    tokenizer = vargen.create_model("vq-tiny") if "vq-tiny" in vargen.list_models() else \
        vargen.create_model("vq-mnist", pretrained=True)
    with pytest.raises(PermissionError, match="token cache"):
        cache.cached_tokens(tokenizer, "mnist", "heldout", cache_dir=assets.readonly / "tokens")


def test_pickled_npz_names_the_file(more):
    with pytest.raises(ValueError, match="pickled.npz.*pickled Python objects"):
        load_npz(more.root / "pickled.npz")


# ------------------------------------------------------------------------------- Ctrl-C
ENV = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}


def interrupt_when(argv, ready, err_path: Path, timeout: float = 600) -> str:
    """Run ``python -m argv``, SIGINT it once ``ready()`` holds; its stderr after it exits 130."""
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", *argv], env=ENV, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"ended ({proc.returncode}) early: {err_path.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "never reached the interrupt point"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err_path.read_text()
    assert proc.returncode == 130, text[-2000:]
    assert "Traceback" not in text and text.count("interrupted") == 1, text[-2000:]
    return text.replace("\r", "\n").strip().splitlines()[-1]


def test_ctrl_c_vargen_sample(tmp_path):
    err = tmp_path.parent / f"{tmp_path.name}.err"
    argv = ["vargen.cli", "sample", "--model", "nar-mnist", "--classes", *map(str, range(10)), "--per-class", "100",
            "--batch-size", "1", "--out", str(tmp_path / "s.png")]
    last = interrupt_when(argv, lambda: "sampling nar-mnist" in err.read_text(), err)
    assert last == "vargen sample: interrupted"
    assert list(tmp_path.iterdir()) == []  # no grid, no temporary file


def test_ctrl_c_eval_sample_then_resume(tmp_path):
    err = tmp_path / "err.txt"
    out = tmp_path / "run"
    argv = ["--model", "nar-mnist", "--num-samples", "60", "--batch-size", "2", "--shard-size", "2", "--out", str(out)]
    shards = lambda: len(list(out.glob("*.npz"))) if out.is_dir() else 0  # noqa: E731
    last = interrupt_when(["vargen.eval.sample", *argv], lambda: shards() >= 1, err)
    assert last == "python -m vargen.eval.sample: interrupted; resume with the same command"
    assert not (out / "samples.npz").exists() and not list(out.rglob("*.tmp"))
    assert eval_sample.main(argv + ["--no-progress"]) == 0  # the same command finishes the run
    assert load_npz(out / "samples.npz")["arr_0"].shape[0] == 60


def test_ctrl_c_vargen_train_then_resume(assets, tmp_path):
    err = tmp_path / "err.txt"
    out = tmp_path / "run"
    argv = ["train", "--model", "llamagen-tiny", "--data", str(assets.root / "tokens.safetensors"), "--steps", "200",
            "--batch-size", "4", "--ckpt-every", "1", "--log-every", "1", "--schedule", "constant", "--out", str(out)]
    last = interrupt_when(["vargen.cli", *argv], lambda: (out / "checkpoint.pt").is_file(), err)
    assert last == "vargen train: interrupted; resume with the same command"
    from vargen.training.checkpoint import load_checkpoint
    assert 1 <= load_checkpoint(out / "checkpoint.pt")["step"] < 200  # whole, mid-run
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary file left
    assert vargen_main(argv + ["--no-progress"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 200
