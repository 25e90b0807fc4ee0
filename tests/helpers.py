"""Small things several test files need: tiny MNIST token grids."""
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
