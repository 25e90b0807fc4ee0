"""Any diffusers-format ``AutoencoderKL`` as a continuous vargen tokenizer.

vargen's :class:`~vargen.tokenizers.kl.KLTokenizer` is built from diffusers' VAE blocks with
``AutoencoderKL``'s key tree, so a diffusers VAE (a Hub repo or folder with ``config.json`` +
``diffusion_pytorch_model.*``, e.g. ``stabilityai/sd-vae-ft-ema``) *is* a KLTokenizer once its
config is translated: ``block_out_channels`` -> ``ch`` x ``ch_mult``, ``Attn*`` block types ->
attention levels, ``latent_channels`` -> ``embed_dim``, and ``scaling_factor`` / ``shift_factor``
-> the factors ``encode`` applies (``(z - shift) * scale``, diffusers' convention).

- :func:`load_diffusers_vae` (``"sd-vae-ft-ema"``, a repo id, or a folder): read through diffusers'
  own ``AutoencoderKL.from_pretrained`` (huggingface_hub cache, ``HF_HUB_OFFLINE``, safetensors or
  ``.bin``, legacy attention names), then loaded strictly into a KLTokenizer.
- :func:`to_diffusers`: the other way, a KLTokenizer (``mar-kl16``, ``kl-mnist``, ...) as a
  diffusers ``AutoencoderKL`` with the same weights, for ``save_pretrained`` in diffusers' format.

VAEs with per-channel ``latents_mean`` / ``latents_std``, no quant convs, or other norms and
activations are refused by name rather than approximated. diffusers is imported only when a VAE is
loaded or exported.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, Mapping, Optional

from vargen.hub import StateDict, WeightsError, load_state_dict_strict
from vargen.registry import Weights, get_entry, register_model
from vargen.tokenizers.kl import KL16, KLConfig, KLTokenizer

_DOWN = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}
_UP = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}
# What vargen's KL tokenizer is (diffusers' AutoencoderKL defaults), and the defaults of the other
# keys an older config.json may lack.
_SUPPORTED = {"in_channels": 3, "out_channels": 3, "act_fn": "silu", "norm_num_groups": 32,
              "latents_mean": None, "latents_std": None, "use_quant_conv": True,
              "use_post_quant_conv": True, "mid_block_add_attention": True}
_DEFAULTS = {**_SUPPORTED, "layers_per_block": 1, "latent_channels": 4, "scaling_factor": 0.18215,
             "shift_factor": None}


def kl_config_from_diffusers(config: Mapping[str, Any]) -> KLConfig:
    """A diffusers ``AutoencoderKL`` config (dict or ``vae.config``) -> :class:`KLConfig`."""
    c = {**_DEFAULTS, **dict(config)}
    bad = {k: c[k] for k, v in _SUPPORTED.items() if c[k] != v}
    if bad:
        raise ValueError(f"this AutoencoderKL is not a vargen KL tokenizer: {bad} (supported: "
                         f"{ {k: _SUPPORTED[k] for k in bad} })")
    widths, down, up = list(c["block_out_channels"]), list(c["down_block_types"]), list(c["up_block_types"])
    unknown = sorted(set(down) - set(_DOWN) | set(up) - set(_UP))
    if unknown or not len(down) == len(up) == len(widths):
        raise ValueError(f"block types must be {sorted(_DOWN)} / {sorted(_UP)}, one per width; got "
                         f"down {down}, up {up}, block_out_channels {widths}")
    ch = widths[0]
    if any(w % ch for w in widths):
        raise ValueError(f"block_out_channels must be multiples of the first, got {widths}")
    n = len(widths)
    return KLConfig(embed_dim=c["latent_channels"], ch=ch, ch_mult=tuple(w // ch for w in widths),
                    num_res_blocks=c["layers_per_block"],
                    encoder_attn_levels=tuple(i for i, t in enumerate(down) if _DOWN[t]),
                    decoder_attn_levels=tuple(sorted(n - 1 - k for k, t in enumerate(up) if _UP[t])),
                    scale_factor=float(c["scaling_factor"]),
                    shift_factor=float(c["shift_factor"] or 0.0))


def diffusers_config(config: KLConfig) -> Dict[str, Any]:
    """:class:`KLConfig` -> ``AutoencoderKL(**kwargs)`` with the same network and factors."""
    n = len(config.ch_mult)
    return dict(
        in_channels=3, out_channels=3, latent_channels=config.embed_dim,
        block_out_channels=tuple(config.ch * m for m in config.ch_mult),
        layers_per_block=config.num_res_blocks,
        down_block_types=tuple("AttnDownEncoderBlock2D" if i in config.encoder_attn_levels
                               else "DownEncoderBlock2D" for i in range(n)),
        up_block_types=tuple("AttnUpDecoderBlock2D" if n - 1 - k in config.decoder_attn_levels
                             else "UpDecoderBlock2D" for k in range(n)),
        scaling_factor=config.scale_factor, shift_factor=config.shift_factor or None)


def to_diffusers(tokenizer: KLTokenizer):
    """The tokenizer as a diffusers ``AutoencoderKL`` holding the same weights (identical keys)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**diffusers_config(tokenizer.config))
    load_state_dict_strict(vae, tokenizer.state_dict(), source=type(tokenizer).__name__)
    return vae.to(tokenizer.weight_dtype)


