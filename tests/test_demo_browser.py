"""The demo page in a real browser (Debian's chromium + chromium-driver through selenium): load
it, choose two shipped pipelines, class 7, seed 0, generate, and check that each image shown is
exactly ``pipe.generate([7], seed=0)``. ``VARGEN_DEMO_SCREENSHOT=docs/demo.png`` also saves a
screenshot of the page (the README's)."""
from __future__ import annotations

import base64
import os
import shutil
import urllib.request

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("no Chromium here (apt-get install chromium chromium-driver)", allow_module_level=True)
pytest.importorskip("gradio", reason='the demo extra is not installed (pip install -e ".[demo]")')
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from test_demo import expected, read_png  # noqa: E402

from vargen.demo import Demo, build  # noqa: E402

PAIR = ("nar-mnist", "llamagen-mnist")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = Demo(["cont-ar-mnist", *PAIR, "xar-mnist"], out_dir=str(tmp_path_factory.mktemp("demo")))
    app = build(demo)
    app.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    yield app
    app.close()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def set_number(browser, elem_id: str, value: int) -> None:
    box = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    box.clear()
    box.send_keys(str(value))


def image_bytes(browser, src: str) -> bytes:
    if src.startswith("data:"):
        return base64.b64decode(src.split(",", 1)[1])
    with urllib.request.urlopen(src, timeout=30) as response:  # the page's own server, on 127.0.0.1
        return response.read()


def test_two_pipelines_show_exactly_their_generate_images(page, browser):
    browser.get(page.local_url)
    wait = WebDriverWait(browser, 60)
    wait.until(EC.element_to_be_clickable((By.ID, "generate")))
    boxes = {b.find_element(By.XPATH, "..").text.strip(): b
             for b in browser.find_elements(By.CSS_SELECTOR, "#pipelines input[type=checkbox]")}
    for name, box in boxes.items():  # exactly the pair, whatever the page checked first
        if box.is_selected() != (name in PAIR):
            box.click()
    set_number(browser, "class-label", 7)
    set_number(browser, "seed", 0)
    browser.find_element(By.ID, "generate").click()
    WebDriverWait(browser, 600).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results img")) >= 2)
    images = browser.find_elements(By.CSS_SELECTOR, "#results img")
    shown = [read_png(image_bytes(browser, img.get_attribute("src"))) for img in images[:2]]
    report = browser.find_element(By.ID, "report").text
    assert "nar-mnist: 15 forward passes" in report and "llamagen-mnist: 64 forward passes" in report
    order = sorted(PAIR, key=report.index)  # the gallery follows the report's order
    for name, pixels in zip(order, shown):
        assert np.array_equal(pixels, expected(name, 7, 0)), name
    if os.environ.get("VARGEN_DEMO_SCREENSHOT"):
        browser.save_screenshot(os.environ["VARGEN_DEMO_SCREENSHOT"])


def test_bad_input_shows_the_cli_message_in_the_page(page, browser):
    browser.get(page.local_url)
    WebDriverWait(browser, 60).until(EC.element_to_be_clickable((By.ID, "generate")))
    set_number(browser, "seed", -3)
    browser.find_element(By.ID, "generate").click()
    WebDriverWait(browser, 60).until(lambda d: "seed must be" in d.find_element(By.TAG_NAME, "body").text)
