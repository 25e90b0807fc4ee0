"""Shared layers: attention with a block-capable KV cache, RMSNorm, SwiGLU, a GELU linear, RoPE,
DiT's time embedding; the Llama trunk part is :mod:`vargen.nn.llama`."""
from .attention import Attention, KVCache, block_causal_mask
from .layers import (FeedForward, LabelEmbedder, RMSNorm, TimestepEmbedder, find_multiple, linear_gelu,
                     swiglu_hidden_dim)
from .rope import apply_rope, rope_1d, rope_2d, rope_3d

__all__ = ["Attention", "KVCache", "block_causal_mask", "FeedForward", "LabelEmbedder", "RMSNorm", "TimestepEmbedder",
           "find_multiple", "linear_gelu", "swiglu_hidden_dim", "apply_rope", "rope_1d", "rope_2d", "rope_3d"]
