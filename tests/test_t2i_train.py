"""Text-to-image training (issue 28): ``vargen train --captions SET --text-encoder ENC`` turns the
class labels into template captions (held-out templates never in training), encodes them once
through the feature cache, and a tiny caption-conditioned fit learns: its loss falls and greedy
decoding from seen captions gives back each digit's id map."""
import pytest
import torch

import vargen
from vargen.data import cache
from vargen.data.captions import (HELDOUT_TEMPLATES, SEEN_TEMPLATES, WORDS, captions_for, digit_caption,
                                  template_captions)
from vargen.samplers import create_sampler
from vargen.seeding import SampleRNG
from vargen.training import TrainConfig, train

MODEL = "llamagen-t2i-tiny"  # 120 caption tokens of width 16, 4x4 codes out of 64


def test_template_captions_are_seeded_per_sample_and_hold_templates_out():
    labels = torch.arange(10).repeat(30)
    captions, index = template_captions("mnist-templates", labels, seed=5)
    assert len(captions) == 10 * len(SEEN_TEMPLATES) and len(set(captions)) == len(captions)
    for i in (0, 7, 123, 299):  # sample i's caption names its digit, in words or numerals
        d = int(labels[i])
        assert WORDS[d] in captions[index[i]].split() or str(d) in captions[index[i]].split()
    again = template_captions("mnist-templates", labels[:50], seed=5)[1]
    assert torch.equal(again, index[:50])  # a pure function of (seed, i): no batch or slice effect
    assert not torch.equal(template_captions("mnist-templates", labels, seed=6)[1], index)
    assert len(set((index % len(SEEN_TEMPLATES)).tolist())) == len(SEEN_TEMPLATES)  # all templates used
    heldout = set(template_captions("mnist-templates", labels, heldout=True)[0])
    assert heldout.isdisjoint(captions) and len(heldout) == 10 * len(HELDOUT_TEMPLATES)
    assert digit_caption("an image of {a_word}", 8) == "an image of an eight"
    assert captions_for(HELDOUT_TEMPLATES[:1], [7]) == ["a drawing of the number seven"]
    with pytest.raises(ValueError, match="digit labels 0..9"):
        template_captions("mnist-templates", torch.tensor([3, 12]))
    with pytest.raises(ValueError, match="unknown caption set"):
        template_captions("coco", labels)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A tiny frozen T5 (d_model 16 = the tiny model's caption width, 120 tokens) with ByT5's bytes."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel
    from vargen.text import T5TextEncoder
    torch.manual_seed(0)
    encoder = T5EncoderModel(T5Config(vocab_size=384, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4))
    folder = tmp_path_factory.mktemp("t5") / "t5"
    T5TextEncoder(encoder, ByT5Tokenizer(), max_length=120).save_pretrained(folder)
    return str(folder)


MAPS = torch.randint(0, 64, (4, 4, 4), generator=torch.Generator().manual_seed(1))  # digit d -> its id map


def _token_file(tmp_path):
    labels = torch.arange(4).repeat(48)  # every (digit, template) pair drawn (a pair never seen is not learnt)
    path = tmp_path / "tokens.safetensors"
    cache.save_token_file(path, MAPS[labels], labels)
    return str(path)


def test_a_caption_conditioned_fit_learns_and_regenerates_each_digits_ids(tmp_path, encoder_dir):
    cfg = TrainConfig(model=MODEL, out=str(tmp_path / "run"), data=_token_file(tmp_path), captions="mnist-templates",
                      text_encoder=encoder_dir, steps=120, batch_size=16, lr=3e-3, ema_decay=0.0, log_every=10,
                      progress=False, cache_dir=str(tmp_path / "cache"), overrides={"class_dropout_prob": 0.0})
    result = train(cfg)
    log = [__import__("json").loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < 0.25 * log[0]["loss"], (log[0]["loss"], log[-1]["loss"])
    assert list((tmp_path / "cache" / "captions").glob("captions-60-*.safetensors"))  # 10 digits x 6 templates
    from vargen.text import load_text_encoder
    model = vargen.create_model(MODEL, pretrained=result["final"]).eval()
    encoder = load_text_encoder(encoder_dir)
    prompts = captions_for(SEEN_TEMPLATES[:2], range(4))  # template-major: digits 0..3 twice
    ids = create_sampler("raster", top_k=1)(model, encoder(prompts), SampleRNG(0, len(prompts)))
    assert torch.equal(ids, MAPS[torch.arange(4).repeat(2)])


def test_caption_options_must_fit_the_model(tmp_path, encoder_dir):
    common = dict(data=_token_file(tmp_path), steps=1, batch_size=4, progress=False, cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="text-conditioned; pass --captions"):
        train(TrainConfig(model=MODEL, out=str(tmp_path / "a"), **common))
    with pytest.raises(ValueError, match="class-conditioned; drop --captions"):
        train(TrainConfig(model="llamagen-tiny", out=str(tmp_path / "b"), captions="mnist-templates",
                          text_encoder=encoder_dir, **common))
    with pytest.raises(ValueError, match="needs --text-encoder"):
        train(TrainConfig(model=MODEL, out=str(tmp_path / "d"), captions="mnist-templates", **common))
    with pytest.raises(ValueError, match=r"shape \[B, 120, 16\]"):  # the encoder's width is not the model's
        train(TrainConfig(model=MODEL, out=str(tmp_path / "e"), captions="mnist-templates",
                          text_encoder="t2i-mnist-t5", **common))


def test_the_shipped_text_encoder_resolves_by_name_and_is_checked(tmp_path, monkeypatch):
    from vargen.hub import WeightsError
    from vargen.text import SHIPPED, load_text_encoder, shipped_folder
    enc = load_text_encoder("t2i-mnist-t5")
    assert shipped_folder("weights/t2i-mnist-t5") == enc.source and type(enc.tokenizer).__name__ == "ByT5Tokenizer"
    assert (enc.max_length, enc.left_padding, enc.dim) == (32, True, 64)
    captions = [c for h in (False, True) for c in template_captions("mnist-templates", torch.arange(10), heldout=h)[0]]
    assert max(len(c.encode()) for c in captions) + 1 <= enc.max_length  # bytes + </s>: nothing truncated
    feats = enc(["a handwritten seven", "the number 7"])
    assert feats.shape == (2, 32, 64) and not torch.equal(feats[0], feats[1])
    monkeypatch.setitem(SHIPPED, "t2i-mnist-t5", "0" * 64)  # another registered hash: refused
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_text_encoder("t2i-mnist-t5")