_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def convert_diffusers_vae(state_dict: StateDict) -> StateDict:
    """A diffusers ``AutoencoderKL`` state dict -> vargen: the keys are the same, except that
    files saved before diffusers 0.14 name the attention projections ``query, key, value,
    proj_attn`` (renamed here as diffusers' own loader does)."""
    pattern = re.compile(r"(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)")
    return {(f"{m.group(1)}.{_LEGACY_ATTN[m.group(2)]}.{m.group(3)}"
             if (m := pattern.fullmatch(k)) else k): v for k, v in state_dict.items()}


def load_diffusers_vae(name_or_path: str, *, subfolder: Optional[str] = None,
                       revision: Optional[str] = None, cache_dir: Optional[str] = None,
                       local_files_only: bool = False, token: Optional[str] = None) -> KLTokenizer:
    """A diffusers ``AutoencoderKL`` as a :class:`KLTokenizer`: a registered name
    (``"sd-vae-ft-ema"``), a Hub repo id (``"stabilityai/sd-vae-ft-ema"``, ``subfolder="vae"``
    inside a pipeline repo) or a local folder. Offline (``HF_HUB_OFFLINE=1``) it reads the
    huggingface_hub cache. The factors come from the repo's config; for a registered name the
    architecture must also match the registered preset."""
    from diffusers import AutoencoderKL

    preset, source = None, name_or_path
    if not os.path.isdir(name_or_path) and "/" not in name_or_path:
        entry = get_entry(name_or_path)  # unknown name: KeyError with close matches
        if entry.model_cls is not KLTokenizer or entry.weights is None or not entry.weights.hub_repo:
            raise ValueError(f"{name_or_path!r} is not a registered diffusers VAE; use one of "
                             f"{registered_diffusers_vaes()} or a Hub repo id / folder")
        preset, source = entry.config, entry.weights.hub_repo
    try:
        vae = AutoencoderKL.from_pretrained(source, subfolder=subfolder, revision=revision,
                                            cache_dir=cache_dir, local_files_only=local_files_only,
                                            token=token)
    except OSError as e:  # diffusers' EnvironmentError for a missing repo, file or cache entry
        raise FileNotFoundError(f"cannot load a diffusers AutoencoderKL from {source!r}"
                                f"{f' (subfolder {subfolder!r})' if subfolder else ''}: {e}") from e
    config = kl_config_from_diffusers(vae.config)
    if preset is not None:
        factors = dict(scale_factor=config.scale_factor, shift_factor=config.shift_factor)
        if dataclasses.replace(preset, **factors) != config:
            raise WeightsError(f"{source}'s config ({config}) does not match the registered "
                               f"{name_or_path!r} preset ({preset})")
    tokenizer = KLTokenizer(config)
    load_state_dict_strict(tokenizer, vae.state_dict(), source=source)
    return tokenizer.eval()


_SD_VAE = KLConfig(embed_dim=4, ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2,
                   encoder_attn_levels=(), decoder_attn_levels=(), scale_factor=0.18215)
# (name, Hub repo, preset, weights file): the presets copy each repo's config.json (the SD VAEs'
# has no scaling_factor, so diffusers' default 0.18215 applies). The SD VAEs' registry files are
# their original .bin state dicts (read with weights_only=True; legacy attention names renamed by
# convert_diffusers_vae), because the registry applies converters only to pickle checkpoints.
DIFFUSERS_VAES = (
    ("sd-vae-ft-ema", "stabilityai/sd-vae-ft-ema", _SD_VAE, "diffusion_pytorch_model.bin"),
    ("sd-vae-ft-mse", "stabilityai/sd-vae-ft-mse", _SD_VAE, "diffusion_pytorch_model.bin"),
    # MAR's KL-16 converted to diffusers' format by a third party (config and hash not verified).
    ("mar-vae-kl16-diffusers", "xwen99/mar-vae-kl16", KL16, "diffusion_pytorch_model.safetensors"),
)


def registered_diffusers_vaes():
    return [name for name, *_ in DIFFUSERS_VAES]


for _name, _repo, _preset, _file in DIFFUSERS_VAES:
    register_model(_name, KLTokenizer, _preset, converter=convert_diffusers_vae, weights=Weights(
        hub_repo=_repo, filename=_file, source=f"https://huggingface.co/{_repo}"))
