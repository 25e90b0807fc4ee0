"""Tokenizers: discrete VQ and continuous KL (and any diffusers AutoencoderKL). Importing this
package registers them; diffusers itself is imported only when a network is built."""
from .base import Tokenizer
from .kl import KLConfig, KLTokenizer, convert_mar_kl16
from .vq import VQConfig, VQTokenizer, convert_llamagen_vq
from .diffusers_vae import load_diffusers_vae, to_diffusers

__all__ = ["Tokenizer", "VQConfig", "VQTokenizer", "convert_llamagen_vq", "KLConfig",
           "KLTokenizer", "convert_mar_kl16", "load_diffusers_vae", "to_diffusers"]
