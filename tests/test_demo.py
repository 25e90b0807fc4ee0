"""``vargen demo`` without a browser: the server side gives ``pipe.generate``'s images, refuses
bad input with the CLI's words before any work, keeps concurrent requests apart, and the command
stays light (no gradio or torch for ``--help``). The page in a real browser: test_demo_browser.py."""
from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import vargen
from vargen.images import to_uint8

gradio = pytest.importorskip("gradio", reason='the demo extra is not installed (pip install -e ".[demo]")')

from vargen.demo import Demo, build, details, offered_pipelines, serve  # noqa: E402

PAIR = ["nar-mnist", "llamagen-mnist"]


def expected(name: str, label: int, seed: int) -> np.ndarray:
    pixels = vargen.load_pipeline(name).generate([label], seed=seed, progress=False)
    return to_uint8(pixels)[0].permute(1, 2, 0).numpy()


def read_png(path_or_bytes) -> np.ndarray:
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    return np.asarray(Image.open(source).convert("RGB"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return Demo(PAIR, out_dir=str(tmp_path_factory.mktemp("demo")))


def test_offers_the_shipped_pipelines_whose_weights_are_here():
    names = offered_pipelines()
    assert set(PAIR) <= set(names) and all(n.endswith("-mnist") for n in names)


def test_results_equal_generate_with_their_reproducing_lines(demo):
    results = demo.run(PAIR, 7, 0)
    for r in results:
        assert not r.error and r.forward_passes > 0
        assert np.array_equal(read_png(r.files[0]), expected(r.pipeline, 7, 0)), r.pipeline
        assert r.command == f"vargen sample --model {r.pipeline} --classes 7 --seed 0 --out {r.pipeline}.png"
    assert "15 forward passes" in details(results)  # NAR: 2n - 1 on the 8x8 grid


def test_each_pipeline_takes_only_the_options_its_sampler_declares(demo):
    (nar,) = demo.run(["nar-mnist"], 3, 1, options={"cfg_scale": "1.5", "num_steps": "8"})
    assert "--cfg-scale 1.5" in nar.command and "num-steps" not in nar.command  # a flow option
    pixels = vargen.load_pipeline("nar-mnist").generate([3], seed=1, cfg_scale=1.5, progress=False)
    assert np.array_equal(read_png(nar.files[0]), to_uint8(pixels)[0].permute(1, 2, 0).numpy())


@pytest.mark.parametrize("names,label,seed,options,message", [
    (["nar-mnist"], float("nan"), 0, {}, "class label"),
    (["nar-mnist"], 2.5, 0, {}, "class label"),
    (["nar-mnist"], 1, -1, {}, "seed"),
    (["nar-mnist"], 1, 0, {"top_p": "2"}, "--top-p"),
    (["nar-mnist"], 1, 0, {"cfg_scale": "nan"}, "--cfg-scale"),
    (["nar-mnist"], 1, 0, {"num_steps": "100000000"}, "--num-steps"),
    (["nar-mnist"], 1, 0, {"cfg_schedule": "cubic"}, "--cfg-schedule"),
    (["/etc/passwd"], 1, 0, {}, "not offered"),
    ([], 1, 0, {}, "choose pipelines"),
])
def test_bad_input_is_refused_before_any_work(demo, names, label, seed, options, message):
    loaded = dict(demo._loaded)
    with pytest.raises((ValueError, TypeError), match=message):  # the page shows it as gr.Error
        demo.run(names, label, seed, options=options)
    assert demo._loaded.keys() == loaded.keys()


def test_out_of_range_class_gets_the_cli_message(demo):
    (r,) = demo.run(["nar-mnist"], 12, 0)
    assert r.error == "class label (nar-mnist) must be in [0, 9] (10 classes); got 12" and not r.files


def test_binding_wider_than_this_machine_warns(monkeypatch):
    launched = {}
    monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **kw: launched.update(kw))
    with pytest.warns(RuntimeWarning, match="anyone who can reach"):
        serve(["nar-mnist"], host="0.0.0.0", port=7999)
    assert launched["server_name"] == "0.0.0.0"


def test_two_clients_at_once_get_their_own_images(demo):
    from gradio_client import Client
    page = build(demo, max_queue=4)
    page.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    try:
        blanks = [""] * len(demo.option_fields())
        out = {}

        def ask(seed):
            client = Client(page.local_url, verbose=False)
            out[seed] = client.predict(["nar-mnist"], 5, seed, "(pipeline default)", *blanks, api_name="/generate")

        threads = [threading.Thread(target=ask, args=(s,)) for s in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        for seed in (0, 1):
            gallery = out[seed][0]
            assert np.array_equal(read_png(gallery[0]["image"]), expected("nar-mnist", 5, seed)), seed
        assert not np.array_equal(read_png(out[0][0][0]["image"]), read_png(out[1][0][0]["image"]))
    finally:
        page.close()
