"""Make the frozen text encoder of ``t2i-mnist``: a random-init (seeded) 2-layer T5 encoder with
ByT5's byte tokenizer (no vocabulary file), 32 tokens, left padding; never trained. The generator
learns to read its features through the caption embedder.

    python demos/make_t2i_mnist_t5.py weights/t2i-mnist-t5     # seed 0 -> the shipped file
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch


def make_encoder(seed: int = 0, d_model: int = 64, num_layers: int = 2, max_length: int = 32):
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    from vargen.text import T5TextEncoder
    tokenizer = ByT5Tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // 4, d_ff=2 * d_model,
                      num_layers=num_layers, num_heads=4, feed_forward_proj="gated-gelu", dropout_rate=0.0)
    torch.manual_seed(seed)
    encoder = T5EncoderModel(config).eval()
    return T5TextEncoder(encoder, tokenizer, max_length=max_length, left_padding=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    make_encoder(args.seed).save_pretrained(args.out)
    digest = hashlib.sha256(Path(args.out, "model.safetensors").read_bytes()).hexdigest()
    print(f"{args.out}/model.safetensors sha256 {digest}")


if __name__ == "__main__":
    main()
