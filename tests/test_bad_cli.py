"""Bad command lines: each row calls the command's ``main(argv)`` in this process and asserts exit
status 2, one ``prog: error: ...`` line naming the input, no traceback, and an output folder left
as it was; two rows run as subprocesses (each costs a torch import). The API's rows are in
tests/test_bad_inputs.py.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bad_input_assets import assets, snapshot  # noqa: F401,F811 (a fixture)
from vargen.cli import main as vargen_main
from vargen.cli import run_command
from vargen.eval import sample as eval_sample


# ------------------------------------------------------------------------------- the CLI rows
# (id, command, argv with {a} = assets folder, {o} = the row's empty output folder, {ro} = a
# read-only folder; text the error line must contain)
SAMPLE = "sample --model nar-mnist --classes 0 --out {o}/s.png"
FID = "fid {a}/good.npz {a}/stats.npz --inception-weights random"
TRAIN = "train --model llamagen-tiny --data {a}/tokens.safetensors --steps 1 --batch-size 4 --no-progress"
EVAL_SAMPLE = "--model nar-mnist --num-samples 2 --batch-size 2 --shard-size 2 --no-progress"
CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")  # a 5th item: marks
CLI = [
    ("sample cfg nan", "vargen", SAMPLE + " --cfg-scale nan", "--cfg-scale"),
    ("sample cfg inf", "vargen", SAMPLE + " --cfg-scale inf", "--cfg-scale"),
    ("sample cfg -1", "vargen", SAMPLE + " --cfg-scale -1", "--cfg-scale"),
    ("sample temperature nan", "vargen", SAMPLE + " --temperature nan", "--temperature"),
    ("sample top-p nan", "vargen", SAMPLE + " --top-p nan", "--top-p"),
    ("sample top-k 2.5", "vargen", SAMPLE + " --top-k 2.5", "--top-k"),
    ("sample num-steps 2.5", "vargen", SAMPLE + " --num-steps 2.5", "--num-steps"),
    ("sample seed 1.5", "vargen", SAMPLE + " --seed 1.5", "--seed"),
    ("sample seed str", "vargen", SAMPLE + " --seed one", "--seed"),
    ("sample classes 10", "vargen", "sample --model nar-mnist --classes 10 --out {o}/s.png", "[0, 9]"),
    ("sample classes -1", "vargen", "sample --model nar-mnist --classes -1 --out {o}/s.png", "[0, 9]"),
    ("sample classes str", "vargen", "sample --model nar-mnist --classes three --out {o}/s.png", "--classes"),
    ("sample per-class huge", "vargen", SAMPLE + " --per-class 100000000", "python -m vargen.eval.sample"),
    ("sample per-class 0", "vargen", SAMPLE + " --per-class 0", "--per-class"),
    ("sample batch-size 0", "vargen", SAMPLE + " --batch-size 0", "--batch-size"),
    ("sample fps nan", "vargen", SAMPLE + " --fps nan", "--fps"),
    ("sample out dir", "vargen", "sample --model nar-mnist --classes 0 --out {a}/existing_dir", "existing_dir"),
    ("sample out read-only", "vargen", "sample --model nar-mnist --classes 0 --out {ro}/s.png", "--out"),
    ("sample out suffix", "vargen", "sample --model nar-mnist --classes 0 --out {o}/s.jpgx", ".jpgx"),
    ("sample unknown model", "vargen", "sample --model no-such --classes 0 --out {o}/s.png", "no-such"),
    ("sample unknown sampler", "vargen", SAMPLE + " --sampler beam", "beam"),
    ("sample device bogus", "vargen", SAMPLE + " --device gpu", "--device"),
    ("sample device cuda", "vargen", SAMPLE + " --device cuda", "no CUDA device", CUDA),
    ("sample device cuda:99", "vargen", SAMPLE + " --device cuda:99", "cuda:99"),  # with or without a GPU
    ("fid nan stats", "vargen", "fid {a}/good.npz {a}/nanstats.npz", "nanstats.npz"),
    ("fid batch-size 0", "vargen", FID + " --batch-size 0", "--batch-size"),
    ("fid limit -1", "vargen", FID + " --limit -1", "--limit"),
    ("fid limit 0", "vargen", FID + " --limit 0", "--limit"),
    ("fid kid-subset-size 1", "vargen", FID + " --kid-subset-size 1", "--kid-subset-size"),
    ("fid json read-only", "vargen", FID + " --json {ro}/fid.json", "--json"),
    ("fid json dir", "vargen", FID + " --json {a}/existing_dir", "existing_dir"),
    ("fid json under a file", "vargen", FID + " --json {a}/existing.txt/fid.json", "existing.txt"),
    ("fid missing samples", "vargen", "fid {a}/missing.npz {a}/stats.npz", "missing.npz"),
    ("fid non-image png", "vargen", "fid {a}/folder {a}/good.npz --inception-weights random", "a_not_an_image.png"),
    ("fid truncated weights", "vargen", "fid {a}/good.npz {a}/stats.npz --inception-weights {a}/truncated.safetensors",
     "truncated.safetensors"),
    ("fid device bogus", "vargen", FID + " --device tpu", "--device"),
    ("fid device cuda", "vargen", FID + " --device cuda", "no CUDA device", CUDA),
    ("ref-stats out read-only", "vargen", "ref-stats mnist:heldout {ro}/ref.npz --inception-weights random", "out"),
    ("ref-stats out dir", "vargen", "ref-stats mnist:heldout {a}/existing_dir --inception-weights random",
     "existing_dir"),
    ("ref-stats limit -1", "vargen", "ref-stats mnist:heldout {o}/ref.npz --limit -1", "--limit"),
    ("fvd batch-size 0", "vargen", "fvd {a}/videos.npz {a}/videos.npz --batch-size 0", "--batch-size"),
    ("fvd num-frames nan", "vargen", "fvd {a}/videos.npz {a}/videos.npz --num-frames nan", "--num-frames"),
    ("fvd json read-only", "vargen", "fvd {a}/videos.npz {a}/videos.npz --json {ro}/fvd.json", "--json"),
    ("recon limit -1", "vargen", "recon --tokenizer vq-mnist --no-fid --limit -1", "--limit"),
    ("recon json dir", "vargen", "recon --tokenizer vq-mnist --no-fid --json {a}/existing_dir", "existing_dir"),
    ("recon image-size 0", "vargen", "recon --tokenizer vq-mnist --no-fid --image-size 0", "--image-size"),
    ("recon non-image png", "vargen", "recon --tokenizer vq-mnist --no-fid --data {a}/folder", "a_not_an_image.png"),
    ("recon device cuda", "vargen", "recon --tokenizer vq-mnist --no-fid --device cuda", "no CUDA device", CUDA),
    ("train ids > vocab", "vargen", "train --model llamagen-tiny --data {a}/big_ids.safetensors --steps 1 "
     "--batch-size 4 --no-progress --out {o}/run", "big_ids.safetensors"),
    ("train labels > classes", "vargen", "train --model llamagen-tiny --data {a}/big_labels.safetensors --steps 1 "
     "--batch-size 4 --no-progress --out {o}/run", "big_labels.safetensors"),
    ("train out file", "vargen", TRAIN + " --out {a}/existing.txt", "existing.txt"),
    ("train out read-only", "vargen", TRAIN + " --out {ro}/run", "--out"),
    ("train lr nan", "vargen", TRAIN + " --lr nan --out {o}/run", "--lr"),
    ("train override nan", "vargen", TRAIN + " --override class_dropout_prob=nan --out {o}/run", "class_dropout_prob"),
    ("train override inf", "vargen", TRAIN + " --override class_dropout_prob=1e999 --out {o}/run", "class_dropout_prob"),
    ("train steps 2.5", "vargen", TRAIN.replace("--steps 1", "--steps 2.5") + " --out {o}/run", "--steps"),
    ("train ema-decay 1", "vargen", TRAIN + " --ema-decay 1 --out {o}/run", "--ema-decay"),
    ("train seed -1", "vargen", TRAIN + " --seed -1 --out {o}/run", "--seed"),
    ("train device bogus", "vargen", TRAIN + " --device gpu --out {o}/run", "--device"),
    ("train device cuda", "vargen", TRAIN + " --device cuda --out {o}/run", "no CUDA device", CUDA),
    ("eval.sample out file", "eval.sample", EVAL_SAMPLE + " --out {a}/existing.txt", "existing.txt"),
    ("eval.sample out read-only", "eval.sample", EVAL_SAMPLE + " --out {ro}/run", "--out"),
    ("eval.sample cfg nan", "eval.sample", EVAL_SAMPLE + " --cfg-scale nan --out {o}/run", "--cfg-scale"),
    ("eval.sample top-k 2.5", "eval.sample", EVAL_SAMPLE + " --top-k 2.5 --out {o}/run", "--top-k"),
    ("eval.sample num-samples 0", "eval.sample", EVAL_SAMPLE.replace("--num-samples 2", "--num-samples 0")
     + " --out {o}/run", "--num-samples"),
    ("eval.sample num-classes 0", "eval.sample", EVAL_SAMPLE + " --num-classes 0 --out {o}/run", "--num-classes"),
]
MAINS = {"vargen": vargen_main, "eval.sample": eval_sample.main}


def _argv(template: str, assets, out: Path) -> list:
    return template.format(a=assets.root, o=out, ro=assets.readonly).split()


@pytest.mark.parametrize("command, template, text", [pytest.param(*row[1:4], id=row[0], marks=row[4:])
                                                     for row in CLI])
def test_cli_refuses(assets, tmp_path, capsys, command, template, text):
    before = snapshot(assets.root, tmp_path)
    status = MAINS[command](_argv(template, assets, tmp_path))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert "Traceback" not in err
    assert "error:" in lines[-1] and text in lines[-1], err
    assert snapshot(assets.root, tmp_path) == before


# ------------------------------------------------------------------------------- beyond the table
def test_an_error_mid_sampling_starts_its_own_line(assets, tmp_path, capsys, monkeypatch):
    """The progress bar is ended before the error line, which is never glued onto it."""
    from vargen.samplers.neighbor import NeighborSampler
    calls = []

    def failing(self, model, labels, rng):
        calls.append(1)
        if len(calls) > 1:
            raise ValueError("sampler failed on the second batch")
        return original(self, model, labels, rng)
    original = NeighborSampler.sample
    monkeypatch.setattr(NeighborSampler, "sample", failing)
    before = snapshot(tmp_path)
    status = vargen_main(_argv("sample --model nar-mnist --classes 0 1 --batch-size 1 --out {o}/s.png",
                               assets, tmp_path))
    err = capsys.readouterr().err
    assert status == 2 and len(calls) == 2
    error = [line for line in err.split("\n") if "error:" in line]
    assert error == ["vargen sample: error: sampler failed on the second batch"], err
    assert snapshot(tmp_path) == before


def test_run_command_leaves_bugs_as_tracebacks():
    def bug(args):
        raise AssertionError("a bug, not a user error")
    with pytest.raises(AssertionError):
        run_command(eval_sample.build_parser(), ["--model", "x", "--num-samples", "1", "--out", "y"], bug)


@pytest.mark.parametrize("argv, text", [
    (["-m", "vargen.cli", "sample", "--model", "nar-mnist", "--classes", "0", "--cfg-scale", "nan"], "--cfg-scale"),
    (["-m", "vargen.eval.sample", "--model", "nar-mnist", "--num-samples", "2", "--out", "{a}/existing.txt"],
     "existing.txt"),
], ids=["vargen sample", "python -m vargen.eval.sample"])
def test_subprocess_one_line_and_status_2(assets, tmp_path, argv, text):
    before = snapshot(assets.root, tmp_path)
    argv = [arg.format(a=assets.root) for arg in argv]
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and text in proc.stderr, proc.stderr
    assert snapshot(assets.root, tmp_path) == before
