"""LARP video tokenizer: parity with the official module, the released key tree, strict
official loading (training prior dropped by name), shapes, seeding and input errors.

Fixtures (``tests/fixtures``), written by the official code (hywang66/LARP @ 8aaed63, timm 1.0.11)
in a separate venv by ``tests/fixtures/make_larp_fixtures.py``; the official code is never
imported here:

- ``larp_official_keys_full.json``: key -> shape of the official ``LARPTokenizer`` built with the
  released config (``cfgs/larp_tokenizer.yaml`` + the reproduce script's overrides), gptc-S prior
  included, and its parameter counts.
- ``larp_official_tiny.safetensors``: the official module at the ``larp-tiny`` config with random
  weights (``official.*``), a random clip in [0, 1], its deterministic ids, the l2-normalised
  pre-quantiser latents and ``decode_from_bottleneck(ids)``; metadata lists the ``prior_model.*``
  keys of a tiny official build with a gptc-XXS prior.
"""
import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vargen
from vargen.hub import WeightsError, load_state_dict_strict
from vargen.seeding import SampleRNG
from vargen.tokenizers.larp import (LARP_L_LONG, LARP_TINY, LARPTokenizer, config_from_official,
                                    convert_larp)

FIXTURES = Path(__file__).parent / "fixtures"
TINY_FILE = FIXTURES / "larp_official_tiny.safetensors"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny ops: thread hand-offs, not arithmetic, dominate on a shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def official():
    tensors = load_file(TINY_FILE)
    with safe_open(TINY_FILE, "pt") as f:
        meta = f.metadata()
    state = {k[len("official."):]: v for k, v in tensors.items() if k.startswith("official.")}
    return state, tensors, json.loads(meta["prior_keys"]), json.loads(meta["config"])


def _with_prior(state, prior_keys):
    return {**state, **{k: torch.zeros(2) for k in prior_keys}}


def _loaded(state) -> LARPTokenizer:
    model = LARPTokenizer(LARP_TINY).eval()
    load_state_dict_strict(model, convert_larp(state), source="official tiny")
    return model


# ----------------------------------------------------------------------------- parity
def test_matches_official_module_at_tiny_size(official):
    state, t, _, _ = official
    model = _loaded(state)
    video = t["input.video01"] * 2 - 1  # the official clip is in [0, 1]
    with torch.no_grad():
        z, _ = model.bottleneck.regularizer.probs(model.encode_latents(video))
        ids = model.encode(video)
        recon = model.decode(ids)
    assert torch.equal(ids, t["output.ids"])
    # 1e-5 is tight enough to see LayerNorm eps 1e-6 instead of 1e-5 (about 2e-4 here).
    torch.testing.assert_close(z, t["output.z"], atol=1e-5, rtol=0)
    torch.testing.assert_close((recon + 1) / 2, t["output.recon01"], atol=1e-5, rtol=0)


def test_fresh_tables_equal_the_official_init(official):
    state = official[0]
    fresh = LARPTokenizer(LARP_TINY).state_dict()
    for key in ("encoder_patch_pe", "decoder_latent_pe", "decoder_patch_query_embed"):
        torch.testing.assert_close(fresh[key], state[key], atol=1e-6, rtol=0)


def test_layernorm_eps_does_not_follow_timm_defaults():
    model = LARPTokenizer(LARP_TINY)
    norms = [m for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)
             and ".blocks." in f".{n}"]
    assert norms and all(m.eps == 1e-5 for m in norms)
    assert model.final_layer.norm_final.eps == 1e-6


# ----------------------------------------------------------------------------- key trees
def test_released_key_tree_and_size():
    ref = json.loads((FIXTURES / "larp_official_keys_full.json").read_text())
    with torch.device("meta"):
        model = LARPTokenizer(LARP_L_LONG)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    official = {k: v for k, v in ref["keys"].items() if not k.startswith("prior_model.")}
    assert ours == official
    assert len(ref["keys"]) > len(official)  # the release carries the prior too
    assert model.num_params() == ref["params_total"] - ref["params_prior"]  # 172.2M ("173M")
    assert model.token_grid((16, 128, 128)) == (1024,)


def test_missing_key_is_named(official):
    state = dict(official[0])
    del state["decoder.blocks.1.mlp.fc2.weight"]
    with pytest.raises(WeightsError, match=r"decoder\.blocks\.1\.mlp\.fc2\.weight"):
        _loaded(state)


