"""Tokenizers: discrete VQ (images and video), continuous KL and MingTok, LARP (video). Importing
this package registers them."""
from .base import Tokenizer
from .kl import KLConfig, KLTokenizer, convert_mar_kl16
from .larp import LARPConfig, LARPTokenizer, convert_larp
from .mingtok import MingTok, MingTokConfig, convert_mingtok
from .vq import VQConfig, VQTokenizer, convert_llamagen_vq
from .video_vq import VideoVQConfig, VideoVQTokenizer

__all__ = ["Tokenizer", "VQConfig", "VQTokenizer", "convert_llamagen_vq", "KLConfig",
           "KLTokenizer", "convert_mar_kl16", "LARPConfig", "LARPTokenizer", "convert_larp",
           "MingTok", "MingTokConfig", "convert_mingtok", "VideoVQConfig", "VideoVQTokenizer"]
