"""kill -9 of every long-running command at a point inside its run (the first checkpoint, shard or
progress file it writes), then the same command again: it says it resumed, and its results are
byte-identical to an uninterrupted run's. Also: two ``vargen sample`` processes writing one --out.

Only the killed runs are subprocesses (each costs a torch import); reruns and uninterrupted runs
call the CLIs' ``main(argv)`` in the test process.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pytest
import torch

from vargen.cli import main as cli_main
from vargen.eval import sample as eval_sample
from vargen.eval.stats import save_npz

# The killed run uses this process's thread count: the reruns run in-process, and float sums
# (convolutions, Inception features) are only reproducible at the same number of threads.
ENV = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}
SAFETY_TIMEOUT_S = 900  # only against a hung child; nothing here asserts a duration


def kill_when(argv: List[str], ready: Callable[[], bool]) -> None:
    """Run ``python -m argv...``, SIGKILL it as soon as ``ready()`` holds (polled every 10 ms)."""
    proc = subprocess.Popen([sys.executable, "-m", *argv], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + SAFETY_TIMEOUT_S
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"{argv[0]} ended (status {proc.returncode}) before the kill point: "
                            f"{proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{argv[0]} never reached the kill point")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


def digests(folder: Path, names) -> Dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}


def visible(folder: Path) -> List[str]:
    """Files a reader could pick up (temp files are dot-named and never read)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def log_without_wall_time(run: Path) -> list:
    return [{k: v for k, v in json.loads(line).items() if k not in ("wall_s", "speed")}  # timings
            for line in (run / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------- vargen train
@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    from vargen.data import cache
    path = tmp_path_factory.mktemp("data") / "tokens.safetensors"
    g = torch.Generator().manual_seed(0)
    cache.save_token_file(path, torch.randint(0, 64, (40, 4, 4), generator=g), torch.randint(0, 10, (40,), generator=g))
    return path


def train_argv(model_args: List[str], steps: int, ckpt_every: int, out: Path) -> List[str]:
    return ["train", *model_args, "--steps", str(steps), "--ckpt-every", str(ckpt_every), "--log-every", "1",
            "--seed", "3", "--no-progress", "--out", str(out)]


def check_train_resumes(tmp_path: Path, capfd, model_args: List[str], steps: int, ckpt_every: int) -> None:
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    kill_when(["vargen.cli", *train_argv(model_args, steps, ckpt_every, cut)], (cut / "checkpoint.pt").exists)
    assert not (cut / "final").exists()  # killed inside the run
    capfd.readouterr()
    assert cli_main(train_argv(model_args, steps, ckpt_every, cut)) == 0
    resumed = [line for line in capfd.readouterr().err.splitlines() if "resumed from step" in line]
    assert len(resumed) == 1, resumed
    step = int(resumed[0].split("resumed from step ")[1].split()[0])
    assert 0 < step < steps and step % ckpt_every == 0
    assert cli_main(train_argv(model_args, steps, ckpt_every, whole)) == 0
    names = ["final/model.safetensors", "final/config.json"]
    assert digests(cut, names) == digests(whole, names)
    assert log_without_wall_time(cut) == log_without_wall_time(whole)  # killed lines dropped, redone
    a, b = (torch.load(r / "checkpoint.pt", weights_only=True) for r in (cut, whole))
    assert a.keys() == b.keys() and a["step"] == b["step"] == steps
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert visible(cut) == visible(whole)


def test_train_generator_resumes_after_kill(tmp_path, capfd, tokens):
    check_train_resumes(tmp_path, capfd, ["--model", "llamagen-tiny", "--data", str(tokens), "--batch-size", "8",
                                          "--lr", "2e-3"], steps=60, ckpt_every=10)


def test_train_tokenizer_resumes_after_kill(tmp_path, capfd):
    check_train_resumes(tmp_path, capfd, ["--model", "llamagen-vq-tiny", "--data", "mnist", "--split", "heldout",
                                          "--batch-size", "4"], steps=12, ckpt_every=3)


# ------------------------------------------------------------------------------- eval.sample
def test_eval_sample_resumes_after_kill(tmp_path, capfd):
    def argv(out: Path) -> List[str]:
        return ["--model", "nar-mnist", "--num-samples", "24", "--batch-size", "2", "--shard-size", "8",
                "--seed", "5", "--no-progress", "--out", str(out)]
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    kill_when(["vargen.eval.sample", *argv(cut)], (cut / "shard-000000.npz").exists)
    assert not (cut / "samples.npz").exists()
    capfd.readouterr()
    assert eval_sample.main(argv(cut)) == 0 and (cut / "samples.npz").is_file()
    assert "vargen.eval.sample: resuming" in capfd.readouterr().err
    assert eval_sample.main(argv(whole)) == 0
    names = visible(whole)
    assert names == visible(cut) and "samples.npz" in names and "shard-000002.npz" in names
    assert digests(cut, names) == digests(whole, names)


# ------------------------------------------------------------------------------- ref-stats
def test_ref_stats_resumes_after_kill(tmp_path, capfd):
    g = torch.Generator().manual_seed(0)
    save_npz(tmp_path / "images.npz", arr_0=torch.randint(0, 256, (8, 32, 32, 3), generator=g, dtype=torch.uint8).numpy())

    def argv(out: Path) -> List[str]:
        return ["ref-stats", str(tmp_path / "images.npz"), str(out), "--inception-weights", "random",
                "--batch-size", "2", "--save-every", "2"]
    cut, whole = tmp_path / "cut.npz", tmp_path / "whole.npz"
    kill_when(["vargen.cli", *argv(cut)], Path(f"{cut}.progress").exists)
    assert not cut.exists()
    capfd.readouterr()
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        assert cli_main(argv(cut)) == 0
        assert "vargen ref-stats: resuming from" in capfd.readouterr().err
        assert cli_main(argv(whole)) == 0
    assert cut.read_bytes() == whole.read_bytes()
    assert not Path(f"{cut}.progress").exists()


# ------------------------------------------------------------------------------- concurrent writers
def test_two_sample_processes_on_one_out_each_write_a_whole_file(tmp_path):
    from PIL import Image

    def argv(seed: int, out: Path) -> List[str]:
        return ["sample", "--model", "nar-mnist", "--classes", "1", "7", "--per-class", "2",
                "--seed", str(seed), "--out", str(out)]
    shared = tmp_path / "shared" / "grid.png"
    shared.parent.mkdir()
    procs = [subprocess.Popen([sys.executable, "-m", "vargen.cli", *argv(seed, shared)], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for seed in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=SAFETY_TIMEOUT_S)
        assert proc.returncode == 0, err[-2000:]
    expected = []
    for seed in (0, 1):
        assert cli_main(argv(seed, tmp_path / f"seed{seed}.png")) == 0
        expected.append(np.asarray(Image.open(tmp_path / f"seed{seed}.png")))
    assert not np.array_equal(*expected)
    got = np.asarray(Image.open(shared))  # a whole PNG: one writer's, never a mix
    assert any(np.array_equal(got, e) for e in expected)
    assert sorted(p.name for p in shared.parent.iterdir()) == ["grid.png"]  # no temp file left
