"""The shipped vq-mnist / kl-mnist, re-keyed onto diffusers' blocks (not retrained), tokenize the
digits as the hand-written conv stack they were trained with did (tests/fixtures/README.md), so the
generators trained on their tokens stay valid.

The fixture holds all 5000 digits; the test checks every STRIDE-th (1000, all classes) to stay fast.
With STRIDE = 1 (about 40 s of CPU) the full run measured: VQ ids identical on 5000 x 64 tokens;
KL latents max |diff| 3.3e-6 (mean 2.5e-7, 98.4% within 1e-6; latent std 1.0, max |x| 4.9). The
residual is float32 rounding: diffusers' attention runs Linear layers and GroupNorm on [B, C, HW]
where the official code runs 1x1 convs, so sums are ordered differently. Both modules run in
float64 on all 5000 digits agree to max 4.4e-15 (mean 2.8e-16); against those float64 latents the
old float32 module is off by at most 1.1e-6 and the new one by 3.3e-6.
"""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vargen
from vargen.data import MNISTDigits

STRIDE = 5
BEFORE = {k: v[::STRIDE] if v.shape[0] == 5000 else v for k, v in load_file(
    Path(__file__).parent / "fixtures" / "mnist_tokenizers_before_diffusers.safetensors").items()}


@pytest.fixture(scope="module")
def digits():
    return MNISTDigits("all").images  # in the fixture's order


def _encode(tokenizer, images):
    with torch.no_grad():
        return torch.cat([tokenizer.encode(x) for x in images[::STRIDE].split(500)])


def test_rekeyed_vq_mnist_gives_identical_ids(digits):
    vq = vargen.create_model("vq-mnist", pretrained=True).eval()
    ids = _encode(vq, digits)
    assert ids.shape == (5000 // STRIDE, 8, 8)
    assert torch.equal(ids, BEFORE["vq-mnist.ids"].long())
    with torch.no_grad():  # the first 16 digits' reconstructions
        decoded = vq.decode(vq.encode(digits[:16]))
    torch.testing.assert_close(decoded, BEFORE["vq-mnist.decoded"], atol=1e-5, rtol=0)


def test_rekeyed_kl_mnist_gives_the_same_latents(digits):
    kl = vargen.create_model("kl-mnist", pretrained=True).eval()
    latents = _encode(kl, digits)
    assert latents.shape == (5000 // STRIDE, 4, 8, 8)
    torch.testing.assert_close(latents, BEFORE["kl-mnist.latents"], atol=5e-6, rtol=0)
    with torch.no_grad():
        decoded = kl.decode(kl.encode(digits[:16]))
    torch.testing.assert_close(decoded, BEFORE["kl-mnist.decoded"], atol=1e-5, rtol=0)


def test_rekeyed_kl_mnist_in_float64_is_the_same_function(digits):
    """In float64 the re-keyed module and the old one agree to ~1e-15: the float32 gap above is
    rounding only, not a different op (fixture: the old module in float64 on every 50th digit)."""
    old = load_file(Path(__file__).parent / "fixtures" / "kl_mnist_fp64_before_diffusers.safetensors")
    kl = vargen.create_model("kl-mnist", pretrained=True).eval().double()
    with torch.no_grad():
        latents = kl.encode(digits[::50].double())
    torch.testing.assert_close(latents, old["kl-mnist.latents_fp64"], atol=1e-12, rtol=0)
