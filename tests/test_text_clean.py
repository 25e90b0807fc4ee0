"""Caption cleaning (issue 28): LlamaGen's ``T5Embedder.text_preprocessing`` with
``use_text_preprocessing=True`` (``language/t5.py``: PixArt's ``clean_caption`` applied twice), the
default of every released entry point. Each expected output below follows from the release's rules
read off its source; the encoder cleans when ``clean_captions`` is on and only lower-cases when off;
``ftfy`` and ``bs4`` load only when a caption is cleaned. No network."""
import json
import subprocess
import sys

import pytest
import torch
from test_t2i import tiny_text_encoder

from vargen.text import clean_caption, load_text_encoder, preprocess

RULES = [
    # (rule, caption, cleaned)
    ("URLs: a scheme and a dotted web address are removed", "Check https://example.com/cat NOW", "check now"),
    ("URLs: www. addresses too", "visit www.example.org today", "visit today"),
    ("URL-encoding is decoded first (%20 and + are spaces)", "a%20red+bicycle", "a red bicycle"),
    ("HTML: tags stripped, their text kept", "<b>Bold</b> <i>cat</i>", "bold cat"),
    ("HTML: entities decoded", "caf&eacute; au lait", "café au lait"),
    ("@mentions removed", "photo by @john_doe", "photo by"),
    ("CJK ideographs (U+4E00-9FFF) removed", "一只猫 a cat", "a cat"),
    ("CJK extension A (U+3400-4DBF) removed", "㐀 a cat", "a cat"),
    ("Hiragana is outside the release's CJK ranges: kept", "ねこ cat", "ねこ cat"),
    ("every dash (em, en) becomes '-'", "a cat — on a mat – 1990–2000", "a cat - on a mat - 1990-2000"),
    ("more than three '-' or '_' become spaces", "this-is-my-cute-cat", "this is my cute cat"),
    ("three or fewer '-' are kept", "a well-known place", "a well-known place"),
    ("«» and curly double quotes become '\"'", "he said «hi» and “bye” to me", 'he said "hi" and "bye" to me'),
    ("curly single quotes become \"'\"", "it’s a cat", "it's a cat"),
    ("a run of quotes becomes one '\"'", 'say ""hi"" now', 'say "hi" now'),
    ("a run of dots becomes a space", "wow... great", "wow great"),
    ("runs of *, #, | and brackets become spaces", "***SALE*** [new] #tag", "sale new tag"),
    ("exclamation marks are not a rule: kept", "wow!!!", "wow!!!"),
    ("file names (IMG_1234.jpg) removed", "IMG_1234.jpg a dog", "a dog"),
    ("a file type word and its 'images' removed", "cute cat png images", "cute cat"),
    ("IP addresses removed", "server 192.168.1.1 rack", "server rack"),
    ("numbers of six digits or more removed", "order 1234567 shipped", "order shipped"),
    ("#ids of 1-3 digits removed", "item #12 red", "item red"),
    ("a literal backslash-n is a space", "line one\\nline two", "line one line two"),
    ("product codes (letters + digits) removed", "lamp jc6640 brass", "lamp brass"),
    ("shop phrases removed", "red dress free shipping", "red dress"),
    ("sizes (1920x1080) removed", "wallpaper 1920x1080 hd", "wallpaper hd"),
    ("ftfy expands ligatures and folds full-width letters", "a ﬁsh and a ｃａｔ", "a fish and a cat"),
    ("lower case", "A Red BICYCLE", "a red bicycle"),
    ("whitespace stripped and folded to single spaces", "  a   red\tbicycle \n", "a red bicycle"),
    ("a space after ',' between words", "red,blue", "red, blue"),
    ("applied twice: each pass drops one trailing punctuation mark", "a dog, -", "a dog"),
    ("a plain prompt is unchanged", "a blue porsche 356 parked in front of a yellow brick wall.",
     "a blue porsche 356 parked in front of a yellow brick wall."),
]


@pytest.mark.parametrize("rule, caption, cleaned", RULES, ids=[r[0] for r in RULES])
def test_release_rule(rule, caption, cleaned):
    assert clean_caption(caption) == cleaned, rule


def test_the_shipped_mnist_captions_are_unchanged_by_cleaning():
    from vargen.data.captions import HELDOUT_TEMPLATES, SEEN_TEMPLATES, captions_for
    # the generator was trained on uncleaned captions: the default must not change them
    for caption in captions_for(SEEN_TEMPLATES + HELDOUT_TEMPLATES, range(10)):
        assert clean_caption(caption) == caption


def test_the_encoder_cleans_when_on_and_not_when_off(tmp_path):
    enc = tiny_text_encoder(tmp_path)
    assert enc.clean_captions  # the release's default
    web, plain = "Check https://example.com/cat NOW", "a red bicycle"
    cleaned = enc([web, plain])
    enc.clean_captions = False
    raw = enc([web, plain])
    assert not torch.equal(cleaned[0], raw[0])             # cleaning changed the first caption
    assert torch.equal(cleaned[0], enc(["check now"])[0])  # ... into what clean_caption gives
    assert torch.equal(cleaned[1], raw[1])                 # and left a plain one as it was


def test_the_setting_is_saved_and_can_be_overridden(tmp_path):
    enc = tiny_text_encoder(tmp_path)
    enc.clean_captions = False
    enc.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "vargen_text_encoder.json").read_text())["clean_captions"] is False
    assert not load_text_encoder(str(tmp_path / "saved")).clean_captions
    assert load_text_encoder(str(tmp_path / "saved"), clean_captions=True).clean_captions


def test_ftfy_and_bs4_load_only_when_a_caption_is_cleaned():
    script = """
import json, sys
import vargen, vargen.text
vargen.list_models("llamagen-t2i*")
vargen.text.preprocess("A  cat")
before = sorted(m for m in ("ftfy", "bs4") if m in sys.modules)
vargen.text.clean_caption("A  cat")
print(json.dumps([before, sorted(m for m in ("ftfy", "bs4") if m in sys.modules)]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[], ["bs4", "ftfy"]]
    assert preprocess("  A   Red ") == "a red"  # the path without cleaning: lower case, single spaces
