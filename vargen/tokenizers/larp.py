"""LARP: the holistic video tokenizer of the official NAR video models.

Wang et al., "LARP: Tokenizing Videos with a Learned Autoregressive Generative Prior" (ICLR 2025),
official code github.com/hywang66/LARP (MIT): ``models/larp_tokenizer.py`` (``LARPTokenizer``),
``models/bottleneck.py`` (``Bottleneck``, ``SimpleVectorQuantizer``), ``models/embed.py``
(``PatchEmbed3D``, sin-cos tables), ``models/transformer.py`` (``TransformerEncoderParallel``).
Released weights: Hub ``hywang66/LARP-L-long-tokenizer`` (a ``PyTorchModelHubMixin`` folder).

A 16 x 128 x 128 clip is cut into 4 x 8 x 8 patches (a Conv3d, 4 x 16 x 16 = 1024 patch tokens)
plus a frozen 3D sin-cos table; 1024 learned holistic queries are appended and a 12-layer,
768-wide ViT runs over [patches; queries]; the query outputs are projected to 16 dims and
quantised against an l2-normalised 8192 x 16 codebook by the softmax of cosine similarity / 0.03
(argmax when deterministic, as LARP's evaluation ``--det``; a per-sample seeded draw otherwise).
The decoder runs the same kind of ViT over [codes + 1D sin-cos; patch queries] and unpatchifies.
The 1024 tokens are 1-D by design; NAR imposes its 4 x 16 x 16 order on them (``decode`` accepts
both ``[B, 1024]`` and ``[B, 4, 16, 16]`` in that C order, as NAR's ``generate`` flattens).

LARP works on pixels in [0, 1]; this port takes and returns [-1, 1] (the zoo's convention) and
maps to [0, 1] inside. ``state_dict`` keys equal the official module's (timm ``Block`` key names);
the released checkpoint's extra ``prior_model.*`` keys are the training prior (gptc-S), which
encode and decode never use, and :func:`convert_larp` drops them by name.

The timm trap: LARP builds its blocks with timm's default norm layer, a LayerNorm with eps 1e-5 in
LARP's timm (1.0.11); timm >= 1.0.16 made that default eps 1e-6. The eps is set explicitly here
(``LARPConfig.norm_eps``) so the port does not change with the installed timm.

This module holds the config, the tokenizer, the official formats and the registrations; the
building blocks (sin-cos tables, patch embedding, joint ViT, quantiser) are in
:mod:`vargen.tokenizers.larp_layers`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from vargen import checks
from vargen.hub import (CONFIG_NAME, WEIGHTS_NAME, StateDict, load_safetensors, load_state_dict_strict,
                        resolve_file)
from vargen.registry import Weights, register_model
from vargen.seeding import SampleRNG, sample_from_probs
from vargen.tokenizers.base import Tokenizer
from vargen.tokenizers.larp_layers import (CosineQuantizer, JointTransformer, OutputLayer, PatchEmbed3D, sincos_1d,
                                           sincos_3d)

logger = logging.getLogger(__name__)

# Keys of a released LARP checkpoint that belong to training only (the gptc AR prior whose loss
# shapes the latent space); convert_larp drops them by these prefixes and logs their names.
TRAINING_ONLY_PREFIXES = ("prior_model.",)


@dataclass
class LARPConfig:
    """The arguments of the official ``LARPTokenizer`` that the released model uses.

    Flags the release keeps at one value (fixed encoder patch table, learned queries, fixed
    decoder tables, a learned type embedding on the decoder's patch queries only) are not
    options; :func:`config_from_official` refuses an official config that sets them otherwise.
    The decoder's patch sizes must equal the encoder's (the official unpatchify uses the
    encoder's), so there is one pair.
    """

    input_size: int = 128
    frame_num: int = 16
    temporal_patch_size: int = 4
    patch_size: int = 8
    in_channels: int = 3
    bottleneck_token_num: int = 1024
    encoder_hidden_size: int = 768
    decoder_hidden_size: int = 768
    encoder_num_heads: int = 12
    decoder_num_heads: int = 12
    encoder_depth: int = 12
    decoder_depth: int = 12
    bottleneck_dim: int = 16
    codebook_size: int = 8192
    stochastic_temperature: float = 0.03
    latent_pe_scale_factor: float = 10000.0
    query_init_std: float = 0.02
    norm_eps: float = 1e-5  # timm 1.0.11's Block LayerNorm (see the module docstring)
    # Training (cfgs/larp_tokenizer.yaml): loss_q = 0.25 commit + 1.0 codebook, weighted 0.1.
    commitment_loss_weight: float = 0.25
    codebook_loss_weight: float = 1.0
    loss_q_weight: float = 0.1

    @property
    def patch_grid(self) -> Tuple[int, int, int]:
        return (self.frame_num // self.temporal_patch_size, self.input_size // self.patch_size,
                self.input_size // self.patch_size)


LARP_L_LONG = LARPConfig()
# A CPU-sized LARP: 4 x 16 x 16 clips, 2 x 4 x 4 patches, 16 tokens out of 32 codes.
LARP_TINY = LARPConfig(input_size=16, frame_num=4, temporal_patch_size=2, patch_size=4,
                       bottleneck_token_num=16, encoder_hidden_size=16, decoder_hidden_size=16,
                       encoder_num_heads=2, decoder_num_heads=2, encoder_depth=2, decoder_depth=2,
                       bottleneck_dim=8, codebook_size=32)


# ----------------------------------------------------------------------------- layers
class Bottleneck(nn.Module):
    """Encoder width -> ``bottleneck_dim`` -> quantiser -> decoder width (LARP's key names)."""

    def __init__(self, c: LARPConfig):
        super().__init__()
        self.in_linear = nn.Linear(c.encoder_hidden_size, c.bottleneck_dim)
        self.regularizer = CosineQuantizer(c.codebook_size, c.bottleneck_dim, c.stochastic_temperature)
        self.out_linear = nn.Linear(c.bottleneck_dim, c.decoder_hidden_size)


# ----------------------------------------------------------------------------- tokenizer
class LARPTokenizer(Tokenizer):
    """Clips ``[B, 3, T, H, W]`` in [-1, 1] <-> ids ``[B, bottleneck_token_num]``."""

    config_class = LARPConfig
    is_discrete = True

    def __init__(self, config: LARPConfig):
        super().__init__(config)
        c = config
        check_config(c)
        t, h, w = c.patch_grid
        n_patches, n_latent = t * h * w, c.bottleneck_token_num
        de, dd = c.encoder_hidden_size, c.decoder_hidden_size
        self.x_embedder = PatchEmbed3D(c.in_channels, de, c.temporal_patch_size, c.patch_size)
        self.register_buffer("encoder_patch_pe", sincos_3d(de, t, h)[None])  # [1, Np, De], frozen
        self.encoder_latent_query_embed = nn.Parameter(torch.randn(n_latent, de) * c.query_init_std)
        self.register_buffer("decoder_latent_pe", sincos_1d(dd, torch.arange(n_latent),
                                                            c.latent_pe_scale_factor).float()[None])
        self.register_buffer("decoder_patch_query_embed", sincos_3d(dd, t, h)[None])
        self.decoder_patch_query_token_type_embed = nn.Parameter(torch.randn(1, 1, dd) * 0.02)
        self.encoder = JointTransformer(de, c.encoder_depth, c.encoder_num_heads, c.norm_eps)
        self.decoder = JointTransformer(dd, c.decoder_depth, c.decoder_num_heads, c.norm_eps)
        self.bottleneck = Bottleneck(c)
        patch_pixels = c.temporal_patch_size * c.patch_size ** 2 * c.in_channels
        self.final_layer = OutputLayer(dd, patch_pixels)
        self._init_weights()

    def _init_weights(self) -> None:
        # Upstream: xavier-uniform Linears (timm blocks included) with zero bias, the patch conv
        # like a Linear, and a zero output layer.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        proj = self.x_embedder.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # ----------------------------------------------------------------------------- interface
    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    def token_grid(self, video_shape: Tuple[int, int, int]) -> Tuple[int]:
        """``(T, H, W)`` of a clip -> ``(bottleneck_token_num,)``: LARP's tokens are 1-D."""
        c = self.config
        if tuple(video_shape) != (c.frame_num, c.input_size, c.input_size):
            raise ValueError(f"LARP encodes clips of exactly (T, H, W) = "
                             f"({c.frame_num}, {c.input_size}, {c.input_size}), got {tuple(video_shape)}")
        return (c.bottleneck_token_num,)

    def check_videos(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` checked (finite floats ``[B, C, T, H, W]`` in [-1, 1] of the configured size)."""
        c = self.config
        checks.pixels("videos", x)
        if x.dim() != 5 or x.shape[1] != c.in_channels:
            raise ValueError(f"videos must be [B, {c.in_channels}, T, H, W] (NCTHW), got {tuple(x.shape)}")
        self.token_grid(tuple(x.shape[2:]))
        return x.to(self.weight_dtype)

    def check_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, N]`` or ``[B, *grid]`` with ``prod(grid) == N`` (C order) -> ``[B, N]`` long."""
        n = self.config.bottleneck_token_num
        if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"code ids must be an integer tensor, got {ids.dtype}")
        if ids.dim() < 2 or ids[0].numel() != n:
            raise ValueError(f"code ids must be [B, {n}] (or [B, T, H, W] with T*H*W = {n}), got "
                             f"shape {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"code ids must lie in [0, {self.vocab_size}), got range "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return ids.reshape(ids.shape[0], n).long()

    # ----------------------------------------------------------------------------- encoder
    def encode_latents(self, videos: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, C, T, H, W]`` in [-1, 1] -> pre-quantiser latents ``[B, N, bottleneck_dim]``."""
        x = (self.check_videos(videos) + 1) / 2  # LARP's pixels are in [0, 1]
        x = self.x_embedder(x) + self.encoder_patch_pe  # [B, Np, De]
        queries = self.encoder_latent_query_embed.expand(x.shape[0], -1, -1)  # [B, N, De]
        return self.bottleneck.in_linear(self.encoder(x, queries))  # [B, N, d]

    def encode(self, videos: torch.Tensor, rng: Union[None, int, SampleRNG] = None) -> torch.Tensor:
        """Pixels ``[B, C, T, H, W]`` in [-1, 1] -> ids ``[B, bottleneck_token_num]`` (long).

        ``rng=None``: the most likely code (argmax, LARP's ``--det`` evaluation). An int seed or a
        :class:`vargen.seeding.SampleRNG`: LARP's stochastic quantisation, each clip drawing from
        its own generator (clip ``i`` of an int seed uses ``(seed, i)``).
        """
        _, probs = self.bottleneck.regularizer.probs(self.encode_latents(videos))  # [B, N, V]
        if rng is None:
            return probs.argmax(-1)
        if isinstance(rng, int):
            rng = SampleRNG(rng, probs.shape[0], device=probs.device)
        if len(rng) != probs.shape[0]:
            raise ValueError(f"rng has {len(rng)} generators for a batch of {probs.shape[0]} clips")
        return sample_from_probs(probs, rng.rand(probs.shape[1]).to(probs.device))  # [B, N]

    # ----------------------------------------------------------------------------- decoder
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Quantised vectors ``[B, N, bottleneck_dim]`` -> pixels ``[B, C, T, H, W]`` (about [-1, 1])."""
        c = self.config
        z = self.bottleneck.out_linear(codes.to(self.weight_dtype)) + self.decoder_latent_pe  # [B, N, Dd]
        queries = (self.decoder_patch_query_embed + self.decoder_patch_query_token_type_embed
                   ).expand(z.shape[0], -1, -1)  # [B, Np, Dd]
        x = self.final_layer(self.decoder(z, queries))  # [B, Np, pt*p*p*C]
        t, h, w = c.patch_grid
        x = rearrange(x, "b (t h w) (pt p1 p2 c) -> b c (t pt) (h p1) (w p2)", t=t, h=h, w=w,
                      pt=c.temporal_patch_size, p1=c.patch_size, p2=c.patch_size)
        return x * 2 - 1  # [0, 1] -> [-1, 1]

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, N]`` (or ``[B, T, H, W]``) -> pixels ``[B, C, T, H, W]`` (about [-1, 1]; not clamped)."""
        return self.decode_codes(self.bottleneck.regularizer.codebook()[self.check_ids(ids)])

    # ----------------------------------------------------------------------------- training
    def _reconstruct(self, videos: torch.Tensor):
        z, probs = self.bottleneck.regularizer.probs(self.encode_latents(videos))
        # Upstream samples the code in training and takes the argmax only in deterministic eval.
        ids = (torch.multinomial(probs.flatten(0, 1), 1).view(probs.shape[:2]) if self.training
               else probs.argmax(-1))
        codes = self.bottleneck.regularizer.codebook()[ids]
        recon = self.decode_codes(z + (codes - z).detach())  # straight-through
        return recon, z, codes

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        """Pixels -> reconstruction through the quantiser (straight-through gradients)."""
        return self._reconstruct(videos)[0]

    def training_loss(self, inputs: torch.Tensor, labels: Optional[torch.Tensor] = None
                      ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """``(loss, logs)``: L1 on [0, 1] pixels + ``loss_q_weight`` * (commit + codebook).

        LARP's pixel and quantiser terms at their config weights; its LPIPS, transformer
        discriminator and AR-prior cross-entropy terms are not included. ``labels`` are ignored.
        """
        c = self.config
        recon, z, codes = self._reconstruct(inputs)
        rec_loss = (recon - inputs).abs().mean() / 2  # L1 in [0, 1] units
        commit = F.mse_loss(z, codes.detach())
        codebook = F.mse_loss(codes, z.detach())
        loss_q = c.commitment_loss_weight * commit + c.codebook_loss_weight * codebook
        total = rec_loss + c.loss_q_weight * loss_q
        return total, {"loss": total.item(), "rec_loss": rec_loss.item(), "loss_q": loss_q.item()}

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, Path], **kwargs: Any
                        ) -> "LARPTokenizer":
        """A vargen folder, or an official LARP folder / Hub repo (``hywang66/LARP-L-long-tokenizer``:
        its ``config.json`` holds the official constructor arguments), loaded strictly."""
        source = str(pretrained_model_name_or_path)
        hub_kwargs = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "local_files_only", "token")
                      if k in kwargs}
        config_path = resolve_file(source, CONFIG_NAME, **hub_kwargs)
        values = json.loads(Path(config_path).read_text())
        if "_class_name" in values:  # written by vargen's save_pretrained
            return super().from_pretrained(source, **hub_kwargs, **kwargs)
        config = dataclasses.replace(config_from_official(values), **kwargs)
        weights_path = resolve_file(source, WEIGHTS_NAME, **hub_kwargs)
        model = cls(config)
        load_state_dict_strict(model, convert_larp(load_safetensors(weights_path)), source=weights_path)
        return model


def check_config(c: LARPConfig) -> None:
    if c.input_size % c.patch_size or c.frame_num % c.temporal_patch_size:
        raise ValueError(f"clip {c.frame_num}x{c.input_size}x{c.input_size} is not divisible into "
                         f"{c.temporal_patch_size}x{c.patch_size}x{c.patch_size} patches")
    for part, dim, heads in (("encoder", c.encoder_hidden_size, c.encoder_num_heads),
                             ("decoder", c.decoder_hidden_size, c.decoder_num_heads)):
        if dim % heads or dim % 4:
            raise ValueError(f"{part}_hidden_size {dim} must be divisible by its {heads} heads and "
                             f"by 4 (the 3-D sin-cos table)")


# ----------------------------------------------------------------------------- official formats
# The official constructor's defaults (models/larp_tokenizer.py), for config.json files that omit
# a field, and the flags the port supports only at the released value.
_OFFICIAL_DEFAULTS = dict(bottleneck_token_num=1024, input_size=128, frame_num=16, temporal_patch_size=4,
                          patch_size=8, decoder_temporal_patch_size=4, decoder_patch_size=8,
                          in_channels=3, latent_pe_scale_factor=10000, query_init_std=0.02,
                          encoder_hidden_size=768, decoder_hidden_size=768, encoder_num_heads=12,
                          decoder_num_heads=12, encoder_depth=6, decoder_depth=6)
_OFFICIAL_FIXED = dict(transformer_name="transformer_encoder_parallel", learned_encoder_patch_pe=False,
                       learned_encoder_latent_query_embed=True, learned_decoder_latent_pe=False,
                       learned_decoder_patch_query_embed=False, use_encoder_patch_token_type_embed=False,
                       use_encoder_latent_query_token_type_embed=False,
                       use_decoder_latent_token_type_embed=False,
                       use_decoder_patch_query_token_type_embed=True)
_OFFICIAL_IGNORED = ("prior_model", "encoder_name", "decoder_name", "encoder_query_gaussian_init")


def config_from_official(values: Mapping[str, Any]) -> LARPConfig:
    """The official ``LARPTokenizer(**kwargs)`` arguments (its Hub ``config.json``) -> LARPConfig."""
    v = {**_OFFICIAL_DEFAULTS, **_OFFICIAL_FIXED, **values}
    unknown = sorted(set(v) - set(_OFFICIAL_DEFAULTS) - set(_OFFICIAL_FIXED) - set(_OFFICIAL_IGNORED)
                     - {"bottleneck"})
    if unknown:
        raise ValueError(f"unknown official LARP argument(s) {unknown}")
    unsupported = {k: v[k] for k, want in _OFFICIAL_FIXED.items() if v[k] != want}
    same_as_transformer = ("none", "no", "null", "", _OFFICIAL_FIXED["transformer_name"])
    for name in ("encoder_name", "decoder_name"):
        if str(v.get(name) or "none").lower() not in same_as_transformer:
            unsupported[name] = v[name]
    decoder_patch = (v["decoder_temporal_patch_size"], v["decoder_patch_size"])
    if decoder_patch != (v["temporal_patch_size"], v["patch_size"]):
        unsupported["decoder_patch_size"] = decoder_patch
    try:
        b = v["bottleneck"]["args"]
        reg = b["regularizer"]
        r = reg["args"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"official LARP config has no bottleneck.args.regularizer.args: {e}") from e
    if str(b.get("norm", "none")).lower() not in ("none", "no"):
        unsupported["bottleneck.norm"] = b["norm"]
    if reg.get("name") != "vq" or not r.get("l2_normalized") or not r.get("stochastic"):
        unsupported["bottleneck.regularizer"] = {"name": reg.get("name"), **r}
    if unsupported:
        raise ValueError(f"official LARP config uses settings this port does not implement: {unsupported}")
    return LARPConfig(
        input_size=v["input_size"], frame_num=v["frame_num"], temporal_patch_size=v["temporal_patch_size"],
        patch_size=v["patch_size"], in_channels=v["in_channels"],
        bottleneck_token_num=v["bottleneck_token_num"], encoder_hidden_size=int(v["encoder_hidden_size"]),
        decoder_hidden_size=int(v["decoder_hidden_size"]), encoder_num_heads=int(v["encoder_num_heads"]),
        decoder_num_heads=int(v["decoder_num_heads"]), encoder_depth=v["encoder_depth"],
        decoder_depth=v["decoder_depth"], bottleneck_dim=b["bottleneck_dim"],
        codebook_size=r["codebook_size"], stochastic_temperature=r.get("stochastic_temperature", 1.0),
        latent_pe_scale_factor=float(v["latent_pe_scale_factor"]), query_init_std=v["query_init_std"],
        commitment_loss_weight=r.get("commitment_loss_weight", 0.25),
        codebook_loss_weight=r.get("codebook_loss_weight", 1.0))


def convert_larp(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Official LARP state dict (released ``model.safetensors``) -> vargen.

    The key trees are identical except for the training prior: keys under
    :data:`TRAINING_ONLY_PREFIXES` (``prior_model.*``, the gptc-S AR prior) are dropped and
    named in the log. Every other key is kept, so strict loading names anything unexpected.
    """
    dropped = sorted(k for k in state_dict if k.startswith(TRAINING_ONLY_PREFIXES))
    if dropped:
        logger.info("LARP: dropped %d training-prior keys (%s): %s", len(dropped),
                    ", ".join(TRAINING_ONLY_PREFIXES), ", ".join(dropped))
    return {k: v for k, v in state_dict.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}


_LARP_SOURCE = "https://github.com/hywang66/LARP"
# The release is a PyTorchModelHubMixin safetensors file in LARP's own key tree: the converter reads it.
register_model("larp-l-long", LARPTokenizer, LARP_L_LONG, weights=Weights(
    hub_repo="hywang66/LARP-L-long-tokenizer", filename=WEIGHTS_NAME, converter=convert_larp,
    official_safetensors=True,
    # LARP README / paper Table 1: reconstruction FVD on UCF-101 (eval_larp_tokenizer.py --det).
    metrics={"ucf101_rfvd": 20}, source=_LARP_SOURCE))
register_model("larp-tiny", LARPTokenizer, LARP_TINY,
               weights=Weights(converter=convert_larp, official_safetensors=True))
