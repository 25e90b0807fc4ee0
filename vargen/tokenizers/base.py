"""The tokenizer interface every family keeps.

``encode(x) -> tokens`` and ``decode(tokens) -> x`` with pixels in [-1, 1] (NCHW, or NCTHW for
video); ``is_discrete``; ``vocab_size`` (discrete) or ``latent_channels`` (continuous);
``token_grid(image_size)`` gives the token grid an input size maps to.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch

from vargen import checks
from vargen.hub import VargenModule
from vargen.recipes import TOKENIZER


class Tokenizer(VargenModule):
    kind = "tokenizer"
    trains_on = "images"
    default_recipe = TOKENIZER  # entries may pass their own to register_model
    is_discrete: bool = True
    downsample: int = 16  # pixels per token side

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def latent_channels(self) -> int:
        raise NotImplementedError

    def token_grid(self, image_size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        if h % self.downsample or w % self.downsample:
            raise ValueError(f"{type(self).__name__} needs image sides divisible by "
                             f"{self.downsample}, got {h}x{w}")
        return h // self.downsample, w // self.downsample

    def check_images(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` checked ([B, 3, H, W] floats in [-1, 1], sides divisible by the downsample factor)
        and cast to the tokenizer's weight dtype."""
        checks.pixels("images", x)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(x.shape)}")
        self.token_grid(tuple(x.shape[-2:]))
        return x.to(self.weight_dtype)

    def check_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Continuous tokens to decode: a float tensor without NaN / inf (the shape is the family's)."""
        if not torch.is_tensor(latents) or not torch.is_floating_point(latents):
            raise TypeError(f"latents must be a float tensor, got {getattr(latents, 'dtype', type(latents).__name__)}")
        return checks.finite("latents", latents)

    @property
    def weight_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def training_loss(self, inputs: torch.Tensor, labels: Optional[torch.Tensor] = None
                      ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The training contract: ``(loss, logs)`` on images ``inputs``; labels are ignored."""
        return self.loss(inputs)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
