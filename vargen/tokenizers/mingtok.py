"""MingTok: the continuous unified tokenizer of Ming-UniVision.

Paper: "Ming-UniVision: Joint Image Understanding and Generation with a Unified Continuous
Tokenizer" (Inclusion AI, arXiv 2510.06590). Official code: github.com/inclusionAI/Ming-UniVision,
``mingtok/modeling_mingtok.py`` and ``mingtok/vision_transformer/``; weights: Hub
``inclusionAI/MingTok-Vision``.

Three stages, as released (all DINOv2-style ViT blocks: pre-LayerNorm eps 1e-6, attention with
qkv and proj biases, no LayerScale, no RoPE):

1. **Low-level encoder** (bidirectional): patch embedding, a learned absolute position embedding
   with the cls token appended *last* (bicubic-interpolated, offset 0.1, for other grids), SwiGLU
   FFNs, out layer ``LN -> GELU -> Linear(dim -> 32)`` plus a shortcut that averages contiguous
   groups of ``dim / 32`` channels. Latents are normalised as ``(z - 1.46817409) / 8.09449291``.
2. **Semantic decoder** (causal, no position embedding): ``Linear(32 -> 1024)`` plus a shortcut
   that repeat-interleaves every latent channel 32 times, SwiGLU FFNs, a final LayerNorm. Its
   1024-d outputs are the understanding-side features; the cls token is last in causal order, so
   it cannot change a patch token's feature. It decodes token by token with its own KV cache
   (:meth:`SemanticDecoder.setup_cache`), which is how Ming-UniVision feeds generated latents
   back into its LLM.
3. **Pixel decoder** (bidirectional, no position embedding, GELU MLP FFNs) fed by ``sem_to_pix``
   ``Linear(1024 -> 1024 * r^2)`` (r = encoder patch / pixel patch) and a depth-to-space with
   channel order ``(x y c)`` (not ``nn.PixelShuffle``'s ``(c x y)``); head ``LN -> Linear(-> p*p*3)``,
   unpatchified and clamped to [-1, 1].

What vargen changes on purpose: attention goes through ``vargen.nn.Attention`` (keys
``attn.wqkv``/``attn.wo``) and the SwiGLU through timm's ``SwiGLUPacked`` (``mlp.fc1``/``mlp.fc2``);
blocks are a flat ``blocks.i`` instead of the released ``blocks.0.i`` chunk -- :func:`convert_mingtok`
maps the released key tree. The official module runs its encoder and semantic decoder under bf16
autocast on GPU; vargen runs in the weights' dtype. Non-square grids decode (the official
unpatchify is square-only). The released code ships no training recipe; :meth:`MingTok.training_loss`
pins one (pixel L1 as the config's ``L1-plain``, masked modeling, semantic-feature supervision by a
frozen target), documented there.

This module holds the tokenizer, the converter and the registrations; the config and the three
stages are in :mod:`vargen.tokenizers.mingtok_stages`.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from vargen import checks
from vargen.registry import Weights, register_model
from vargen.tokenizers.base import Tokenizer
from vargen.tokenizers.mingtok_stages import (MINGTOK_TINY, MINGTOK_VISION, LowLevelEncoder, MingTokConfig,
                                              PixelDecoder, SemanticDecoder)


class MingTok(Tokenizer):
    """Images ``[B, 3, H, W]`` in [-1, 1] <-> normalised latents ``[B, 32, H/32, W/32]``."""

    config_class = MingTokConfig
    is_discrete = False
    card_metrics = ("psnr", "ssim")  # held-out, in the trained model's card (vargen.training.heldout)

    def __init__(self, config: MingTokConfig):
        super().__init__(config)
        c = config
        problems = [f"{name} {getattr(c, name)} is not divisible by {what}" for name, what in (
            ("image_size", c.patch_size), ("patch_size", c.pixel_patch_size),
            ("encoder_dim", c.latent_dim), ("semantic_dim", c.latent_dim), ("encoder_dim", c.head_dim),
            ("semantic_dim", c.head_dim), ("pixel_dim", c.head_dim)) if getattr(c, name) % what]
        if not 0 <= c.mask_ratio < 1 or not 0 <= c.mask_prob <= 1:
            problems.append(f"need 0 <= mask_ratio < 1 and 0 <= mask_prob <= 1, got {c.mask_ratio}, {c.mask_prob}")
        if (c.semantic_target is None) != (c.semantic_target_dim == 0):
            problems.append("semantic_target and semantic_target_dim > 0 go together")
        if problems:
            raise ValueError("invalid MingTokConfig: " + "; ".join(problems))
        self.downsample = c.patch_size
        self.expand = c.patch_size // c.pixel_patch_size  # pixel tokens per semantic token side
        self.low_level_encoder = LowLevelEncoder(c)
        self.semantic_decoder = SemanticDecoder(c)
        self.pixel_decoder = PixelDecoder(c)
        self.sem_to_pix = nn.Linear(c.semantic_dim, c.pixel_dim * self.expand ** 2)
        # Training only: projects semantic features onto the frozen target's (REPA-style head).
        self.semantic_head = nn.Linear(c.semantic_dim, c.semantic_target_dim) if c.semantic_target else None
        self._target: Optional[nn.Module] = None  # loaded on first use, never in the state dict
        self.apply(_init_weights)
        for p in (self.low_level_encoder.pos_embed, self.low_level_encoder.cls_token,
                  self.low_level_encoder.mask_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    @property
    def latent_channels(self) -> int:
        return self.config.latent_dim

    # ------------------------------------------------------------------ encode / decode
    def _normalise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.config.latent_mean) / self.config.latent_scale

    def encode_sequence(self, images: torch.Tensor) -> torch.Tensor:
        """The official ``forward(x)["latent"]``: normalised ``[B, h*w + 1, 32]``, cls last."""
        return self._normalise(self.low_level_encoder(self.check_images(images)))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, H, W]`` -> normalised patch latents ``[B, 32, H/p, W/p]``.

        The cls latent is dropped: causal order puts it last, so no patch output depends on it.
        """
        h, w = self.token_grid(tuple(images.shape[-2:]))
        z = self.encode_sequence(images)[:, :-1]
        return rearrange(z, "b (h w) c -> b c h w", h=h, w=w)

    def _as_sequence(self, latents: torch.Tensor) -> Tuple[torch.Tensor, Optional[Tuple[int, int]]]:
        """``[B, C, h, w]`` grid or ``[B, n, C]`` sequence -> (``[B, n, C]``, grid or None)."""
        c = self.latent_channels
        self.check_latents(latents)
        if latents.dim() == 4 and latents.shape[1] == c:
            return rearrange(latents, "b c h w -> b (h w) c"), tuple(latents.shape[-2:])
        if latents.dim() == 3 and latents.shape[-1] == c:
            return latents, None
        raise ValueError(f"latents must be [B, {c}, h, w] or [B, n, {c}], got {tuple(latents.shape)}")

    def semantic_features(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (``[B, 32, h, w]`` or ``[B, n, 32]`` in raster order) -> ``[B, n, 1024]``.

        With ``semantic_decoder.setup_cache`` active the tokens continue the cached sequence.
        """
        seq, _ = self._as_sequence(latents)
        return self.semantic_decoder(seq.to(self.weight_dtype))

    def _pixel_patches(self, features: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        # features: [B, h*w, semantic_dim] -> pixel-decoder output [B, (h r)(w r), p*p*3]
        x = self.sem_to_pix(features)                                       # [B, h*w, r*r*pixel_dim]
        x = rearrange(x, "b (h w) (x y c) -> b (h x w y) c", h=grid[0], w=grid[1], x=self.expand, y=self.expand)
        return self.pixel_decoder(x)

    def _unpatchify(self, patches: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        p = self.config.pixel_patch_size
        return rearrange(patches, "b (h w) (p q c) -> b c (h p) (w q)", h=grid[0] * self.expand,
                         w=grid[1] * self.expand, p=p, q=p, c=3)

    def decode_features(self, features: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """Semantic features ``[B, h*w, 1024]`` (raster order) -> pixels ``[B, 3, h*p, w*p]`` in [-1, 1]."""
        d = self.config.semantic_dim
        if features.dim() != 3 or features.shape[-1] != d or features.shape[1] != grid[0] * grid[1]:
            raise ValueError(f"features must be [B, {grid[0] * grid[1]}, {d}] for grid {tuple(grid)}, "
                             f"got {tuple(features.shape)}")
        features = checks.finite("features", features)
        return self._unpatchify(self._pixel_patches(features, grid), grid).clamp(-1, 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, 32, h, w]`` -> pixels ``[B, 3, h*p, w*p]`` in [-1, 1]."""
        seq, grid = self._as_sequence(latents)
        if grid is None:
            raise ValueError(f"decode needs a latent grid [B, {self.latent_channels}, h, w], got "
                             f"{tuple(latents.shape)}")
        if self.semantic_decoder.cache_length is not None:
            raise RuntimeError("decode runs a full pass: call semantic_decoder.clear_cache() first")
        return self.decode_features(self.semantic_decoder(seq.to(self.weight_dtype)), grid)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction (the official ``forward_enc_dec``)."""
        return self.decode(self.encode(images))

    # ------------------------------------------------------------------ training
    def training_loss(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None
                      ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """``(loss, logs)``; ``labels`` are ignored.

        - Pixel reconstruction: mean L1 between the pixel decoder's patches (before the clamp)
          and the image patches (the released config's ``L1-plain``).
        - Masked modeling (vargen's choice; the release names it but ships no code): in training
          mode a ``mask_prob`` share of the images has ``mask_ratio`` of its encoder patches
          replaced by a learned ``mask_token`` before the position embedding, and must still be
          reconstructed in full from those latents (the clean rest keeps unmasked encoding sharp).
        - Semantic supervision (vargen's choice): ``semantic_head(features)`` is pulled towards
          the frozen ``semantic_target``'s spatial features (negative cosine, per token, weight
          ``semantic_weight``), the role the training-only ``target_backbone`` plays in the release.
        """
        c = self.config
        images = self.check_images(images)
        h, w = self.token_grid(tuple(images.shape[-2:]))
        n = h * w
        mask = None
        if self.training and c.mask_ratio > 0 and c.mask_prob > 0:
            ranks = torch.rand(images.shape[0], n, device=images.device).argsort(1).argsort(1)
            masked_images = torch.rand(images.shape[0], 1, device=images.device) < c.mask_prob
            mask = (ranks < round(c.mask_ratio * n)) & masked_images          # [B, n]
        z = self.low_level_encoder(images, mask)                              # [B, n + 1, C], cls last
        features = self.semantic_decoder.forward_raw(z)[:, :n]                # [B, n, semantic_dim]
        patches = self._pixel_patches(features, (h, w))
        p = c.pixel_patch_size
        target = rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)
        l1 = (patches - target).abs().mean()
        loss, logs = l1, {"l1": l1.item()}
        if mask is not None:
            logs["masked_images"] = mask.any(1).float().mean().item()
        if self.semantic_head is not None:
            target_features = self.target_features(images, (h, w))           # [B, n, target_dim]
            cos = F.cosine_similarity(self.semantic_head(features).float(), target_features, dim=-1).mean()
            loss = loss + c.semantic_weight * (1 - cos)
            logs["semantic_cos"] = cos.item()
        logs["loss"] = loss.item()
        return loss, logs

    @torch.no_grad()
    def target_features(self, images: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """The frozen target's features ``[B, h*w, D]`` on the token grid.

        For ``digit-classifier``: its last conv stage before the final max-pool
        (``[B, 128, H/4, W/4]``, whose global max is the penultimate feature), area-pooled to
        the token grid.
        """
        if self.config.semantic_target is None:
            raise ValueError("this MingTok has no semantic_target (set semantic_target and semantic_target_dim)")
        if self._target is None:
            from vargen.registry import create_model
            target = create_model(self.config.semantic_target, pretrained=True).eval().requires_grad_(False)
            object.__setattr__(self, "_target", target)  # not a submodule: not saved, not trained
        target = self._target.to(images.device)
        if not hasattr(target, "features"):
            raise TypeError(f"semantic_target {self.config.semantic_target!r} has no .features stack")
        fmap = target.features[:-1](images.float())                           # [B, D, H', W']
        if fmap.shape[1] != self.config.semantic_target_dim:
            raise ValueError(f"semantic_target gives {fmap.shape[1]} channels, config says "
                             f"semantic_target_dim={self.config.semantic_target_dim}")
        return rearrange(F.adaptive_avg_pool2d(fmap, grid), "b d h w -> b (h w) d")

    @torch.no_grad()
    def fit_latent_normalization(self, images: torch.Tensor, batch_size: int = 250,
                                 decimals: Optional[int] = None) -> Tuple[float, float]:
        """Set ``latent_mean`` / ``latent_scale`` to the mean and std of the raw patch latents of
        ``images`` (as the released constants normalise MingTok-Vision's), rounded to ``decimals``
        if given; reconstructions do not change, since decoding undoes the normalisation."""
        z = torch.cat([self.low_level_encoder(self.check_images(x))[:, :-1]
                       for x in images.split(batch_size)]).double()
        mean, scale = z.mean().item(), z.std().item()
        if decimals is not None:
            mean, scale = round(mean, decimals), round(scale, decimals)
        self.config = dataclasses.replace(self.config, latent_mean=mean, latent_scale=scale)
        self.semantic_decoder.latent_mean, self.semantic_decoder.latent_scale = mean, scale
        return mean, scale


def _init_weights(module: nn.Module) -> None:
    # DINOv2 / timm ViT init (the release ships weights, not an init recipe).
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------- official checkpoint
_RENAMES = ((".attn.qkv.", ".attn.wqkv."), (".attn.proj.", ".attn.wo."), (".mlp.w12.", ".mlp.fc1."),
            (".mlp.w3.", ".mlp.fc2."))


def convert_mingtok(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Released MingTok key tree -> vargen's.

    ``blocks.0.i.`` (one ``BlockChunk``) -> ``blocks.i.``; ``attn.qkv/proj`` -> ``attn.wqkv/wo``;
    SwiGLU ``mlp.w12/w3`` -> ``mlp.fc1/fc2`` (the pixel decoder's GELU ``mlp.fc1/fc2`` keep
    their names); the training-time ``target_backbone.*`` is dropped, as the official loader
    does. Nothing else is renamed or dropped: the strict load that follows names any mismatch.
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("target_backbone."):
            continue
        parts = key.split(".")
        if len(parts) > 3 and parts[1] == "blocks" and parts[2] == "0" and parts[3].isdigit():
            key = ".".join(parts[:2] + parts[3:])
        for old, new in _RENAMES:
            key = key.replace(old, new)
        out[key] = value
    return out


# The Hub release is a transformers save (official keys): the converter reads it.
register_model("mingtok-vision", MingTok, MINGTOK_VISION, weights=Weights(
    hub_repo="inclusionAI/MingTok-Vision", filename="model.safetensors", converter=convert_mingtok,
    official_safetensors=True,
    metrics={"imagenet_val_512px_rfid": 0.54, "psnr": 30.77, "ssim": 0.62, "lpips": 0.14},
    source="inclusionAI/Ming-UniVision README (ImageNet-val 50k, 512 px, 256 tokens)"))
register_model("mingtok-tiny", MingTok, MINGTOK_TINY,
               weights=Weights(converter=convert_mingtok, official_safetensors=True))
# Shipped: MingTok's three stages at MNIST size: patch 4 -> 8x8 latents of 4 channels (as kl-mnist),
# a 16x16 pixel-decoder grid (patch 2, so sem_to_pix's depth-to-space is 2x2 as released). Training
# adds masked modeling and per-token supervision by the frozen digit-classifier (MingTok.training_loss).
register_model("mingtok-mnist", MingTok, MingTokConfig(
    image_size=32, patch_size=4, encoder_dim=128, encoder_depth=3, latent_dim=4, semantic_dim=128,
    semantic_depth=3, pixel_dim=64, pixel_depth=4, pixel_patch_size=2, head_dim=32,
    latent_mean=-0.22852, latent_scale=0.6057,  # mean / std of the train-split latents
    mask_ratio=0.5, mask_prob=0.5, semantic_target="digit-classifier", semantic_target_dim=128),
    weights=Weights.shipped("mingtok-mnist", "48e8703ec120295555136f805da9dbd86c842812a0ed3e44be87ed6534e6ac33"))
