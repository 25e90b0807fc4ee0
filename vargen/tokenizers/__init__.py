"""Tokenizers: discrete VQ (images and video) and continuous KL. Importing this package registers
them."""
from .base import Tokenizer
from .kl import KLConfig, KLTokenizer, convert_mar_kl16
from .vq import VQConfig, VQTokenizer, convert_llamagen_vq
from .video_vq import VideoVQConfig, VideoVQTokenizer

__all__ = ["Tokenizer", "VQConfig", "VQTokenizer", "convert_llamagen_vq", "KLConfig",
           "KLTokenizer", "convert_mar_kl16", "VideoVQConfig", "VideoVQTokenizer"]
