"""Text-to-image (issue 28): LlamaGen's t2i layout converted strictly, the official tiny model's
outputs reproduced (teacher-forced and CFG through the cache, caption padding masked), a T5
encoder from ``transformers`` built tiny here (left padding by default), prompts through the
pipeline with per-sample seeds, and ``transformers`` kept off every class-conditional path."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vargen
from vargen.hub import WeightsError, load_state_dict_strict
from vargen.pipeline import Pipeline
from vargen.samplers import create_sampler
from vargen.samplers.guidance import Guidance, cfg_labels
from vargen.seeding import SampleRNG

FIXTURES = Path(__file__).parent / "fixtures"
KEYS = json.loads((FIXTURES / "llamagen_t2i_keys.json").read_text())
TOY = "llamagen-t2i-tiny"  # 120 caption tokens of width 16, 4x4 codes out of 64


def official_state(name: str) -> dict:
    """The weights tests/fixtures/make_llamagen_t2i_keys.py gave the official tiny model."""
    gen, state = torch.Generator().manual_seed(0), {}
    for key in sorted(KEYS[name]):
        shape = KEYS[name][key]
        x = torch.randn(shape, generator=gen)
        state[key] = x / shape[-1] ** 0.5 if len(shape) == 2 else 1.0 + 0.1 * x
    return state


def toy(seed: int = 0):
    """The toy model with the official reference weights (strictly converted), eval mode."""
    model = vargen.create_model(TOY)
    convert = vargen.get_entry(TOY).weights.converter
    load_state_dict_strict(model, convert(official_state(TOY)))
    return model.eval()


def tiny_text_encoder(tmp_path, max_length: int = 120):
    """A tiny T5 encoder (d_model 16 = the toy's caption width) with the byte-level tokenizer,
    saved and loaded back as a Hub folder would be."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel
    from vargen.text import load_text_encoder
    torch.manual_seed(0)
    T5EncoderModel(T5Config(vocab_size=384, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4)
                   ).save_pretrained(tmp_path / "t5")
    ByT5Tokenizer().save_pretrained(tmp_path / "t5")
    return load_text_encoder(str(tmp_path / "t5"), max_length=max_length)


# ----------------------------------------------------------------------------- conversion
def test_released_t2i_xl_key_tree_converts_strictly():
    official = KEYS["t2i_XL_stage1_256"]
    assert official["cls_embedding.uncond_embedding"] == [120, 2048]
    with torch.device("meta"):
        model = vargen.create_model("llamagen-t2i-xl")
    state = {k: torch.empty(s, device="meta") for k, s in official.items()}
    extra = {"freqs_cis": torch.empty(376, 32, 2), "layers.0.attention.kv_cache.k_cache": torch.empty(1)}
    converted = vargen.get_entry("llamagen-t2i-xl").weights.converter({**state, **extra})
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert {k: list(v.shape) for k, v in converted.items()} == ours  # every key, uncond_embedding too


def test_toy_loads_strictly_and_names_a_bad_key():
    convert = vargen.get_entry(TOY).weights.converter
    state = convert(official_state(TOY))
    model = vargen.create_model(TOY)
    load_state_dict_strict(model, state)
    assert torch.equal(model.cls_embedding.uncond_embedding, state["cls_embedding.uncond_embedding"])
    missing = {k: v for k, v in state.items() if k != "cls_embedding.uncond_embedding"}
    with pytest.raises(WeightsError, match="uncond_embedding"):
        load_state_dict_strict(vargen.create_model(TOY), missing)
    with pytest.raises(WeightsError, match="cls_embedding.extra"):
        load_state_dict_strict(vargen.create_model(TOY), {**state, "cls_embedding.extra": torch.zeros(1)})


# ----------------------------------------------------------------------------- the official numbers
def test_matches_the_official_tiny_model_teacher_forced_and_guided_through_the_cache():
    ref = load_file(FIXTURES / "llamagen_t2i_tiny_reference.safetensors")
    model, feats, tokens = toy(), ref["feats"], ref["tokens"]
    with torch.no_grad():
        assert (model(tokens, feats) - ref["teacher"]).abs().max() <= 1e-5
        guide = Guidance(cfg_scale=4.0)
        cond = guide.labels(feats, model.null_class)  # [2B, 120, 16]: the null caption, padding kept
        model.setup_cache(cond.shape[0])
        steps = [model.prefill(cond)]
        for i in range(tokens.shape[1] - 1):
            steps.append(model.decode(guide.double(tokens[:, i:i + 1]), torch.tensor([i]))[:, -1])
        model.clear_cache()
        guided = guide.mix(torch.stack(steps, 1), 4.0)
    assert (guided - ref["guided"]).abs().max() <= 1e-5


def test_cached_decoding_equals_teacher_forcing_with_padded_captions():
    torch.manual_seed(0)
    model = toy()
    feats = torch.randn(3, 120, 16)
    feats[0, :100] = 0  # left padded
    feats[1, 30:] = 0   # right padded
    tokens = torch.randint(0, 64, (3, 16))
    with torch.no_grad():
        teacher = model(tokens, feats)
        model.setup_cache(3)
        steps = [model.prefill(feats)]
        for i in range(15):
            steps.append(model.decode(tokens[:, i:i + 1], torch.tensor([i]))[:, -1])
        model.clear_cache()
    assert (torch.stack(steps, 1) - teacher).abs().max() <= 1e-5


def test_cfg_with_the_null_caption_is_the_formula():
    torch.manual_seed(0)
    model, s = toy(), 7.5
    feats = torch.randn(2, 120, 16)
    feats[0, :90] = 0
    null = cfg_labels(feats, model.null_class)[2:]
    assert torch.equal(null[1], model.cls_embedding.uncond_embedding)
    assert not null[0, :90].any() and torch.equal(null[0, 90:], model.cls_embedding.uncond_embedding[90:])
    with torch.no_grad():
        both = model.prefill(cfg_labels(feats, model.null_class))
        model.clear_cache()
        cond, uncond = model.prefill(feats), model.prefill(null)
    guided = Guidance(cfg_scale=s).combine(both)
    assert (guided - (uncond + (cond - uncond) * s)).abs().max() <= 1e-5
    negatives = torch.randn(2, 120, 16)  # per-row nulls (negative prompts) are taken as they are
    assert torch.equal(cfg_labels(feats, negatives)[2:], negatives)


@pytest.mark.parametrize("sampler", ["raster", "sjd", "gsd"])
def test_the_discrete_samplers_drive_the_text_model_unchanged(sampler):
    torch.manual_seed(0)
    model, feats = toy(), torch.randn(3, 120, 16)
    feats[0, :110] = 0
    run = create_sampler(sampler, cfg_scale=4.0, top_k=20)
    alone = run(model, feats[:1], SampleRNG(0, [0]))  # a direct call checks the caption features
    batch = run(model, feats, SampleRNG(0, [0, 1, 2]), labels_checked=True)
    assert batch.shape == (3, 4, 4) and torch.equal(alone[0], batch[0])
    with pytest.raises(TypeError, match="caption features"):  # class ids to a text model
        run(model, torch.tensor([1]), SampleRNG(0, 1))
    with pytest.raises(ValueError, match=r"shape \[B, 120, 16\]"):
        run(model, torch.randn(1, 120, 8), SampleRNG(0, 1))


# ----------------------------------------------------------------------------- the text encoder
def test_t5_features_are_left_padded_by_default_and_right_padding_differs(tmp_path):
    enc = tiny_text_encoder(tmp_path)
    assert enc.left_padding and enc.max_length == 120
    left = enc(["A  Red bicycle", "x"])
    kept = left.ne(0).any(-1)
    n = [len("a red bicycle") + 1, 2]  # bytes + </s>
    assert kept.sum(1).tolist() == n and kept[:, -1].all() and not kept[:, 0].any()
    enc.left_padding = False
    right = enc(["A  Red bicycle", "x"])
    assert right.ne(0).any(-1)[:, 0].all() and not torch.equal(left, right)
    for row, k in enumerate(n):  # the same valid rows, moved
        assert torch.equal(left[row, -k:], right[row, :k])
    with torch.no_grad():
        assert not torch.allclose(toy().prefill(left), toy().prefill(right))


def test_pipeline_prompts_per_sample_seeds_and_negative_prompts(tmp_path):
    pipe = Pipeline(vargen.create_model("llamagen-vq-tiny"), toy(), "raster",
                    dict(cfg_scale=7.5, top_k=1000), "t2i-test", text_encoder=tiny_text_encoder(tmp_path))
    prompts = ["a red bicycle", "the number seven", "a cat", "two dogs"]
    batch = pipe(prompt=prompts, seed=0, output_type="latent").images
    alone = pipe("the number seven", seed=0, sample_offset=1, output_type="latent").images
    assert batch.shape == (4, 4, 4) and torch.equal(alone[0], batch[1])
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    listed = pipe(prompts, generator=gens, output_type="latent").images
    one = pipe(prompts[2], generator=torch.Generator().manual_seed(2), output_type="latent").images
    assert torch.equal(one[0], listed[2])
    images = pipe(prompts[:2], seed=0, output_type="pt").images  # decoded: the batch's tokens
    decoded = pipe.tokenizer.decode(batch[:2]).clamp(-1, 1)
    assert images.shape == (2, 3, 32, 32) and torch.allclose(images, decoded, atol=1e-5)
    negative = pipe(prompt=prompts, negative_prompt="blurry", seed=0, output_type="latent").images
    assert not torch.equal(negative, batch)
    assert pipe.transformer.negative_condition is None
    with pytest.raises(ValueError, match="not both"):
        pipe([1, 2], prompt="x")
    with pytest.raises(TypeError, match="is text-to-image: pass prompts"):
        pipe([1, 2], seed=0)
    classes = Pipeline(vargen.create_model("llamagen-vq-tiny"), vargen.create_model("llamagen-tiny"))
    with pytest.raises(TypeError, match="class-conditional"):
        classes("a red bicycle", seed=0)


def test_caption_dropout_trains_toward_the_null_caption():
    model = toy().train()
    model.cls_embedding.dropout_prob = 1.0
    feats = torch.randn(2, 120, 16)
    dropped = model.cls_embedding(feats)
    assert torch.equal(dropped, model.cls_embedding.cap_proj(model.cls_embedding.uncond_embedding).expand(2, -1, -1))
    loss, logs = model.training_loss(torch.randint(0, 64, (2, 16)), feats)
    loss.backward()
    assert torch.isfinite(loss) and model.cls_embedding.cap_proj.fc1.weight.grad.any()


def test_text_code_stays_off_the_class_conditional_paths():
    script = """
import contextlib, io, json, sys
from vargen.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["--help"])
    except SystemExit:
        pass
    main(["list"])
import vargen
vargen.list_models("llamagen-t2i*")
first = sorted(m for m in sys.modules if m.startswith(("transformers", "vargen.text")))
pipe = vargen.load_pipeline("llamagen-mnist")
pipe.generate([3], seed=0, progress=False)
after = sorted(m for m in sys.modules if m.startswith("transformers.models.t5"))
print(json.dumps([first, after]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    first, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert first == []  # import, --help and listing: no transformers at all
    # A class pipeline never loads T5 (diffusers' modeling code itself imports transformers' core).
    assert after == []


def test_vargen_sample_takes_prompts(tmp_path, monkeypatch, capsys):
    import vargen.speed
    from vargen.cli import main
    pipe = Pipeline(vargen.create_model("llamagen-vq-tiny"), toy(), "raster", dict(cfg_scale=7.5),
                    "t2i-test", text_encoder=tiny_text_encoder(tmp_path))
    monkeypatch.setattr(vargen.speed, "load_fast_pipeline", lambda *args, **kwargs: pipe)
    out = tmp_path / "s.png"
    assert main(["sample", "--model", "t2i-test", "--prompt", "a red bicycle", "a cat", "--per-class", "2",
                 "--negative-prompt", "blurry", "--out", str(out)]) == 0
    from PIL import Image
    assert out.is_file() and Image.open(out).size[0] > 32 and pipe.text_encoder.clean_captions
    assert main(["sample", "--model", "t2i-test", "--prompt", "<b>a cat</b>", "--no-clean-captions",
                 "--out", str(out)]) == 0
    assert not pipe.text_encoder.clean_captions  # the release's other path: only lower-cased
    assert main(["sample", "--model", "t2i-test", "--classes", "1", "--no-clean-captions", "--out", str(out)]) != 0
    assert "only text-to-image prompts are cleaned" in capsys.readouterr().err
    classes = Pipeline(vargen.create_model("llamagen-vq-tiny"), vargen.create_model("llamagen-tiny"))
    monkeypatch.setattr(vargen.speed, "load_fast_pipeline", lambda *args, **kwargs: classes)
    assert main(["sample", "--model", "x", "--prompt", "a cat", "--out", str(tmp_path / "c.png")]) != 0
    assert "is class-conditional; pass --classes" in capsys.readouterr().err


def test_registered_defaults_are_the_releases():
    from vargen.registry import get_pipeline_spec
    spec = get_pipeline_spec("llamagen-t2i-xl")
    assert (spec.tokenizer, spec.text_encoder, spec.sampler) == ("llamagen-vq16-t2i", "google/flan-t5-xl", "raster")
    assert spec.sampler_options == dict(cfg_scale=7.5, top_k=1000, top_p=1.0, temperature=1.0)
    config = vargen.model_config("llamagen-t2i-xl")
    assert (config.model_type, config.cls_token_num, config.caption_dim, config.grid_size) == ("t2i", 120, 2048, 16)
    stage2 = vargen.model_config("llamagen-t2i-xl-512")  # the same network at 512 px: 32x32 codes
    assert stage2 == dataclasses.replace(config, grid_size=32)
    assert vargen.get_entry("llamagen-t2i-xl-512").weights.location == "peizesun/llamagen_t2i/t2i_XL_stage2_512.pt"
    assert get_pipeline_spec("llamagen-t2i-xl-512") == dataclasses.replace(
        spec, name="llamagen-t2i-xl-512", generator="llamagen-t2i-xl-512")
    assert vargen.model_config("llamagen-vq16-t2i") == vargen.model_config("llamagen-vq16")  # codebook 16384 x 8
    assert vargen.get_entry("llamagen-vq16-t2i").weights.location == "peizesun/llamagen_t2i/vq_ds16_t2i.pt"


def test_a_missing_text_encoder_is_a_clear_error(tmp_path):
    from vargen.text import load_text_encoder
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text_encoder(str(tmp_path / "no-such-folder"))
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        load_text_encoder("vargen/not-cached-t5", local_files_only=True, cache_dir=str(tmp_path / "hub"))


def test_a_saved_text_pipeline_loads_back_with_its_encoder(tmp_path):
    enc = tiny_text_encoder(tmp_path)
    enc.left_padding = False  # a setting of the encoder, saved with it
    pipe = Pipeline(vargen.create_model("llamagen-vq-tiny"), toy(), "raster", dict(cfg_scale=7.5), "t2i-test",
                    text_encoder=enc)
    pipe.save_pretrained(tmp_path / "saved")
    back = vargen.load_pipeline(str(tmp_path / "saved"))
    assert back.text_encoder is not None and not back.text_encoder.left_padding
    prompts = ["a red bicycle", "a cat"]
    assert torch.equal(back(prompts, seed=1, output_type="latent").images,
                       pipe(prompts, seed=1, output_type="latent").images)


def test_the_feature_cache_is_reused_and_rebuilt_when_the_encoder_weights_change(tmp_path, monkeypatch):
    from vargen.text_cache import cached_caption_features
    enc = tiny_text_encoder(tmp_path)
    captions = ["a handwritten seven", "the number 7", "x"]
    first = cached_caption_features(enc, captions, tmp_path / "cache", batch_size=2)
    assert torch.equal(first[[0, 1, 2]], enc(captions)) and torch.equal(first[2], enc(["x"]))
    files = sorted((tmp_path / "cache").iterdir())
    calls = []
    monkeypatch.setattr(type(enc), "forward", lambda self, prompts: calls.append(prompts))
    again = cached_caption_features(enc, captions, tmp_path / "cache")  # nothing changed: read back
    assert not calls and torch.equal(again[[2, 0]], first[[2, 0]])
    monkeypatch.undo()
    with torch.no_grad():
        enc.encoder.encoder.block[0].layer[0].SelfAttention.q.weight.add_(0.1)
    changed = cached_caption_features(enc, captions, tmp_path / "cache")
    assert len(sorted((tmp_path / "cache").iterdir())) == len(files) + 1
    assert torch.equal(changed[[0, 1, 2]], enc(captions)) and not torch.equal(changed[[0]], first[[0]])
    enc.left_padding = False  # the padding side is part of the key, and of the read-back layout
    right = cached_caption_features(enc, captions, tmp_path / "cache")
    assert torch.equal(right[[0, 1, 2]], enc(captions))
    enc.clean_captions = False  # so is the caption cleaning: a new file, not the cleaned features
    count = len(sorted((tmp_path / "cache").iterdir()))
    cached_caption_features(enc, captions, tmp_path / "cache")
    assert len(sorted((tmp_path / "cache").iterdir())) == count + 1
