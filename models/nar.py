"""NAR: next-neighbour prediction with dimension-oriented heads (images).

Paper: "Neighboring Autoregressive Modeling for Efficient Visual Generation" (He et al., 2025,
arXiv 2503.10696). Official code: https://github.com/ThisisBillhe/NAR
(``NAR-images/autoregressive/models/gpt.py`` and ``generate.py``).

The image model is LlamaGen (same trunk, same key names) plus one extra ``TransformerBlock``
``layers.{n_layer}`` with its own ``medusa_norm`` / ``medusa_output`` head. The trunk head
(``norm`` / ``output``, hidden state after block ``n_layer - 1``) predicts the token to the
RIGHT of each input token; the extra block's head predicts the token BELOW. A token that both
heads reach (every interior token) gets the average of the two logits. Attention follows the
"proximity" mask: bidirectional inside a Manhattan anti-diagonal ``h + w = c``, causal across
diagonals, so an n x n grid is decoded in 2n - 1 forward passes (:mod:`vargen.samplers.neighbor`).

The training forward, the mixing of the heads and the decoding hooks are
:class:`vargen.models.neighbors.NeighborHeads` (shared with NAR video); the geometry there works
for any grid rank.

Text-to-image (``gpt.py`` with ``model_type='t2i'``, ``sample_t2i.py``): LlamaGen's t2i
conditioning (:class:`vargen.nn.caption.CaptionConditioned`): 120 caption tokens from flan-t5-xl
features, zero RoPE, the checkpoint's ``uncond_embedding`` as the null caption, and the caption
padding hidden from every query but itself, here inside the proximity mask: the caption tokens
are causal among themselves, every image token sees the (unpadded) caption and the diagonals
up to its own. The first release ran t2i under the plain causal mask (NAR issue #2, "T2I
generated images are kind of weird"); vargen follows the fix of 2025-03-19 ("fix bugs with
attention masks", commit c84280f): the proximity mask in training and sampling alike.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from vargen import recipes
from vargen.hub import WeightsError
from vargen.nn import RMSNorm
from vargen.nn.caption import CaptionConditioned
from vargen.nn.llama import LlamaConfig, LlamaTrunk
from vargen.registry import Weights, register_model

from .base import Generator
from .neighbors import NeighborHeads, Offsets, decode_steps

NARConfig = LlamaConfig  # LlamaGen's ModelArgs; NAR adds exactly one block (medusa_attention_num = 1)


class NAR(CaptionConditioned, NeighborHeads, Generator):
    """Llama trunk + right head (``norm``/``output``) + extra block with below head (``medusa_*``);
    class ids, or for ``model_type="t2i"`` caption features ``[B, cls_token_num, caption_dim]``."""

    config_class = LlamaConfig
    default_sampler = "neighbor"
    neighbor_offsets: Offsets = ((0, 1), (1, 0))  # right, below

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        c = config
        decode_steps(c.token_grid, c.decode_order)  # an unknown order fails here, naming the choices
        # Upstream spreads the drop-path rates over n_layer + 1 blocks.
        rates = (torch.linspace(0, c.drop_path_rate, c.n_layer + 1).tolist() if c.drop_path_rate > 0
                 else [0.0] * (c.n_layer + 1))
        self.trunk = LlamaTrunk(self, c, c.token_grid, rates[:-1])
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.output = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.trunk.init_positions()
        self.trunk.init_weights(zero=[self.output])
        extra = self.trunk.new_block(rates[-1])
        self.layers.append(extra)  # key layers.{n_layer}
        self.medusa_norm = RMSNorm(c.dim, c.norm_eps)
        self.medusa_output = nn.Linear(c.dim, c.vocab_size, bias=False)
        # Upstream zero-inits only ``output``; the extra block and medusa_output are N(0, std).
        for m in [*extra.modules(), self.medusa_output]:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=c.initializer_range)

    def head_modules(self) -> List[Tuple[nn.Module, nn.Linear]]:
        return [(self.norm, self.output), (self.medusa_norm, self.medusa_output)]

    # t2i: every pass of the blocks goes through neighbor_features, so the caption padding is
    # hidden there, in the proximity mask of a training forward and the masks of decoding alike.
    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with self.caption_rows(labels):
            return super().forward(tokens, labels)

    def prefill_features(self, labels: torch.Tensor) -> torch.Tensor:
        self.start_caption(labels)  # hidden from every later diagonal too, until clear_cache
        return super().prefill_features(labels)

    def neighbor_features(self, h: torch.Tensor, rope: Optional[torch.Tensor],
                          mask: Optional[torch.Tensor]) -> torch.Tensor:
        return super().neighbor_features(h, rope, self.padding_mask(mask, h.shape[1]))


def convert_nar_checkpoint(state: dict) -> dict:
    """Official ``last_version.pt`` (``{"model": sd}``) -> vargen: same keys, no ``freqs_cis``.
    The t2i layout is the same tree with ``cls_embedding.cap_proj.fc{1,2}.weight`` and the buffer
    ``cls_embedding.uncond_embedding`` (kept as it is: the null caption the model was trained with).

    A plain LlamaGen checkpoint has no ``medusa_*`` keys; upstream loads it with strict=False and
    silently keeps a random below-head. Here it is an error naming what is missing.
    """
    state = {k: v for k, v in state.items() if k != "freqs_cis"}
    if not any(k.startswith("medusa_") for k in state):
        n = len({k.split(".")[1] for k in state if k.startswith("layers.")})
        raise WeightsError(
            f"not a NAR checkpoint: missing keys medusa_norm.weight, medusa_output.weight and the "
            f"extra block layers.{n}.* (the below-neighbour head). It has {n} blocks and looks like "
            f"a plain LlamaGen checkpoint; load it with the llamagen-* model of that size.")
    return state


_SRC = "https://github.com/ThisisBillhe/NAR"
# name: (config, hub weights or None). Parameter counts from the paper; all are 16x16 (256px).
PRESETS = {
    "nar-b": (LlamaConfig(n_layer=12, n_head=12, dim=768),                                  # 130M
              Weights(hub_repo="chenfeng1271/NAR-imagenet-256-B", filename="last_version.pt",
                      source=_SRC, metrics={"imagenet256_fid": 4.65, "is": 212.3})),
    "nar-m": (LlamaConfig(n_layer=18, n_head=16, dim=1024), None),                          # 290M
    "nar-l": (LlamaConfig(n_layer=24, n_head=16, dim=1024), None),                          # 372M
    # The XL repo's file name was not visible in any index we could read (only its README is);
    # "last_version.pt" is the name the training script writes and the B repo uses: unverified.
    "nar-xl": (LlamaConfig(n_layer=36, n_head=20, dim=1280),                                # 816M
               Weights(hub_repo="yefly/NAR-imagenet-256-XL", filename="last_version.pt",
                       source=_SRC, metrics={"imagenet256_fid": 2.70, "is": 277.5})),
    "nar-xxl": (LlamaConfig(n_layer=48, n_head=24, dim=1536), None),                        # 1.46B
}
for _name, (_config, _weights) in PRESETS.items():  # the paper's FID setting: cfg 2.0
    register_model(_name, NAR, _config, weights=_weights, converter=convert_nar_checkpoint,
                   recipe=recipes.NAR, pipeline=dict(tokenizer="llamagen-vq16", cfg_scale=2.0))
register_model("nar-tiny", NAR, LlamaConfig(
    dim=64, n_layer=2, n_head=4, multiple_of=32, vocab_size=64, num_classes=10, grid_size=4,
    token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0), converter=convert_nar_checkpoint,
    recipe=recipes.NAR)
# Shipped: LlamaGen-mnist's trunk + NAR's below head on vq-mnist's 8x8 ids (15 passes).
register_model("nar-mnist", NAR, LlamaConfig(
    dim=128, n_layer=6, n_head=4, multiple_of=64, vocab_size=256, num_classes=10, grid_size=8),
    weights=Weights.shipped("nar-mnist", "0a3c1ce1b3b52a648b0fb89ecf1d4eb591d20ac2f409364793f0677f40e21b92"),
    recipe=recipes.NAR, pipeline=dict(tokenizer="vq-mnist", cfg_scale=2.0))

# Text-to-image, NAR-images README + sample_t2i.py: stage 2 at 512 px (text-to-image-2M), 32x32 codes of
# LlamaGen's vq_ds16_t2i; flan-t5-xl features, 120 tokens, left padding; cfg 7.5, top-k 0 (unlike
# LlamaGen's 1000), top-p 1, temperature 1. The README's stage-1 row links LlamaGen's own file, not
# a NAR one, so there is no nar-t2i stage 1. The repo's file name was not visible anywhere we could
# read (the README says to download and rename to t2i_XL_stage2_512.pt); "last_version.pt" is the
# name train_t2i_webdata.py writes last and the B repo uses: unverified.
_T2I = dict(model_type="t2i", cls_token_num=120)
register_model("nar-t2i-xl", NAR,
               LlamaConfig(n_layer=36, n_head=20, dim=1280, grid_size=32, caption_dim=2048, **_T2I),   # 816M
               weights=Weights(hub_repo="yefly/NAR-XL-t2i-stage2", filename="last_version.pt", source=_SRC),
               converter=convert_nar_checkpoint, recipe=recipes.NAR,
               pipeline=dict(tokenizer="llamagen-vq16-t2i", text_encoder="google/flan-t5-xl", cfg_scale=7.5,
                             top_k=0, top_p=1.0, temperature=1.0))
# The t2i test model: 120 caption tokens of width 16, as released, on a 4x4 grid of 64 codes.
register_model("nar-t2i-tiny", NAR, LlamaConfig(
    dim=64, n_layer=2, n_head=4, multiple_of=32, vocab_size=64, grid_size=4, caption_dim=16,
    token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0, **_T2I), converter=convert_nar_checkpoint,
    recipe=recipes.NAR)
