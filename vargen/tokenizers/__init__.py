"""Tokenizers: discrete VQ (images and video), continuous KL and MingTok, LARP (video), and any
diffusers AutoencoderKL. Importing this package registers them; diffusers itself is imported only
when a network is built."""
from .base import Tokenizer
from .kl import KLConfig, KLTokenizer, convert_mar_kl16
from .larp import LARPConfig, LARPTokenizer, convert_larp
from .mingtok import MingTok, MingTokConfig, convert_mingtok
from .vq import VQConfig, VQTokenizer, convert_llamagen_vq
from .video_vq import VideoVQConfig, VideoVQTokenizer
from .diffusers_vae import load_diffusers_vae, to_diffusers

__all__ = ["Tokenizer", "VQConfig", "VQTokenizer", "convert_llamagen_vq", "KLConfig",
           "KLTokenizer", "convert_mar_kl16", "LARPConfig", "LARPTokenizer", "convert_larp",
           "MingTok", "MingTokConfig", "convert_mingtok", "VideoVQConfig", "VideoVQTokenizer",
           "load_diffusers_vae", "to_diffusers"]
