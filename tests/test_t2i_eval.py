"""Prompt-file sampling (``python -m vargen.eval.sample --prompts FILE``): 2 gloo processes write the
same samples as 1, a run killed with SIGKILL resumes to the same bytes, sample i is prompt
i % P with noise from (seed, i)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

# Light imports only at module level: the spawned workers re-import this module.
from vargen.eval.sample_prompts import generate_prompt_samples, read_prompts
from test_eval import StubTokenizer, _arrays  # the class-conditional sampling test's stubs

PROMPTS = [f"the number {i}" for i in range(7)] + ["a red bicycle", "two cats", "a dog"]


def tiny_pipeline():
    """The same random toy t2i model and tiny T5 (byte tokenizer) in every process."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel
    import vargen
    from vargen.pipeline import Pipeline
    from vargen.text import T5TextEncoder
    torch.manual_seed(0)
    encoder = T5EncoderModel(T5Config(vocab_size=384, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4))
    model = vargen.create_model("llamagen-t2i-tiny")
    with torch.no_grad():
        model.output.weight.normal_(std=0.5)  # zero-initialised head: make the prompts matter
    return Pipeline(StubTokenizer(), model, "raster", dict(cfg_scale=4.0), "t2i-toy",
                    text_encoder=T5TextEncoder(encoder, ByT5Tokenizer()))


def _worker(rank, world_size, init_file, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        generate_prompt_samples(tiny_pipeline(), PROMPTS, out_dir, seed=3, batch_size=2, shard_size=3,
                                progress=False)
    finally:
        dist.destroy_process_group()


def test_prompt_file_formats(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n  two dogs \n")
    (tmp_path / "p.json").write_text('[{"caption": "a cat"}, "two dogs"]')
    assert read_prompts(str(tmp_path / "p.txt")) == read_prompts(str(tmp_path / "p.json")) == ["a cat", "two dogs"]
    (tmp_path / "e.txt").write_text("\n")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(str(tmp_path / "e.txt"))


def test_two_gloo_processes_equal_one_and_sample_i_is_prompt_i(tmp_path):
    pipe = tiny_pipeline()
    one = generate_prompt_samples(pipe, PROMPTS, tmp_path / "one", seed=3, batch_size=4, shard_size=3,
                                  progress=False)
    images, labels = _arrays(one)
    assert images.shape == (10, 8, 8, 3) and labels.tolist() == list(range(10))
    alone = pipe.generate(PROMPTS[5], seed=3, sample_offset=5)
    from vargen.images import to_uint8
    assert np.array_equal(to_uint8(alone).permute(0, 2, 3, 1).numpy()[0], images[5])
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "two")), nprocs=2, join=True)
    two = _arrays(tmp_path / "two" / "samples.npz")
    assert all(np.array_equal(a, b) for a, b in zip(two, (images, labels)))
    with pytest.raises(ValueError, match="different run"):  # another prompt list never resumes
        generate_prompt_samples(pipe, PROMPTS[::-1], tmp_path / "one", seed=3, shard_size=3, progress=False)


KILLED = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_t2i_eval import PROMPTS, tiny_pipeline
from vargen.eval.sample_prompts import generate_prompt_samples
torch.set_num_threads(1)
generate_prompt_samples(tiny_pipeline(), PROMPTS * 6, {out!r}, seed=3, batch_size=1, shard_size=20, progress=False)
"""


def test_a_killed_run_resumes_to_the_same_bytes(tmp_path):
    out = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED.format(tests=str(Path(__file__).parent), out=str(out))],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and not list(out.glob("shard-*.npz")) and not len(list(out.glob("part-*.npz"))) > 3:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before the kill point"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "samples.npz").exists()
    pipe = tiny_pipeline()
    resumed = generate_prompt_samples(pipe, PROMPTS * 6, out, seed=3, batch_size=1, shard_size=20, progress=False)
    whole = generate_prompt_samples(pipe, PROMPTS * 6, tmp_path / "whole", seed=3, batch_size=1, shard_size=20,
                                    progress=False)
    assert resumed.read_bytes() == whole.read_bytes()


def test_eval_sample_prompts_flag_is_the_prompt_run(tmp_path, monkeypatch, capsys):
    """``python -m vargen.eval.sample --prompts FILE`` (and its alias ``sample_prompts``) writes what
    generate_prompt_samples writes; without --prompts, --num-samples is required (exit 2)."""
    import vargen.speed
    from vargen.eval import sample, sample_prompts
    monkeypatch.setattr(vargen.speed, "load_fast_pipeline", lambda *a, **k: tiny_pipeline())
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS[:4]))
    argv = ["--model", "t2i-mnist", "--prompts", str(tmp_path / "p.txt"), "--seed", "3", "--batch-size", "2",
            "--shard-size", "3", "--no-progress"]
    assert sample.main(argv + ["--out", str(tmp_path / "cli")]) == 0
    assert sample_prompts.main(argv + ["--out", str(tmp_path / "alias")]) == 0
    api = generate_prompt_samples(tiny_pipeline(), PROMPTS[:4], tmp_path / "api", seed=3, batch_size=2,
                                  shard_size=3, progress=False)
    images, labels = _arrays(api)
    assert labels.tolist() == [0, 1, 2, 3]
    for run in ("cli", "alias"):
        got = _arrays(tmp_path / run / "samples.npz")
        assert np.array_equal(got[0], images) and np.array_equal(got[1], labels)
    assert sample.main(["--model", "t2i-mnist", "--out", str(tmp_path / "x")]) == 2
    assert "--num-samples is required" in capsys.readouterr().err
