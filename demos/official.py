"""The official implementations that ``demos/bench.py`` runs against vargen, built from a scratch
checkout at the benchmark's config. Never imported by vargen or its tests.

``--official-root DIR`` holds one folder per repository, checked out by hand (never committed):

    DIR/LlamaGen   https://github.com/FoundationVision/LlamaGen   autoregressive/models/{gpt,generate}.py
    DIR/NAR        https://github.com/ThisisBillhe/NAR            NAR-images/..., NAR-videos/...
    DIR/xAR        https://github.com/OliverRensu/xAR             models/{xar,sampler}.py
    DIR/1d-tokenizer  https://github.com/bytedance/1d-tokenizer   modeling/rar.py (RAR)
    DIR/mar        https://github.com/LTH14/mar                   models/{mar,diffloss}.py, diffusion/
    DIR/VAR        https://github.com/FoundationVision/VAR        models/{var,basic_var,vqvae,quant}.py

Each builder makes the official model with its own initialisation under ``torch.manual_seed(seed)``
(zero-initialised output heads get N(0, 0.02) so logits vary), and returns it with a
``generate(labels) -> tokens`` that calls the official sampling function exactly as the official
sample script does. vargen's side of the benchmark loads the same state dict through vargen's
converter, so both run the same weights. The repositories reuse top-level package names
(``autoregressive``, ``models``, ``utils``), so each builder runs in its own worker process.
"""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn

# repository folder under --official-root, and the sub-folder put on sys.path
REPOS = {"raster": ("LlamaGen", "."), "nar": ("NAR", "NAR-images"), "xar": ("xAR", "."),
         "video-nar": ("NAR", "NAR-videos"), "rar": ("1d-tokenizer", "."), "mar": ("mar", "."),
         "var": ("VAR", ".")}


class OfficialMissing(RuntimeError):
    """The official checkout is not where --official-root says."""


@dataclass
class Official:
    model: nn.Module
    generate: Callable[[torch.Tensor], torch.Tensor]
    tokenizer: Optional[nn.Module] = None  # VAR: the VQVAE whose quantizer builds the inputs

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v.float() if v.is_floating_point() else v for k, v in self.model.state_dict().items()}


def repo_path(root: str, family: str) -> Path:
    folder, sub = REPOS[family]
    path = Path(root) / folder / sub
    if not path.is_dir():
        raise OfficialMissing(f"official {family}: {path} not found (check out {folder} under "
                              f"--official-root; see demos/official.py)")
    return path


def _import_from(path: Path):
    sys.path.insert(0, str(path))


class _Stub(types.ModuleType):
    """A module the official code imports but never calls on the sampling path."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return None


def _stub(*names: str) -> None:
    for name in names:
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = _Stub(name)


def randomise_zero_heads(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear) and not m.weight.any():
                m.weight.normal_(0, 0.02)


def _build(cls, seed: int, dtype: torch.dtype, device: str, *args, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    model = cls(*args, **kwargs)
    randomise_zero_heads(model)
    return model.eval().to(device=device, dtype=dtype)


def build(family: str, root: str, trunk: dict, spec: dict) -> Official:
    """The official model of ``family`` at ``trunk`` (vargen's override names) and its sampler."""
    return BUILDERS[family](repo_path(root, family), trunk, spec)


def _gpt(path: Path, trunk: dict, spec: dict) -> Official:
    """LlamaGen / NAR-images ``Transformer`` + ``generate`` (their sample_c2i.py's call)."""
    _import_from(path)
    from autoregressive.models.generate import generate
    from autoregressive.models.gpt import ModelArgs, Transformer
    args = ModelArgs(dim=trunk.get("dim", 768), n_layer=trunk.get("n_layer", 12), n_head=trunk.get("n_head", 12),
                     vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1, model_type="c2i",
                     token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)
    model = _build(Transformer, spec["seed"], spec["dtype"], spec["device"], args)

    def run(labels: torch.Tensor) -> torch.Tensor:
        return generate(model, labels, 256, cfg_scale=spec["cfg"], cfg_interval=-1,
                        temperature=1.0, top_k=spec["top_k"], top_p=1.0, sample_logits=True)
    return Official(model, run)


def _xar(path: Path, trunk: dict, spec: dict) -> Official:
    """xAR ``sample_tokens`` (engine_xar.evaluate's call; autocast as the official evaluation)."""
    # models/rope.py imports flash_attn, which it never calls; the sampler calls .cuda().
    _stub("flash_attn")
    device = spec["device"]
    torch.Tensor.cuda = lambda self, *a, **k: self.to(device)
    _import_from(path)
    from models.xar import xAR
    dim, n_head = trunk.get("dim", 768), trunk.get("n_head", 12)
    model = _build(xAR, spec["seed"], torch.float32, device, img_size=256, vae_stride=16, patch_size=1,
                   encoder_embed_dim=dim, encoder_depth=trunk.get("encoder_depth", 8), encoder_num_heads=n_head,
                   decoder_embed_dim=dim, decoder_depth=trunk.get("decoder_depth", 8), decoder_num_heads=n_head,
                   mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6), vae_embed_dim=16, class_num=1000,
                   attn_dropout=0.0, proj_dropout=0.0, clusters=4)
    autocast = spec["dtype"] != torch.float32  # the official evaluation runs under autocast

    def run(labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.split(":")[0], dtype=spec["dtype"], enabled=autocast):
            return model.sample_tokens(num_steps=spec["num_steps"], cfg=spec["cfg"], label=labels)
    return Official(model, run)


