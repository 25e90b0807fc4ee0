"""Registry and weights I/O: round trips, Hub cache offline, strictness, corrupt files."""
import json
import os

import pytest
import torch

import vargen
from vargen.hub import WeightsError, load_from, sha256_of, verify_sha256
from vargen.models import LlamaGen

from helpers import prefill_hub_cache


def tiny_model():
    model = vargen.create_model("llamagen-tiny")
    torch.nn.init.normal_(model.output.weight)
    return model


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_list_models_wildcards_and_unknown_names():
    assert "llamagen-b" in vargen.list_models("llamagen-*")
    assert vargen.list_models("no-such-*") == []
    assert all(n == n.lower() and "_" not in n for n in vargen.list_models())
    with pytest.raises(KeyError, match="llamagen-b"):  # suggests the close match
        vargen.create_model("llamagen-bb")
    with pytest.raises(TypeError, match="unknown config field"):
        vargen.create_model("llamagen-tiny", depth=3)


def test_save_pretrained_round_trip_is_bit_exact(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"config.json", "model.safetensors"}
    assert not list((tmp_path / "m").glob("*.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    for f in ("config.json", "model.safetensors"):  # shareable, as a plain open() would make them
        assert (tmp_path / "m" / f).stat().st_mode & 0o777 == 0o666 & ~umask, f
    loaded = LlamaGen.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    assert_same_weights(model, loaded)
    via_registry = vargen.create_model("llamagen-tiny", pretrained=tmp_path / "m")
    assert_same_weights(model, via_registry)


def test_overrides_change_config_and_config_class_is_checked(tmp_path):
    model = vargen.create_model("llamagen-tiny", n_layer=3)
    assert len(model.layers) == 3
    model.save_pretrained(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config_path.write_text(config_path.read_text().replace('"LlamaGen"', '"XAR"'))
    with pytest.raises(WeightsError, match="holds a XAR, not a LlamaGen"):
        LlamaGen.from_pretrained(tmp_path / "m")


def test_prefilled_hub_cache_offline(tmp_path, monkeypatch):
    model = tiny_model()
    prefill_hub_cache(tmp_path, "vargen/tiny-test", model.save_pretrained, monkeypatch)
    assert_same_weights(model, LlamaGen.from_pretrained("vargen/tiny-test"))
    assert_same_weights(model, vargen.create_model("llamagen-tiny", pretrained="vargen/tiny-test"))
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        LlamaGen.from_pretrained("vargen/not-cached")


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    tiny_model().save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        LlamaGen.from_pretrained(tmp_path / "m")


def test_sha256_mismatch_and_missing_checkpoint(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(tiny_model().state_dict(), path)
    verify_sha256(path, sha256_of(path))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        verify_sha256(path, "0" * 64)
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_from(LlamaGen, vargen.model_config("llamagen-tiny"), path, sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        vargen.create_model("llamagen-tiny", pretrained=str(tmp_path / "missing.pt"))


def test_unsafe_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(WeightsError, match="weights_only=True"):
        vargen.create_model("llamagen-tiny", pretrained=str(path))


def test_extra_and_misshaped_keys_are_named(tmp_path):
    state = tiny_model().state_dict()
    state["extra.weight"] = torch.zeros(1)
    state["norm.weight"] = torch.zeros(3)
    torch.save({"model": state}, tmp_path / "bad.pt")
    with pytest.raises(WeightsError) as err:
        vargen.create_model("llamagen-tiny", pretrained=str(tmp_path / "bad.pt"))
    assert "extra.weight" in str(err.value) and "norm.weight: expected (64,), got (3,)" in str(err.value)


def test_pretrained_true_without_registered_weights():
    with pytest.raises(ValueError, match="no registered weights"):
        vargen.create_model("llamagen-tiny", pretrained=True)


def test_saved_config_is_plain_json(tmp_path):
    tiny_model().save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["_class_name"] == "LlamaGen" and config["grid_size"] == 4
