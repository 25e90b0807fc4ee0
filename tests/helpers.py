"""Small things several test files need: tiny MNIST token grids, random key trees, a pre-filled
Hub cache."""
from pathlib import Path

import torch
import torch.nn.functional as F

from vargen.data import MNISTDigits


def mnist_token_grids(n: int = 8, grid: int = 4, vocab: int = 64, split: str = "train"):
    """Real MNIST digits turned into ``[n, grid, grid]`` ids by pooling and intensity buckets.

    A stand-in tokenizer for tests that must not depend on a trained VQ model; one digit per
    class first, so labels are 0, 1, 2, ...
    """
    data = MNISTDigits(split)
    picks = [int((data.labels == c).nonzero()[0]) for c in range(10)][:n]
    images = data.images[picks, :1]  # [n, 1, 32, 32] in [-1, 1]
    pooled = F.adaptive_avg_pool2d(images, grid)[:, 0]  # [n, grid, grid]
    ids = ((pooled + 1) / 2 * vocab).long().clamp(0, vocab - 1)
    return ids, data.labels[picks].long()


def random_state(shapes, seed: int = 0):
    """Deterministic random weights for a ``{key: shape}`` key tree, scaled so a conv net's
    activations stay O(1): convs ~ N(0, 1/fan_in), norm weights ~ 1, biases ~ 0.1.

    Depends only on the keys and shapes (not on any module's init order), so weights written for
    one implementation can be rebuilt for another through a converter.
    """
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        x = torch.randn(shape, generator=gen)
        if len(shape) == 4:  # conv: [out, in, k, k]
            x = x / (shape[1] * shape[2] * shape[3]) ** 0.5
        elif len(shape) == 1 and key.endswith(".weight"):  # GroupNorm scale
            x = 1.0 + 0.1 * x
        elif len(shape) == 1:  # biases, the usage window
            x = 0.1 * x
        state[key] = x
    return state


HUB_SHA = "0123456789abcdef0123456789abcdef01234567"


def prefill_hub_cache(cache, repo_id: str, save, monkeypatch):
    """Make ``repo_id`` a cached Hub repo: ``save(folder)`` writes its files into the layout
    huggingface_hub reads offline (``models--org--name/{refs/main, snapshots/<sha>/...}``), and
    the cache points at ``cache``. Returns the snapshot folder."""
    import huggingface_hub
    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(HUB_SHA)
    save(repo / "snapshots" / HUB_SHA)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest: no network in tests
    return repo / "snapshots" / HUB_SHA


def randomised(name: str, **overrides) -> torch.nn.Module:
    """A registered model in eval mode with every weight random (official inits zero the heads)."""
    from vargen.registry import create_model
    model = create_model(name, **overrides).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def count_network_passes(model) -> list:
    """One entry per forward of the trunk's first block (not the sampler's own counter)."""
    calls = []
    model.layers[0].register_forward_hook(lambda *_: calls.append(1))
    return calls
