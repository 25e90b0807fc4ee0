"""The model card's held-out metrics: measured on the training side (vargen.training.heldout), by
what a model is (classifier, image or video tokenizer) and the names it lists in ``card_metrics``;
the models themselves import neither data nor evaluation nor training."""
import ast
from pathlib import Path

import pytest

import vargen
from vargen.data import cache, get_dataset
from vargen.eval import recon
from vargen.training.heldout import heldout_metrics

ROOT = Path(__file__).resolve().parents[1]


def test_classifier_reports_its_heldout_accuracy(tmp_path):
    clf = vargen.create_model("digit-classifier-tiny").eval()
    heldout = cache.dataset_tensors(get_dataset("mnist", "heldout", 32))
    expected = clf.accuracy(heldout["images"], heldout["labels"])
    assert heldout_metrics(clf, "mnist:train") == {"mnist_heldout_accuracy": expected}
    assert heldout_metrics(clf, str(tmp_path)) == {}  # an image folder has no held-out split


def test_image_tokenizer_reports_the_psnr_and_ssim_it_lists(monkeypatch):
    calls = []

    def measured(tokenizer, data, **options):  # vargen.eval.recon's, without the 1000 reconstructions
        calls.append((tokenizer, data, options))
        return {"num_images": 1000, "psnr": 30.5, "ssim": 0.9, "lpips": None}
    monkeypatch.setattr(recon, "reconstruction_metrics", measured)
    tok = vargen.create_model("mingtok-tiny")
    assert tok.card_metrics == ("psnr", "ssim")
    assert heldout_metrics(tok, "mnist") == {"mnist_heldout_psnr": 30.5, "mnist_heldout_ssim": 0.9}
    assert calls == [(tok, "mnist:heldout", {"fid": False})]


@pytest.mark.parametrize("name", ["llamagen-vq-tiny", "mar-kl-tiny", "llamagen-tiny"])
def test_models_listing_no_card_metrics_report_none(name):
    assert heldout_metrics(vargen.create_model(name), "mnist") == {}


def test_models_import_neither_data_nor_eval_nor_training():
    files = [ROOT / "vargen" / "classifier.py", *sorted((ROOT / "vargen" / "tokenizers").glob("*.py"))]
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.name}: {n}" for n in names
                    if n.startswith(("vargen.data", "vargen.eval", "vargen.training", "vargen.pipeline"))]
    assert not bad, bad
