"""Convolutional encoder / decoder of the VQ and KL image tokenizers: diffusers' VAE blocks.

Both official tokenizers vargen reproduces descend from the taming-transformers / latent-diffusion
autoencoder (Esser et al., "Taming Transformers", CVPR 2021; Rombach et al., "High-Resolution Image
Synthesis with Latent Diffusion Models", CVPR 2022):

- LlamaGen's VQ (github.com/FoundationVision/LlamaGen, ``tokenizer/tokenizer_image/vq_model.py``),
- MAR's KL-16 VAE (github.com/LTH14/mar, ``models/vae.py``, adopted from LDM).

diffusers' ``Encoder`` / ``Decoder`` (``diffusers.models.autoencoders.vae``, the blocks of its
``AutoencoderKL`` and ``VQModel``) are the same network: GroupNorm(32, eps 1e-6), swish,
ResnetBlock2D (1x1 ``conv_shortcut`` when the width changes), single-head attention after every res
block of a level whose block type is ``Attn*`` (plus the mid block's), stride-2 conv downsampling
with (0, 1, 0, 1) padding, nearest x2 upsampling followed by a 3x3 conv. So vargen builds its
tokenizers from them, and the official checkpoints reach them through the key renames of
:func:`official_to_diffusers`:

=====================  ==========================  ===========================  ============================
official               LlamaGen                    LDM / MAR                    diffusers (vargen)
=====================  ==========================  ===========================  ============================
encoder level i        ``encoder.conv_blocks.i``   ``encoder.down.i``           ``encoder.down_blocks.i``
decoder level          ``decoder.conv_blocks.k``,  ``decoder.up.i``, by level   ``decoder.up_blocks.k``,
                       lowest resolution first     (``up.0`` = full resolution) lowest resolution first
res blocks / attention ``.res.j`` / ``.attn.j``    ``.block.j`` / ``.attn.j``   ``.resnets.j`` / ``.attentions.j``
resampling             ``.downsample.conv``        same                         ``.downsamplers.0.conv``
                       ``.upsample.conv``                                       ``.upsamplers.0.conv``
middle                 ``mid.{0,1,2}``             ``mid.{block_1,attn_1,       ``mid_block.{resnets.0,
                                                   block_2}``                   attentions.0, resnets.1}``
=====================  ==========================  ===========================  ============================

Inside the blocks: ``nin_shortcut`` -> ``conv_shortcut``, ``norm_out`` -> ``conv_norm_out``, and
the attention's 1x1 convs ``norm, q, k, v, proj_out`` -> ``group_norm, to_q, to_k, to_v,
to_out.0`` (Linear: ``[C, C, 1, 1]`` -> ``[C, C]``).

diffusers is imported when a network is built, not when vargen is imported, so listing the zoo
stays fast.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Iterable, Sequence, Tuple

import torch
import torch.nn as nn

StateDict = Dict[str, torch.Tensor]


def _set_dropout(net: nn.Module, p: float) -> nn.Module:
    """The official tokenizers' dropout sits where ResnetBlock2D's does (before ``conv2``);
    diffusers' Encoder / Decoder fix it at 0, so set it here."""
    from diffusers.models.resnet import ResnetBlock2D

    for module in net.modules():
        if isinstance(module, ResnetBlock2D):
            module.dropout.p = p
    return net


def build_encoder(ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_levels: Iterable[int],
                  out_channels: int, double_z: bool, dropout: float = 0.0) -> nn.Module:
    """Pixels ``[B, 3, H, W]`` -> ``[B, out (x2 if double_z), H/2^(L-1), W/2^(L-1)]``, L = len(ch_mult).

    ``attn_levels``: level indices (0 = full resolution) whose res blocks are each followed by
    attention (diffusers' ``AttnDownEncoderBlock2D``).
    """
    from diffusers.models.autoencoders.vae import Encoder

    attn_levels = set(attn_levels)
    blocks = tuple("AttnDownEncoderBlock2D" if i in attn_levels else "DownEncoderBlock2D"
                   for i in range(len(ch_mult)))
    return _set_dropout(Encoder(in_channels=3, out_channels=out_channels, down_block_types=blocks,
                                block_out_channels=tuple(ch * m for m in ch_mult),
                                layers_per_block=num_res_blocks, norm_num_groups=32, act_fn="silu",
                                double_z=double_z), dropout)