def _video_nar(path: Path, trunk: dict, spec: dict) -> Official:
    """NAR-videos ``LARP_AR`` (attn_num_back = attn_num_down = 1) + ``ar.generate.generate``."""
    # models/__init__ and utils import the tokenizer's and trainer's dependencies
    _stub("lpips", "easydict", "torch.utils.tensorboard", "wandb", "decord", "av")
    _import_from(path)
    from ar.generate import generate
    from models.larp_ar import LARP_AR, ModelArgs
    shape = tuple(spec["latent_shape"])
    args = ModelArgs(dim=trunk["dim"], n_layer=trunk["n_layer"], n_head=trunk["n_head"], vocab_size=8192,
                     num_classes=101, latent_shape=shape, max_seq_len=shape[0] * shape[1] * shape[2],
                     token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)
    model = _build(LARP_AR, spec["seed"], spec["dtype"], spec["device"], args)
    n = shape[0] * shape[1] * shape[2]

    def run(labels: torch.Tensor) -> torch.Tensor:
        return generate(model, labels, n, cfg_scale=spec["cfg"], cfg_interval=-1,
                        temperature=1.0, top_k=spec["top_k"], top_p=1.0, sample_logits=True)
    return Official(model, run)


class _Conf(dict):
    """OmegaConf-style attribute access (1d-tokenizer reads ``config.model.generator.x``)."""

    def __getattr__(self, name: str):
        value = self[name]
        return _Conf(value) if isinstance(value, dict) else value


def _rar(path: Path, trunk: dict, spec: dict) -> Official:
    """1d-tokenizer ``RAR`` + ``generate`` with its KV cache (sample_imagenet_rar.py's call, RAR-B's pow)."""
    _import_from(path)
    from modeling.rar import RAR
    gen = dict(hidden_size=trunk.get("dim", 768), num_hidden_layers=trunk.get("n_layer", 24),
               num_attention_heads=trunk.get("n_head", 16), intermediate_size=trunk.get("intermediate_size", 3072),
               image_seq_len=256, condition_num_classes=1000, dropout=0.0, attn_drop=0.0)
    model = _build(RAR, spec["seed"], spec["dtype"], spec["device"],
                   _Conf(model={"vq_model": {"codebook_size": 1024}, "generator": gen}))

    def run(labels: torch.Tensor) -> torch.Tensor:
        return model.generate(labels, guidance_scale=spec["cfg"], randomize_temperature=1.0, guidance_scale_pow=2.75)
    return Official(model, run)


