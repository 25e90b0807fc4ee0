"""MAR: masked autoregression over continuous tokens with a per-token diffusion loss.

Paper: "Autoregressive Image Generation without Vector Quantization" (Li, Tian, Li, Deng, He;
NeurIPS 2024, arXiv 2406.11838). Official code: https://github.com/LTH14/mar (``models/mar.py``,
``models/diffloss.py``, ``diffusion/``); xAR (:mod:`vargen.models.xar`) grew from it.

An MAE-style bidirectional encoder-decoder of timm ViT blocks (LayerNorm eps 1e-6, GELU MLP, qkv
bias) over latent tokens (``[B, C, h, w]`` KL latents, already scaled to unit std, patchified by
``patch_size``). ``buffer_size`` prefix tokens all hold the class embedding; learned encoder,
decoder and diffusion position embeddings. The encoder sees only the known tokens (the masked
ones are dropped), the decoder pads them with ``mask_token``; its output plus
``diffusion_pos_embed_learned`` conditions :class:`~vargen.models.diffloss.SimpleMLPAdaLN`, a
per-token DDPM (cosine, 1000 steps, learned sigma). Training masks a truncated-normal fraction
(>= ``mask_ratio_min``) of a random order and scores the masked tokens only, each repeated
``diffusion_batch_mul`` times under fresh (t, noise).

Differences from the official code (key names are mapped by :func:`convert_mar_checkpoint`):
``class_emb`` and ``fake_latent`` are the rows of one :class:`LabelEmbedder` table (``fake_latent``
is the null class used for CFG and label dropout, exactly as the official ``drop_latent_mask``
swaps it in); ``diffloss.net`` is ``head``. The loss is averaged over the masked tokens only
(the official ``(loss * mask).sum() / mask.sum()``, without running the head on the others).

Inference hooks (driven by :class:`vargen.samplers.MARSampler`): ``conditions(tokens, known,
labels)`` (one transformer pass), ``head_output(x, t, z)`` (one denoiser call) and
``diffusion(num_steps)`` (the respaced schedule whose ``p_sample`` is the ancestral step).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Dict, Tuple

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from vargen import recipes
from vargen.nn import LabelEmbedder
from vargen.registry import Weights, register_model

from .base import Generator
from .diffloss import GaussianDiffusion, SimpleMLPAdaLN


@dataclass
class MARConfig:
    dim: int = 768                  # encoder_embed_dim
    decoder_dim: int = 768
    encoder_depth: int = 12
    decoder_depth: int = 12
    n_head: int = 12
    decoder_n_head: int = 12
    mlp_ratio: float = 4.0
    latent_channels: int = 16       # vae_embed_dim
    grid_size: int = 16             # latents per side (img_size / vae_stride)
    patch_size: int = 1
    num_classes: int = 1000
    class_dropout_prob: float = 0.1  # label_drop_prob
    attn_dropout_p: float = 0.1
    proj_dropout_p: float = 0.1
    norm_eps: float = 1e-6
    buffer_size: int = 64
    mask_ratio_min: float = 0.7
    mask_ratio_std: float = 0.25    # the release's fixed truncnorm scale (mean 1.0)
    head_width: int = 1024          # diffloss_w
    head_depth: int = 6             # diffloss_d
    diffusion_steps: int = 1000
    diffusion_batch_mul: int = 4


def _blocks(dim: int, depth: int, heads: int, c: MARConfig) -> nn.ModuleList:
    norm = partial(nn.LayerNorm, eps=c.norm_eps)  # as mar_base/large/huge
    return nn.ModuleList([Block(dim, heads, c.mlp_ratio, qkv_bias=True, norm_layer=norm,
                                proj_drop=c.proj_dropout_p, attn_drop=c.attn_dropout_p)
                          for _ in range(depth)])


class MAR(Generator):
    config_class = MARConfig
    default_sampler = "mar"
    is_discrete = False

    def __init__(self, config: MARConfig):
        super().__init__(config)
        c = config
        if c.grid_size % c.patch_size:
            raise ValueError(f"grid_size {c.grid_size} is not a multiple of patch_size {c.patch_size}")
        if not 0 <= c.mask_ratio_min < 1 or c.mask_ratio_std <= 0:
            raise ValueError(f"need 0 <= mask_ratio_min < 1 and mask_ratio_std > 0, got {c.mask_ratio_min}, "
                             f"{c.mask_ratio_std}")
        self.seq_len = (c.grid_size // c.patch_size) ** 2
        self.token_dim = c.latent_channels * c.patch_size ** 2
        n = self.seq_len + c.buffer_size
        self.cls_embedding = LabelEmbedder(c.num_classes, c.dim, c.class_dropout_prob)  # null = fake_latent
        self.z_proj = nn.Linear(self.token_dim, c.dim)
        self.z_proj_ln = nn.LayerNorm(c.dim, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, n, c.dim))
        self.encoder_blocks = _blocks(c.dim, c.encoder_depth, c.n_head, c)
        self.encoder_norm = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.decoder_embed = nn.Linear(c.dim, c.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_dim))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, n, c.decoder_dim))
        self.decoder_blocks = _blocks(c.decoder_dim, c.decoder_depth, c.decoder_n_head, c)
        self.decoder_norm = nn.LayerNorm(c.decoder_dim, eps=c.norm_eps)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, c.decoder_dim))
        self.initialize_weights()
        self.head = SimpleMLPAdaLN(self.token_dim, c.head_width, c.decoder_dim, c.head_depth)
        self.train_diffusion = GaussianDiffusion(c.diffusion_steps)

    def initialize_weights(self) -> None:
        # Official: N(0, 0.02) tables, xavier-uniform linears with zero bias, unit LayerNorms.
        for p in (self.cls_embedding.embedding_table.weight, self.mask_token, self.encoder_pos_embed_learned,
                  self.decoder_pos_embed_learned, self.diffusion_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------------------- helpers
    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def token_grid(self) -> tuple:
        return (self.config.grid_size, self.config.grid_size)

    def attention_layers(self) -> list:
        return []  # bidirectional, no KV cache: every iteration reruns the whole sequence

    def setup_cache(self, *args, **kwargs) -> None:
        pass

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` -> ``[B, N, C p p]`` after checking them (official ``patchify``)."""
        if not torch.is_floating_point(latents):
            raise TypeError(f"MAR works on continuous latents, got dtype {latents.dtype}")
        if latents.dim() != 4 or tuple(latents.shape[1:]) != self.token_shape:
            raise ValueError(f"expected latents [B, {', '.join(map(str, self.token_shape))}], "
                             f"got {tuple(latents.shape)}")
        if not torch.isfinite(latents).all():
            raise ValueError("latents contain NaN or inf")
        b, ch, h, w, p = *latents.shape, self.config.patch_size
        x = latents.reshape(b, ch, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, self.seq_len, self.token_dim)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, N, C p p]`` -> ``[B, C, h, w]``."""
        b, p, ch = tokens.shape[0], self.config.patch_size, self.latent_channels
        s = self.config.grid_size // p
        x = tokens.reshape(b, s, s, ch, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, ch, s * p, s * p)

    # ----------------------------------------------------------------------------- the network
    def conditions(self, tokens: torch.Tensor, known: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Head conditions ``[B, N, decoder_dim]`` for every position, from tokens ``[B, N, Cpp]``
        of which ``known [B, N]`` (bool, the same count in every row) are given; the others are
        ignored (dropped by the encoder, ``mask_token`` in the decoder). ``labels`` may hold the
        null class (``fake_latent``)."""
        c, b = self.config, tokens.shape[0]
        keep = torch.cat([known.new_ones(b, c.buffer_size), known], dim=1)         # [B, buf + N]
        if (keep.sum(1) != keep[0].sum()).any():
            raise ValueError("every row must have the same number of known tokens")
        x = self.z_proj(tokens.to(self.z_proj.weight.dtype))                       # [B, N, dim]
        cls = self.cls_embedding(labels).to(x.dtype)[:, None].expand(-1, c.buffer_size, -1)
        x = self.z_proj_ln(torch.cat([cls, x], dim=1) + self.encoder_pos_embed_learned)
        x = x[keep].view(b, -1, c.dim)                                              # known only
        for block in self.encoder_blocks:
            x = block(x)
        x = self.decoder_embed(self.encoder_norm(x))                                # [B, K, ddim]
        full = self.mask_token.to(x.dtype).expand(b, keep.shape[1], -1).clone()
        full[keep] = x.flatten(0, 1)
        x = full + self.decoder_pos_embed_learned
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)[:, c.buffer_size:]                                 # [B, N, ddim]
        return x + self.diffusion_pos_embed_learned

    def forward(self, latents: torch.Tensor, labels: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Conditions ``[B, N, decoder_dim]`` for latents ``[B, C, h, w]`` with ``known [B, N]``."""
        return self.conditions(self.patchify(latents), known, labels)

    def random_known(self, b: int, device: torch.device) -> torch.Tensor:
        """Training masks: a random order per row, its first ``ceil(N r)`` tokens masked with
        ``r`` ~ N(1, mask_ratio_std) truncated to [mask_ratio_min, 1] (one r per batch; the release's
        N(1, 0.25) on [0.7, 1] by default)."""
        c = self.config
        r = nn.init.trunc_normal_(torch.empty(1), 1.0, c.mask_ratio_std, c.mask_ratio_min, 1.0).item()
        n_masked = min(self.seq_len, max(1, int(torch.tensor(self.seq_len * r).ceil())))
        order = torch.rand(b, self.seq_len, device=device).argsort(dim=1)           # [B, N]
        known = torch.ones(b, self.seq_len, dtype=torch.bool, device=device)
        return known.scatter(1, order[:, :n_masked], False)

    def training_loss(self, latents: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        """DiffLoss (epsilon MSE + the variance's vb term) on the masked tokens, each repeated
        ``diffusion_batch_mul`` times with its own (t, noise)."""
        target = self.patchify(latents)                                            # [B, N, Cpp]
        known = self.random_known(target.shape[0], target.device)
        z = self.conditions(target, known, labels)                                 # [B, N, ddim]
        mul = self.config.diffusion_batch_mul
        z = z[~known].repeat(mul, 1)                                               # [M, ddim]
        x0 = target[~known].to(z.dtype).repeat(mul, 1)                             # [M, Cpp]
        t = torch.randint(0, self.train_diffusion.num_steps, (x0.shape[0],), device=x0.device)
        terms = self.train_diffusion.training_losses(self.head, x0.float(), t, torch.randn_like(x0.float()), c=z)
        loss = terms["loss"].mean()
        return loss, {"mse": terms["mse"].mean().item(), "vb": terms["vb"].mean().item()}

    def loss(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.training_loss(latents, labels)[0]

    # ----------------------------------------------------------------------------- inference hooks
    def head_output(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The denoiser: ``x [M, Cpp]`` at original steps ``t [M]``, conditions ``z [M, ddim]`` ->
        ``[M, 2 Cpp]`` (epsilon, variance interpolation), in float32."""
        return self.head(x.to(z.dtype), t, z).float()

    def diffusion(self, num_steps: int) -> GaussianDiffusion:
        """The sampling schedule: the training one respaced to ``num_steps`` (official
        ``gen_diffusion``)."""
        return GaussianDiffusion(self.config.diffusion_steps, num_steps)


def convert_mar_checkpoint(state: dict) -> dict:
    """Official ``checkpoint-last.pth`` state dict (``model_ema`` chosen by the loader) -> vargen
    keys: ``class_emb.weight`` + ``fake_latent`` become the rows of ``cls_embedding.embedding_table``
    (null class last) and ``diffloss.net.`` becomes ``head.``. A state dict already in vargen's
    layout is returned unchanged."""
    if "class_emb.weight" not in state and "fake_latent" not in state:
        return dict(state)
    out = {}
    for key, value in state.items():
        if key in ("class_emb.weight", "fake_latent"):
            continue
        out[key.replace("diffloss.net.", "head.", 1) if key.startswith("diffloss.net.") else key] = value
    missing = [k for k in ("class_emb.weight", "fake_latent") if k not in state]
    if missing:
        raise KeyError(f"MAR checkpoint lacks {', '.join(missing)}")
    out["cls_embedding.embedding_table.weight"] = torch.cat([state["class_emb.weight"], state["fake_latent"]])
    return out


CHECKPOINT_FORMAT = dict(converter=convert_mar_checkpoint, prefer_ema=True)
_SRC = "https://github.com/LTH14/mar (README; Dropbox checkpoint-last.pth)"
_HUB = "LTH14/mar"  # the release is on Dropbox: pass the downloaded file's path as weights
PRESETS = {
    # name: (config, file, metrics with where they come from). Evaluation: 256 iterations, 100
    # DDPM steps, linear CFG, temperature 1.0 (README's main_mar.py commands).
    "mar-b": (MARConfig(dim=768, decoder_dim=768, encoder_depth=12, decoder_depth=12, n_head=12,
                        decoder_n_head=12, head_width=1024, head_depth=6), "mar_base/checkpoint-last.pth",
              {"params": "208M (README)", "imagenet256_fid": "2.31 (README)", "imagenet256_is": 281.7,
               "eval_cfg_scale": 2.9}),
    "mar-l": (MARConfig(dim=1024, decoder_dim=1024, encoder_depth=16, decoder_depth=16, n_head=16,
                        decoder_n_head=16, head_width=1280, head_depth=8), "mar_large/checkpoint-last.pth",
              {"params": "479M (README)", "imagenet256_fid": "1.78 (README)", "imagenet256_is": 296.0,
               "eval_cfg_scale": 3.0}),
    "mar-h": (MARConfig(dim=1280, decoder_dim=1280, encoder_depth=20, decoder_depth=20, n_head=16,
                        decoder_n_head=16, head_width=1536, head_depth=12), "mar_huge/checkpoint-last.pth",
              {"params": "943M (README)", "imagenet256_fid": "1.55 (README)", "imagenet256_is": 303.7,
               "eval_cfg_scale": 3.2}),
}
for _name, (_config, _file, _metrics) in PRESETS.items():
    register_model(_name, MAR, _config, recipe=recipes.MAR, weights=Weights(
        hub_repo=_HUB, filename=_file, source=_SRC, metrics=_metrics, **CHECKPOINT_FORMAT),
        pipeline=dict(tokenizer="mar-kl16", sampler="mar", num_iter=256, num_steps=100,
                      cfg_scale=_metrics["eval_cfg_scale"], cfg_schedule="linear", temperature=1.0))
register_model("mar-tiny", MAR, MARConfig(
    dim=64, decoder_dim=64, encoder_depth=1, decoder_depth=1, n_head=4, decoder_n_head=4,
    latent_channels=4, grid_size=4, num_classes=10, buffer_size=4, head_width=64, head_depth=2,
    attn_dropout_p=0.0, proj_dropout_p=0.0), weights=Weights(**CHECKPOINT_FORMAT), recipe=recipes.MAR)
# Shipped: kl-mnist's 8x8x4 latents (64 tokens), no dropout (as xar-mnist), a 3-block head, the
# head repeated 4x per token in training as MAR's. Training mask ratios r ~ N(1, 0.5) on [0, 1]
# rather than the release's N(1, 0.25) on [0.7, 1]: the last of 16 iterations conditions on 58 of
# 64 known tokens (ratio 0.09), which [0.7, 1] never shows (FID 32.5 against 34.5; docs/mar.md). Pipeline: 16
# iterations, 100 DDPM steps, linear CFG, temperature 0.7; predicted x0 clipped to +-5
# (the latents' range is +-4.85): unclipped, this small head's epsilon error at step 999 (~1e-3) is
# multiplied by sqrt(1 / alpha_bar) = 2e4.
register_model("mar-mnist", MAR, MARConfig(
    dim=128, decoder_dim=128, encoder_depth=3, decoder_depth=3, n_head=4, decoder_n_head=4,
    latent_channels=4, grid_size=8, num_classes=10, buffer_size=8, head_width=128, head_depth=3,
    attn_dropout_p=0.0, proj_dropout_p=0.0, diffusion_batch_mul=4, mask_ratio_min=0.0, mask_ratio_std=0.5),
    weights=Weights.shipped("mar-mnist", "d18b9ec26cc7ea0523c4fe5be254337dab6730461ed8cf0ce954b73b54b7a30e",
                            prefer_ema=True),
    recipe=recipes.MAR, pipeline=dict(tokenizer="kl-mnist", sampler="mar", num_iter=16, num_steps=100,
                                      cfg_scale=3.0, cfg_schedule="linear", temperature=0.7,
                                      clip_denoised=5.0))
