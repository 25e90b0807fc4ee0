"""LlamaGen's text-to-image VQ-16 (``vq_ds16_t2i.pt``): the c2i VQ-16 architecture (codebook 16384,
dim 8, ``vargen.tokenizers.vq.VQ16``) fine-tuned for text-to-image, released on the Hub repo
``peizesun/llamagen_t2i`` (https://github.com/FoundationVision/LlamaGen, ``sample_t2i.py``:
``VQ-16`` with ``codebook_size=16384, codebook_embed_dim=8``). Same converter as the c2i file.
"""
from __future__ import annotations

from vargen.registry import Weights, register_model
from vargen.tokenizers.vq import VQ16, VQTokenizer, convert_llamagen_vq

register_model("llamagen-vq16-t2i", VQTokenizer, VQ16, converter=convert_llamagen_vq, weights=Weights(
    hub_repo="peizesun/llamagen_t2i", filename="vq_ds16_t2i.pt",
    source="https://github.com/FoundationVision/LlamaGen"))