def test_prior_keys_dropped_by_name_and_other_extras_fail(official, caplog):
    state, _, prior_keys, _ = official
    assert prior_keys and all(k.startswith("prior_model.") for k in prior_keys)
    with caplog.at_level(logging.INFO, logger="vargen.tokenizers.larp"):
        converted = convert_larp(_with_prior(state, prior_keys))
    assert set(converted) == set(state)
    assert f"dropped {len(prior_keys)} training-prior keys" in caplog.text
    assert all(k in caplog.text for k in prior_keys)
    with pytest.raises(WeightsError, match=r"loss\.disc\.weight"):
        _loaded({**state, "loss.disc.weight": torch.zeros(1)})


def test_official_safetensors_file_and_folder_load(official, tmp_path):
    state, t, prior_keys, config = official
    released = {k: v.contiguous() for k, v in _with_prior(state, prior_keys).items()}
    save_file(released, tmp_path / "model.safetensors")
    video = t["input.video01"] * 2 - 1
    # A file through the registry (the converter applies to LARP's safetensors).
    model = vargen.create_model("larp-tiny", pretrained=str(tmp_path / "model.safetensors")).eval()
    assert torch.equal(model.encode(video), t["output.ids"])
    # An official PyTorchModelHubMixin folder: config.json holds the constructor's arguments.
    official_args = {k: v for k, v in config.items() if k not in ("bottleneck_dim", "codebook_size")}
    official_args["bottleneck"] = {"name": "bottleneck", "args": {
        "bottleneck_dim": 8, "norm": "none", "regularizer": {"name": "vq", "args": {
            "codebook_size": 32, "l2_normalized": True, "stochastic": True,
            "stochastic_temperature": 0.03}}}}
    official_args.update(prior_model={"name": "gptc-XXS"}, transformer_name="transformer_encoder_parallel",
                         use_decoder_patch_query_token_type_embed=True)
    (tmp_path / "config.json").write_text(json.dumps(official_args))
    folder_model = LARPTokenizer.from_pretrained(tmp_path).eval()
    assert folder_model.config == LARP_TINY
    assert torch.equal(folder_model.encode(video), t["output.ids"])
    # vargen's own save/load round trip is bit-exact.
    folder_model.save_pretrained(tmp_path / "ours")
    again = LARPTokenizer.from_pretrained(tmp_path / "ours")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                 folder_model.state_dict().values()))


def test_official_config_with_unsupported_flags_is_refused():
    bottleneck = {"args": {"bottleneck_dim": 16, "regularizer": {
        "name": "vq", "args": {"codebook_size": 8192, "l2_normalized": True, "stochastic": True}}}}
    released = config_from_official({"bottleneck": bottleneck, "encoder_depth": 12, "decoder_depth": 12})
    assert dataclasses.replace(released, stochastic_temperature=0.03) == LARP_L_LONG
    with pytest.raises(ValueError, match="learned_encoder_patch_pe"):
        config_from_official({"bottleneck": bottleneck, "learned_encoder_patch_pe": True})
    with pytest.raises(ValueError, match="unknown official LARP argument"):
        config_from_official({"bottleneck": bottleneck, "encoder_width": 3})


# ----------------------------------------------------------------------------- behaviour
@pytest.fixture(scope="module")
def tiny(official):
    return _loaded(official[0])


