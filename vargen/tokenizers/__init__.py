"""Tokenizers: discrete VQ, continuous KL and MingTok. Importing this package registers them."""
from .base import Tokenizer
from .kl import KLConfig, KLTokenizer, convert_mar_kl16
from .mingtok import MingTok, MingTokConfig, convert_mingtok
from .vq import VQConfig, VQTokenizer, convert_llamagen_vq

__all__ = ["Tokenizer", "VQConfig", "VQTokenizer", "convert_llamagen_vq", "KLConfig",
           "KLTokenizer", "convert_mar_kl16", "MingTok", "MingTokConfig", "convert_mingtok"]
