"""The released MingTok key tree and the seeded weights of the official-parity fixture.

``official_mingtok_keys(config)`` writes out, in state-dict order, the keys and shapes that the
official constructors (inclusionAI/Ming-UniVision ``mingtok/modeling_mingtok.py``,
``vision_transformer.py``: one ``BlockChunk`` -> ``blocks.0.i``, heads = width // 64, SwiGLU
``w12``/``w3`` in the encoder and semantic decoder, GELU ``fc1``/``fc2`` in the pixel decoder)
build for a vargen :class:`MingTokConfig`. ``tests/data/mingtok_official_tiny.safetensors`` holds
the official module's outputs for :data:`PARITY_CONFIG` with :func:`seeded_official_weights`
(written by running the official code in a separate venv; the official code is not in vargen).
"""
from typing import Dict, Tuple

import torch

from vargen.tokenizers.mingtok import MingTokConfig

PARITY_CONFIG = MingTokConfig(image_size=32, patch_size=8, encoder_dim=64, encoder_depth=2, latent_dim=8,
                              semantic_dim=64, semantic_depth=2, pixel_dim=64, pixel_depth=2,
                              pixel_patch_size=4, head_dim=64, latent_mean=0.25, latent_scale=3.0)


def _linear(prefix: str, cin: int, cout: int) -> Dict[str, Tuple[int, ...]]:
    return {f"{prefix}.weight": (cout, cin), f"{prefix}.bias": (cout,)}


def _block(prefix: str, dim: int, swiglu: bool) -> Dict[str, Tuple[int, ...]]:
    keys = {f"{prefix}.norm1.weight": (dim,), f"{prefix}.norm1.bias": (dim,),
            **_linear(f"{prefix}.attn.qkv", dim, 3 * dim), **_linear(f"{prefix}.attn.proj", dim, dim),
            f"{prefix}.norm2.weight": (dim,), f"{prefix}.norm2.bias": (dim,)}
    if swiglu:
        hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8
        keys.update({**_linear(f"{prefix}.mlp.w12", dim, 2 * hidden), **_linear(f"{prefix}.mlp.w3", hidden, dim)})
    else:
        keys.update({**_linear(f"{prefix}.mlp.fc1", dim, 4 * dim), **_linear(f"{prefix}.mlp.fc2", 4 * dim, dim)})
    return keys


def official_mingtok_keys(c: MingTokConfig) -> Dict[str, Tuple[int, ...]]:
    e, s, p, grid = c.encoder_dim, c.semantic_dim, c.pixel_dim, c.image_size // c.patch_size
    keys = {"low_level_encoder.cls_token": (1, 1, e), "low_level_encoder.pos_embed": (1, grid * grid + 1, e),
            "low_level_encoder.patch_embed.proj.weight": (e, 3, c.patch_size, c.patch_size),
            "low_level_encoder.patch_embed.proj.bias": (e,)}
    for i in range(c.encoder_depth):
        keys.update(_block(f"low_level_encoder.blocks.0.{i}", e, swiglu=True))
    keys.update({"low_level_encoder.out_norm.weight": (e,), "low_level_encoder.out_norm.bias": (e,),
                 **_linear("low_level_encoder.out_proj", e, c.latent_dim),
                 **_linear("semantic_decoder.in_proj", c.latent_dim, s)})
    for i in range(c.semantic_depth):
        keys.update(_block(f"semantic_decoder.blocks.0.{i}", s, swiglu=True))
    keys.update({"semantic_decoder.norm.weight": (s,), "semantic_decoder.norm.bias": (s,)})
    for i in range(c.pixel_depth):
        keys.update(_block(f"pixel_decoder.blocks.0.{i}", p, swiglu=False))
    keys.update({"pixel_decoder.norm.weight": (p,), "pixel_decoder.norm.bias": (p,),
                 **_linear("pixel_decoder.head", p, c.pixel_patch_size ** 2 * 3),
                 **_linear("sem_to_pix", s, p * (c.patch_size // c.pixel_patch_size) ** 2)})
    return keys


def seeded_official_weights(c: MingTokConfig = PARITY_CONFIG, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random weights in official key order: N(0, 0.1^2), norm weights 1 + N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in official_mingtok_keys(c).items():
        w = torch.randn(shape, generator=g) * 0.1
        out[key] = w + 1 if "norm" in key and key.endswith(".weight") else w
    return out


def parity_inputs(seed: int = 1) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x32": torch.rand(1, 3, 32, 32, generator=g) * 2 - 1,
            "x48": torch.rand(1, 3, 48, 48, generator=g) * 2 - 1}
