"""What every generator shares: class conditioning with a null class for CFG."""
from __future__ import annotations

from vargen.hub import VargenModule


class Generator(VargenModule):
    """Base of the class-conditional generators.

    Subclasses set ``default_sampler`` (a ``vargen.samplers`` name), ``is_discrete`` and a
    ``token_shape`` property (``(h, w)`` / ``(T, H, W)`` ids or ``(C, h, w)`` latents). The class
    index ``num_classes`` is the null class used for classifier-free guidance.
    """

    kind = "generator"
    default_sampler: str = "raster"
    samplers: tuple = ("raster",)  # the vargen.samplers names that can drive this model
    is_discrete: bool = True

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    @property
    def vocab_size(self) -> int:
        if not self.is_discrete:
            raise TypeError(f"{type(self).__name__} generates continuous tokens; it has no vocab_size")
        return self.config.vocab_size
