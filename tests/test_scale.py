"""Scale-out training on CPU with gloo: FSDP2 (2 processes) == 1 process for a discrete and a
continuous family, kill -9 of an FSDP run resumed on 2 and on 1 process, gradient accumulation
and checkpointing change no gradient, streaming shard caches and their released augmentations.

Two ``torchrun`` launches in all (each costs two torch imports): the killed run, and one launch
that resumes it on 2 processes and runs the other 2-process jobs in the same process group.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from vargen.data import cache
from vargen.training import TrainConfig, train
from vargen.training.sharded_ckpt import SHARDED_NAME, complete_steps
from vargen.training.sharding import checkpoint_blocks, units
from vargen.training.steps import forward_backward

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# fp32 on CPU: the 2-process gradient is a mean of two half-batch means reduced by gloo, the
# 1-process one a single mean; sums in another order differ by a few ulp per step (~1e-7 here).
ATOL = 1e-5

# The worker patches a continuous model's loss to draw its noise per sample, seeded by the sample
# itself: the draws then do not depend on how the batch is split over processes or micro-batches,
# so a 2-process run must equal a 1-process one exactly as a noise-free loss does.
WORKER = textwrap.dedent('''
    import json, sys
    import torch, torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_scale import per_sample_noise
    from vargen.training import TrainConfig, train
    dist.init_process_group("gloo")
    for job in json.loads(sys.argv[1]):
        if job.pop("per_sample_noise", False):
            per_sample_noise()
        train(TrainConfig(**job))
    dist.destroy_process_group()
''')


def per_sample_noise() -> None:
    """Make ``cont-ar``'s ``training_loss`` a mean of per-sample losses, each drawing its noise
    after ``torch.manual_seed`` of a hash of that sample (test-only; the family is unchanged)."""
    from vargen.models.cont_ar import ContAR
    if getattr(ContAR.training_loss, "per_sample", False):
        return
    original = ContAR.training_loss

    def loss(self, latents, labels):
        losses = []
        for x, y in zip(latents.split(1), labels.split(1)):
            torch.manual_seed(int((x.double().sum() * 1e6).round().item()) % (2**31) + int(y))
            losses.append(original(self, x, y)[0])
        mean = torch.stack(losses).mean()
        return mean, {"flow_mse": mean.item()}
    loss.per_sample = True
    ContAR.training_loss = loss


def job(model: str, data: Path, out: Path, **kw) -> dict:
    """A 6-step run whose gradients are always clipped (norm ~0.7 > 0.05): the sharded clip must
    use the norm of the whole gradient."""
    base = dict(model=model, data=str(data), out=str(out), steps=6, batch_size=8, lr=2e-3, ckpt_every=2,
                log_every=2, ema_decay=0.9, seed=3, strategy="fsdp", progress=False, grad_clip=0.05,
                overrides={"class_dropout_prob": 0.0})
    return {**base, **kw}


def weights(run: Path) -> dict:
    return load_file(str(run / "final" / "model.safetensors"))


def assert_close(a: dict, b: dict, atol: float = ATOL) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("data")
    g = torch.Generator().manual_seed(0)
    cache.save_token_file(root / "ids.safetensors", torch.randint(0, 64, (40, 4, 4), generator=g),
                          torch.randint(0, 10, (40,), generator=g))
    cache.save_token_file(root / "latents.safetensors", torch.randn(40, 4, 4, 4, generator=g),
                          torch.randint(0, 10, (40,), generator=g))
    return {"ids": root / "ids.safetensors", "latents": root / "latents.safetensors", "root": root}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data) -> Path:
    """kill -9 of a 2-process FSDP run after its first complete sharded checkpoint; then one
    torchrun resumes it on 2 processes and runs the uninterrupted jobs."""
    root = tmp_path_factory.mktemp("runs")
    worker = root / "worker.py"
    worker.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    cut = job("llamagen-tiny", data["ids"], root / "cut")
    proc = subprocess.Popen([*TORCHRUN, str(worker), json.dumps([cut])], env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not complete_steps(root / "cut"):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the run never wrote a checkpoint"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (root / "cut" / "final").exists()  # killed inside the run
    shutil.copytree(root / "cut", root / "cut1")  # to resume on one process
    jobs = [cut, job("llamagen-tiny", data["ids"], root / "whole"),
            job("cont-ar-tiny", data["latents"], root / "cont", steps=3, per_sample_noise=True,
                accum=2, grad_checkpointing=True)]
    done = subprocess.run([*TORCHRUN, str(worker), json.dumps(jobs)], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (root / "resume_stderr.txt").write_text(done.stderr)
    return root


def test_fsdp_two_processes_equal_one_process_discrete(runs, data, tmp_path):
    train(TrainConfig(**job("llamagen-tiny", data["ids"], tmp_path, strategy="ddp")))
    assert_close(weights(runs / "whole"), weights(tmp_path))
    log = [json.loads(line) for line in (runs / "whole" / "log.jsonl").read_text().splitlines()]
    speed = log[-1]["speed"]
    assert speed["images_per_s"] > 0 and speed["tokens_per_s"] == pytest.approx(16 * speed["images_per_s"], rel=1e-3)
    single = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    for a, b in zip(log, single):  # the sharded clip uses the norm of the whole gradient
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    # parameters + gradients + AdamW state per rank: half of the replica's, up to the uneven split
    assert speed["state_mib"] == pytest.approx(single[-1]["speed"]["state_mib"] / 2, rel=0.02)
    assert "2 x CPU" in (runs / "whole" / "final" / "README.md").read_text()


def test_fsdp_two_processes_equal_one_process_continuous(runs, data, tmp_path, monkeypatch):
    from vargen.models.cont_ar import ContAR
    monkeypatch.setattr(ContAR, "training_loss", ContAR.training_loss)  # restored after the test
    per_sample_noise()
    train(TrainConfig(**job("cont-ar-tiny", data["latents"], tmp_path, steps=3, strategy="ddp")))
    assert_close(weights(runs / "cont"), weights(tmp_path))


def test_killed_fsdp_run_resumes_on_two_and_on_one_process(runs, data, capfd):
    assert "resumed from step" in (runs / "resume_stderr.txt").read_text()
    assert_close(weights(runs / "cut"), weights(runs / "whole"))
    saved = complete_steps(runs / "cut1")
    assert len(saved) == 1 and len(list(saved[0].glob("*.distcp"))) == 2  # one shard file per rank
    capfd.readouterr()
    train(TrainConfig(**job("llamagen-tiny", data["ids"], runs / "cut1")))
    assert "saved by 2 processes" in capfd.readouterr().err
    assert_close(weights(runs / "cut1"), weights(runs / "whole"))
    assert [p.name for p in (runs / "cut1" / SHARDED_NAME).iterdir()] == ["step-00000006"]  # older removed


def test_sharded_checkpoint_refuses_another_strategy(runs, data):
    with pytest.raises(ValueError, match="different run"):
        train(TrainConfig(**job("llamagen-tiny", data["ids"], runs / "whole", lr=1e-3)))
    from vargen.training import CheckpointError
    ddp_run = runs / "whole_ddp"
    train(TrainConfig(**job("llamagen-tiny", data["ids"], ddp_run, strategy="ddp", steps=2)))
    with pytest.raises(CheckpointError, match="--strategy ddp"):
        train(TrainConfig(**job("llamagen-tiny", data["ids"], ddp_run, steps=2)))
    with pytest.raises(CheckpointError, match="--strategy fsdp"):
        train(TrainConfig(**job("llamagen-tiny", data["ids"], runs / "whole", strategy="ddp")))


# ------------------------------------------------------------------------------- one process
def tiny_llamagen() -> nn.Module:
    import vargen
    torch.manual_seed(0)
    return vargen.create_model("llamagen-tiny", class_dropout_prob=0.0)


def grads(model: nn.Module, inputs, labels, accum: int = 1) -> dict:
    from vargen.training.loop import Objective
    model.zero_grad(set_to_none=True)
    forward_backward(Objective(model), inputs, labels, accum, torch.autocast("cpu", enabled=False), 0)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_accumulation_equals_the_whole_batch():
    model = tiny_llamagen()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 64, (8, 4, 4), generator=g), torch.randint(0, 10, (8,), generator=g)
    whole = grads(model, x, y)
    for k in (2, 4):
        assert_close(grads(model, x, y, accum=k), whole, atol=1e-6)
    with pytest.raises(ValueError, match="--accum 3"):
        grads(model, x, y, accum=3)


def test_gradient_checkpointing_changes_no_gradient():
    model = tiny_llamagen()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randint(0, 64, (4, 4, 4), generator=g), torch.randint(0, 10, (4,), generator=g)
    plain = grads(model, x, y)
    checked = copy.deepcopy(model)
    assert checkpoint_blocks(checked) == 2
    assert_close(grads(checked, x, y), plain, atol=1e-6)


def test_units_are_found_without_knowing_the_family():
    import vargen
    for name, count in (("llamagen-tiny", 2), ("cont-ar-tiny", 4), ("xar-tiny", 2)):
        blocks = units(vargen.create_model(name))
        assert len(blocks) == count and all(not isinstance(b, nn.ModuleList) for b in blocks)

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def fsdp_units(self):
            return [self.a]
    custom = Custom()
    assert units(custom) == [custom.a]