def build_decoder(in_channels: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                  attn_levels: Iterable[int], dropout: float = 0.0) -> nn.Module:
    """Latents ``[B, in, h, w]`` -> pixels ``[B, 3, h*2^(L-1), w*2^(L-1)]``.

    ``num_res_blocks`` is the encoder's count: diffusers' decoder, like both official ones, has
    one more per level. ``attn_levels`` as in :func:`build_encoder` (0 = full resolution);
    diffusers lists up blocks lowest resolution first, so level i is ``up_blocks[L-1-i]``.
    """
    from diffusers.models.autoencoders.vae import Decoder

    n, attn_levels = len(ch_mult), set(attn_levels)
    blocks = tuple("AttnUpDecoderBlock2D" if n - 1 - k in attn_levels else "UpDecoderBlock2D"
                   for k in range(n))
    return _set_dropout(Decoder(in_channels=in_channels, out_channels=3, up_block_types=blocks,
                                block_out_channels=tuple(ch * m for m in ch_mult),
                                layers_per_block=num_res_blocks, norm_num_groups=32, act_fn="silu"),
                        dropout)


def check_channels(ch: int, ch_mult: tuple) -> None:
    """Every level's width must suit GroupNorm(32), as in the official tokenizers."""
    if not ch_mult or any(ch * m % 32 for m in ch_mult):
        raise ValueError(f"ch * ch_mult must be non-empty multiples of 32 (GroupNorm(32)), "
                         f"got ch={ch}, ch_mult={ch_mult}")


def check_attn_levels(num_levels: int, *level_lists: Iterable[int]) -> None:
    bad = sorted({i for levels in level_lists for i in levels if not 0 <= i < num_levels})
    if bad:
        raise ValueError(f"attention levels must be in {list(range(num_levels))}, got {bad}")


# ----------------------------------------------------------------------------- official -> diffusers
@dataclass(frozen=True)
class OfficialLayout:
    """Container names of an official key tree (see the module docstring)."""

    encoder_levels: str
    decoder_levels: str
    blocks: str  # res blocks inside a level
    mid: Tuple[str, str, str]  # res, attention, res
    decoder_by_level: bool  # True: decoder.up.i is level i (LDM); False: run order (LlamaGen)


LLAMAGEN_LAYOUT = OfficialLayout("conv_blocks", "conv_blocks", "res", ("0", "1", "2"),
                                 decoder_by_level=False)
LDM_LAYOUT = OfficialLayout("down", "up", "block", ("block_1", "attn_1", "block_2"),
                            decoder_by_level=True)
_MID = ("resnets.0", "attentions.0", "resnets.1")
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def official_to_diffusers(state_dict: StateDict, layout: OfficialLayout) -> StateDict:
    """Rename an official LlamaGen / LDM encoder-decoder key tree to diffusers' blocks.

    Keys outside ``encoder.`` / ``decoder.`` (quant convs, codebook) and keys that match no rule
    pass through unchanged, so the strict load that follows names anything unexpected.
    """
    enc, dec = layout.encoder_levels, layout.decoder_levels
    level_ids = [int(m.group(1)) for k in state_dict if (m := re.match(rf"encoder\.{enc}\.(\d+)\.", k))]
    num_levels = max(level_ids, default=-1) + 1
    level_re = re.compile(rf"(encoder\.{enc}|decoder\.{dec})\.(\d+)\.(\w+)\.(.+)")
    mid_re = re.compile(rf"(encoder|decoder)\.mid\.({'|'.join(layout.mid)})\.(.+)")
    out: StateDict = {}
    for key, value in state_dict.items():
        new = key
        if m := level_re.fullmatch(key):
            part, i, kind, rest = m.group(1).split(".")[0], int(m.group(2)), m.group(3), m.group(4)
            container = "down_blocks" if part == "encoder" else "up_blocks"
            if part == "decoder" and layout.decoder_by_level:
                i = num_levels - 1 - i
            kind = {layout.blocks: "resnets", "attn": "attentions", "downsample": "downsamplers.0",
                    "upsample": "upsamplers.0"}.get(kind, kind)
            new = f"{part}.{container}.{i}.{kind}.{rest}"
        elif m := mid_re.fullmatch(key):
            new = f"{m.group(1)}.mid_block.{_MID[layout.mid.index(m.group(2))]}.{m.group(3)}"
        elif re.fullmatch(r"(encoder|decoder)\.norm_out\.\w+", key):
            new = key.replace(".norm_out.", ".conv_norm_out.")
        if ".attentions." in new:
            head, name, param = new.rsplit(".", 2)
            new = f"{head}.{_ATTN.get(name, name)}.{param}"
            if param == "weight" and name in ("q", "k", "v", "proj_out"):
                value = value.reshape(value.shape[0], -1)  # 1x1 conv -> Linear
        elif ".resnets." in new:
            new = new.replace(".nin_shortcut.", ".conv_shortcut.")
        out[new] = value
    return out
