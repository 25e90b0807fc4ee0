"""Samplers declare the capability they drive (samplers/capabilities.py); a model without it is
refused, by name, before any sampling; any object with the capability is driven."""
from __future__ import annotations

import pytest
import torch

import vargen
from vargen.samplers import SAMPLERS, create_sampler
from vargen.samplers.capabilities import (EntityFlow, NeighborDecoding, RasterDecoding,
                                          SpeculativeDecoding, TokenEmbedding, members, missing)
from vargen.samplers.mar import MaskedDiffusionDecoding
from vargen.samplers.next_scale import NextScaleDecoding
from vargen.samplers.token_flow import TokenFlowDecoding
from vargen.seeding import SampleRNG

TINY = ("llamagen-tiny", "nar-tiny", "nar-video-tiny", "xar-tiny", "cont-ar-tiny", "var-tiny", "mar-tiny",
        "rar-tiny")
EXPECTED = {"raster": RasterDecoding, "sjd": SpeculativeDecoding, "gsd": SpeculativeDecoding,
            "neighbor": NeighborDecoding, "flow": EntityFlow, "token-flow": TokenFlowDecoding,
            "next-scale": NextScaleDecoding, "mar": MaskedDiffusionDecoding}


def test_every_sampler_declares_a_capability():
    assert {name: cls.capability for name, cls in SAMPLERS.items()} == EXPECTED


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_model_without_the_capability_is_refused_by_name(sampler):
    capability = SAMPLERS[sampler].capability
    refused = accepted = 0
    for name in TINY:
        model = vargen.create_model(name).eval()
        lacking = missing(model, capability)
        if not lacking:
            accepted += 1
            continue
        refused += 1
        with pytest.raises(TypeError) as err:
            create_sampler(sampler)(model, torch.tensor([0]), SampleRNG(0, 1))
        message = str(err.value)
        assert f"'{sampler}' sampler cannot drive {type(model).__name__}" in message
        assert capability.__name__ in message and all(m in message for m in lacking)
        assert model.cache_length is None  # refused before any cache was set up
    assert refused and accepted, (sampler, refused, accepted)


def test_capabilities_follow_the_families():
    table = {name: {c.__name__ for c in (RasterDecoding, SpeculativeDecoding, NeighborDecoding,
                                        EntityFlow, TokenEmbedding)
                    if not missing(vargen.create_model(name), c)} for name in TINY}
    assert table == {
        "llamagen-tiny": {"RasterDecoding", "SpeculativeDecoding", "TokenEmbedding"},
        # NAR shares LlamaGen's trunk but not its next-token decode contract
        "nar-tiny": {"NeighborDecoding", "TokenEmbedding"},
        "nar-video-tiny": {"NeighborDecoding", "TokenEmbedding"},
        "xar-tiny": {"EntityFlow"},
        "cont-ar-tiny": set(),  # continuous latents, no code table: only token-flow drives it
        "var-tiny": set(),  # next-scale only
        "mar-tiny": set(),  # masked diffusion decoding only
        "rar-tiny": {"RasterDecoding", "SpeculativeDecoding", "TokenEmbedding"},  # raster at inference
    }
    assert members(RasterDecoding)[:2] == ["setup_cache", "clear_cache"]


class NoEmbedding:
    """A raster model seen through SpeculativeDecoding only: no token embedding table."""

    def __init__(self, model):
        self._model = model


for _name in members(SpeculativeDecoding):  # live views (cache_length changes while sampling)
    setattr(NoEmbedding, _name, property(lambda self, n=_name: getattr(self._model, n)))


def test_gsd_needs_a_token_embedding_or_a_codebook():
    model = vargen.create_model("llamagen-tiny").eval()
    wrapped = NoEmbedding(model)
    with pytest.raises(TypeError, match="'gsd' sampler cannot drive NoEmbedding: it needs the "
                                        "TokenEmbedding capability, and NoEmbedding lacks token_embedding"):
        create_sampler("gsd", window=2)(wrapped, torch.tensor([0]), SampleRNG(0, 1))
    codebook = model.token_embedding().detach()
    out = create_sampler("gsd", window=2, codebook=codebook)(wrapped, torch.tensor([0]), SampleRNG(0, 1))
    assert out.shape == (1, *model.token_grid)