def _mar(path: Path, trunk: dict, spec: dict) -> Official:
    """MAR ``sample_tokens`` (engine_mar.evaluate's call, linear CFG, autocast as its evaluation)."""
    device = spec["device"]
    torch.Tensor.cuda = lambda self, *a, **k: self.to(device)  # mask_by_order, sample_orders, diffloss
    _import_from(path)
    from models.mar import MAR
    dim, ddim = trunk.get("dim", 768), trunk.get("decoder_dim", 768)
    model = _build(MAR, spec["seed"], torch.float32, device, img_size=256, vae_stride=16, patch_size=1,
                   encoder_embed_dim=dim, encoder_depth=trunk.get("encoder_depth", 12),
                   encoder_num_heads=trunk.get("n_head", 12), decoder_embed_dim=ddim,
                   decoder_depth=trunk.get("decoder_depth", 12), decoder_num_heads=trunk.get("decoder_n_head", 12),
                   mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6), vae_embed_dim=16, class_num=1000,
                   attn_dropout=0.0, proj_dropout=0.0, buffer_size=64, diffloss_d=trunk.get("head_depth", 6),
                   diffloss_w=trunk.get("head_width", 1024), num_sampling_steps=str(spec["num_steps"]))
    autocast = spec["dtype"] != torch.float32

    def run(labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.split(":")[0], dtype=spec["dtype"], enabled=autocast):
            return model.sample_tokens(labels.shape[0], num_iter=spec.get("mar_iter", 64), cfg=spec["cfg"],
                                       cfg_schedule="linear", labels=labels, temperature=1.0)
    return Official(model, run)


def _var(path: Path, trunk: dict, spec: dict) -> Official:
    """VAR ``autoregressive_infer_cfg`` (README FID run: cfg 1.5, top-k 900, top-p 0.96, more_smooth
    off; ``g_seed`` as demo_sample.ipynb; autocast for bf16 as the notebook). Built with
    ``build_vae_var``'s arguments (VQVAE ch 160 / V 4096 / Cvae 32, width 64 d and d heads unless the
    trunk says, ``init_weights`` defaults) but not by it: it switches off ``reset_parameters`` of every
    Linear / Conv2d class, which would leave the (never loaded here) VQVAE's convs uninitialised.
    The official function ends with ``vae.fhat_to_img`` (the VQVAE decoder, 256 px): the benchmark
    times tokens, so unless ``spec["var_decode"]`` it is replaced by the identity on f_hat; the
    quantizer's phi convs, which build every scale's input, run as released."""
    device = spec["device"]
    _import_from(path)
    from models.var import VAR
    from models.vqvae import VQVAE
    depth = trunk.get("depth", 16)
    dim, heads = trunk.get("embed_dim", 64 * depth), trunk.get("num_heads", depth)
    patch_nums = tuple(trunk.get("patch_nums", (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)))
    torch.manual_seed(spec["seed"])  # the VQVAE keeps torch's default init (the release loads it)
    vae = VQVAE(vocab_size=4096, z_channels=32, ch=160, test_mode=True, share_quant_resi=4, v_patch_nums=patch_nums)
    model = VAR(vae_local=vae, num_classes=1000, depth=depth, embed_dim=dim, num_heads=heads, drop_rate=0.0,
                attn_drop_rate=0.0, drop_path_rate=0.1 * depth / 24, norm_eps=1e-6, shared_aln=False,
                cond_drop_rate=0.1, attn_l2_norm=True, patch_nums=patch_nums)
    model.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
    randomise_zero_heads(model)
    model.eval().to(device)
    vae.to(device)
    if not spec.get("var_decode"):
        vae.fhat_to_img = lambda f_hat: f_hat  # tokens only; add_(1).mul_(0.5) after it stays
    autocast = spec["dtype"] != torch.float32
    cfg, top_k, top_p = spec.get("var_cfg", 1.5), spec.get("var_top_k", 900), spec.get("var_top_p", 0.96)

    def run(labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.split(":")[0], dtype=spec["dtype"], enabled=autocast):
            return model.autoregressive_infer_cfg(B=labels.shape[0], label_B=labels, g_seed=spec["seed"], cfg=cfg,
                                                  top_k=top_k, top_p=top_p, more_smooth=False)
    return Official(model, run, tokenizer=vae)


BUILDERS = {"raster": _gpt, "nar": _gpt, "xar": _xar, "video-nar": _video_nar, "rar": _rar, "mar": _mar,
            "var": _var}
