"""Reconstruction metrics: exact on known tokenizers (identity, additive Gaussian noise), LPIPS
reported as unavailable without its weights, and the ``vargen recon`` command."""
import json
import math

import pytest
import torch
import torch.nn as nn

import vargen
from vargen.cli import main
from vargen.eval.recon import psnr_ssim, reconstruction_metrics


class Identity(nn.Module):
    def encode(self, x):
        return x

    def decode(self, z):
        return z


class AddNoise(Identity):
    def __init__(self, sigma: float):
        super().__init__()
        self.sigma, self.g = sigma, torch.Generator().manual_seed(0)

    def decode(self, z):
        return z + self.sigma * torch.randn(z.shape, generator=self.g)


class PixelFeatures(nn.Module):
    """A cheap stand-in for Inception: 2x2-pooled pixels (48 features) under compute_metrics."""
    random_weights, weights_source, has_logits = False, "2x2-pooled pixels (test stand-in)", False

    def forward(self, images):
        x = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
        return {"2048": nn.functional.adaptive_avg_pool2d(x, 4).flatten(1).double()}

    def describe(self):
        return {"inception_weights": self.weights_source, "random_weights": False, "inception_has_logits": False}


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(256, 3, 32, 32, generator=g) - 0.5  # in [-0.5, 0.5]: the noise never clips


def test_identity_gives_zero_rfid_and_perfect_scores(images):
    result = reconstruction_metrics(Identity(), images, extractor=PixelFeatures())
    assert abs(result["rfid"]) < 1e-6
    assert result["ssim"] == pytest.approx(1.0) and math.isinf(result["psnr"])
    assert result["num_images"] == 256


@pytest.mark.parametrize("sigma", [0.02, 0.1])
def test_gaussian_noise_gives_the_analytic_psnr(images, sigma):
    result = reconstruction_metrics(AddNoise(sigma), images, extractor=PixelFeatures())
    assert result["psnr"] == pytest.approx(20 * math.log10(2 / sigma), abs=0.1)
    assert result["rfid"] > 0 and result["ssim"] < 1


def test_ssim_falls_with_noise_and_shapes_are_checked(images):
    x = images[:8]
    _, low = psnr_ssim(x + 0.2 * torch.randn_like(x), x)
    _, high = psnr_ssim(x + 0.02 * torch.randn_like(x), x)
    assert (low < high).all() and low.shape == (8,)
    with pytest.raises(ValueError, match="one shape"):
        psnr_ssim(x[:4], x)


def test_lpips_is_reported_unavailable_without_its_weights(images, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    result = reconstruction_metrics(Identity(), images[:8], fid=False)
    assert result["lpips"] is None and "alexnet" in result["lpips_note"] and "rfid" not in result


def test_recon_command_on_a_saved_tokenizer(tmp_path, capsys):
    vargen.create_model("mingtok-tiny").save_pretrained(tmp_path / "tok")
    out = tmp_path / "recon.json"
    assert main(["recon", "--tokenizer", str(tmp_path / "tok"), "--data", "mnist:heldout", "--limit", "20",
                 "--no-fid", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["num_images"] == 20 and result["data"] == "mnist:heldout" and 0 < result["psnr"] < 40
    assert "psnr" in capsys.readouterr().out
    assert main(["recon", "--tokenizer", "no-such-tokenizer", "--no-fid"]) == 2