def _clip(batch=2, seed=0):
    return torch.rand(batch, 3, 4, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_encode_decode_shapes(tiny):
    ids = tiny.encode(_clip(2))
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    assert 0 <= int(ids.min()) and int(ids.max()) < tiny.vocab_size == 32
    video = tiny.decode(ids)
    assert video.shape == (2, 3, 4, 16, 16)
    # NAR's T x H x W view of the same tokens, flattened in C order
    torch.testing.assert_close(tiny.decode(ids.view(2, 1, 4, 4)), video, atol=0, rtol=0)
    assert tiny(_clip(2)).shape == (2, 3, 4, 16, 16)


def test_stochastic_encoding_is_seeded_per_clip(tiny):
    clips = _clip(3, seed=1)
    together = tiny.encode(clips, rng=7)
    alone = torch.cat([tiny.encode(clips[i:i + 1], rng=SampleRNG(7, [i])) for i in range(3)])
    assert torch.equal(together, alone)
    assert torch.equal(tiny.encode(clips, rng=7), together)
    assert not torch.equal(together, tiny.encode(clips))  # it does sample (temperature 0.03)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        tiny.encode(clips, rng=SampleRNG(0, 2))


def test_stochastic_codes_follow_the_softmax_of_cosine_over_temperature(official, tiny):
    clip = official[1]["input.video01"][:1] * 2 - 1
    n = 2000
    ids = tiny.encode(clip.expand(n, -1, -1, -1, -1), rng=3)  # [n, 16], one generator per row
    cos = torch.einsum("bnd,vd->bnv", official[1]["output.z"][:1], tiny.bottleneck.regularizer.codebook())
    probs = (cos / 0.03).softmax(-1)[0]  # [16, 32], LARP's stochastic_temperature
    freq = torch.nn.functional.one_hot(ids, 32).double().mean(0)  # [16, 32]
    assert (freq - probs).abs().max() < 4 * (0.25 / n) ** 0.5  # 4 sigma of a Bernoulli mean


@pytest.mark.parametrize("shape, match", [
    ((1, 3, 4, 12, 12), r"\(T, H, W\) = \(4, 16, 16\)"),
    ((1, 3, 3, 16, 16), r"\(T, H, W\) = \(4, 16, 16\)"),
    ((1, 3, 16, 16), r"\[B, 3, T, H, W\]"),
])
def test_wrong_clip_shape_is_a_clear_error(tiny, shape, match):
    with pytest.raises(ValueError, match=match):
        tiny.encode(torch.zeros(shape))


def test_wrong_range_dtype_nan_and_ids_are_clear_errors(tiny):
    with pytest.raises(ValueError, match=r"in \[-1, 1\].*x / 127.5 - 1"):
        tiny.encode(torch.full((1, 3, 4, 16, 16), 200.0))
    bad = _clip(1)
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        tiny.encode(bad)
    with pytest.raises(TypeError, match="float"):
        tiny.encode(torch.zeros(1, 3, 4, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[B, 16\]"):
        tiny.decode(torch.zeros(1, 15, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        tiny.decode(torch.full((1, 16), 32))


def test_training_loss_falls_on_a_tiny_fit():
    torch.manual_seed(0)
    model = LARPTokenizer(LARP_TINY).train()
    clip = _clip(2, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, logs = model.training_loss(clip, None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(logs["rec_loss"])
    assert set(logs) == {"loss", "rec_loss", "loss_q"}
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


# ----------------------------------------------------------------------------- NAR video pipelines
def test_nar_video_pipelines_are_registered_with_the_paper_settings():
    from vargen.pipeline import get_pipeline_spec
    for size in ("l", "lp"):
        spec = get_pipeline_spec(f"nar-video-{size}")
        assert (spec.tokenizer, spec.generator) == ("larp-l-long", f"nar-video-{size}")
        assert spec.sampler == "neighbor"
        assert spec.sampler_options == {"cfg_scale": 1.25}


def test_larp_nar_pipeline_runs_34_passes_on_the_official_grid(tmp_path):
    # LARP with the released 1024 tokens at tiny widths + a tiny NAR video trunk on 4x16x16.
    from vargen.pipeline import Pipeline
    tokenizer = LARPTokenizer(dataclasses.replace(LARP_TINY, bottleneck_token_num=1024))
    generator = vargen.create_model("nar-video-tiny", vocab_size=32, latent_shape=(4, 16, 16))
    pipe = Pipeline(tokenizer, generator, "neighbor", {"cfg_scale": 1.25}, name="nar-video-tiny")
    calls = []
    # Counted on the network: one call of the first block per trunk pass.
    hook = generator.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    videos = pipe.generate([1, 2], seed=0)
    hook.remove()
    assert videos.shape == (2, 3, 4, 16, 16)
    assert len(calls) == pipe.last_stats["forward_passes_total"] == 4 + 16 + 16 - 2 == 34
    torch.testing.assert_close(pipe.generate([2], seed=0, sample_offset=1), videos[1:], atol=1e-6, rtol=0)
    # ... and the clips are a playable file, as `vargen sample --out clip.mp4` writes them.
    from vargen.cli import write_samples
    from vargen.video import read_video
    path = tmp_path / "clip.mp4"
    assert write_samples(videos, str(path), nrow=2) == "videos"
    assert read_video(path).shape == (3, 4, 20, 38)  # 4 frames; two 16x16 clips in a grid padded by 2
