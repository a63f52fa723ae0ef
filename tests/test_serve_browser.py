"""The page of ``clipadapt serve`` in a real headless Chromium (Debian's ``chromium`` and
``chromedriver``, driven by Selenium): label an uploaded and a dropped image, search the
index by text and see its thumbnails, read the model card.

The model is the built-in ``lite`` backend adapted on 12 PACS photos per class; the index
holds the same 84 photos. Screenshots go to ``$CLIPADAPT_SCREENSHOTS`` when set (to look
at them), else to the test's temporary directory.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data
from PIL import Image

pytest.importorskip("fastapi", reason="clipadapt serve needs the 'serve' extra (fastapi)")
pytest.importorskip("selenium", reason="the browser test needs the 'browser' extra (selenium)")
pytest.importorskip("faiss", reason="the search box needs the 'index' extra (faiss-cpu)")
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from serve_helpers import live_server

from clipadapt.adapted import adapt, load_adapted, predict
from clipadapt.data import load_dataset
from clipadapt.feature_cache import FeatureCache
from clipadapt.features import extract_features
from clipadapt.index import build_index
from clipadapt.serve import create_app

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
PER_CLASS = 12
WAIT_S = 60

DROP_FILE = """
const [base64, name] = arguments;
const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
const drop = document.getElementById("drop");
for (const kind of ["dragenter", "dragover", "drop"]) {
  const init = { dataTransfer: transfer, bubbles: true, cancelable: true };
  drop.dispatchEvent(new DragEvent(kind, init));
}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, lite_backend):
    """(URL, the photos folder, the model directory) of a live server on 127.0.0.1; the
    model and the index read the first ``PER_CLASS`` photos of each class."""
    photos = shared_data("pacs100", "photo")
    root = tmp_path_factory.mktemp("browser")
    subset = root / "photos"
    for folder in sorted(p for p in photos.iterdir() if p.is_dir()):
        (subset / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:PER_CLASS]:
            shutil.copy(image, subset / folder.name / image.name)
    cache = FeatureCache(root / "cache")
    model = root / "model"
    adapt(lite_backend, load_dataset(subset), model, method="tip_adapter", shots=4, views=0,
          test_fraction=0.25, cache=cache, progress=False)  # fmt: skip
    paths = sorted(subset.rglob("*.jpg"))
    features = extract_features(lite_backend, paths, cache=cache, progress=False).features
    index = root / "index"
    build_index(features.numpy(), paths, index, model_spec="lite",
                image_fingerprint=lite_backend.image_fingerprint)  # fmt: skip
    with live_server(create_app(model, index, backend=lite_backend)) as url:
        yield url, photos, model


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium, chromedriver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1200,1500", "--disable-gpu"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def screenshot(driver, tmp_path: Path, name: str) -> None:
    folder = Path(os.environ.get("CLIPADAPT_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / f"{name}.png"))


def test_upload_drop_search_and_card_in_headless_chromium(served, browser, lite_backend, tmp_path):
    url, photos, model = served
    upload = sorted((photos / "elephant").iterdir())[-1]  # photos the model never saw
    dropped = sorted((photos / "guitar").iterdir())[-1]
    noise = tmp_path / "noise.png"  # unlike any class: the knn score should reject it
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), np.uint8)).save(noise)
    expected, _ = predict(
        load_adapted(model), lite_backend, [upload, noise, dropped], progress=False
    )
    assert expected[1]["label"] == "unknown"  # the page must show the flag, checked below
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#card dd"))
    card = browser.find_element(By.ID, "card").text
    assert "tip_adapter" in card and "knn score >" in card and "84 images" in card

    browser.find_element(By.ID, "files").send_keys(f"{upload}\n{noise}")  # two files at once
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".prediction")) == 2)
    rows = browser.find_elements(By.CSS_SELECTOR, ".prediction")
    for row, want, path in zip(rows, expected, (upload, noise), strict=False):
        assert row.find_element(By.CSS_SELECTOR, ".label").text == want["label"]
        meta = row.find_element(By.CSS_SELECTOR, ".meta").text
        assert meta.startswith(f"{path.name}: score ") and "OOD score" in meta
        flag = row.find_element(By.CSS_SELECTOR, ".flag").text
        assert flag == ("unknown" if want["label"] == "unknown" else "known class")
        assert len(row.find_elements(By.CSS_SELECTOR, ".top5 li")) == 5
    screenshot(browser, tmp_path, "1-upload")

    data = base64.b64encode(dropped.read_bytes()).decode()
    browser.execute_script(DROP_FILE, data, dropped.name)  # what a user's drop dispatches
    wait.until(
        lambda d: d.find_element(By.CSS_SELECTOR, ".prediction .meta").text.startswith(dropped.name)
    )
    assert browser.find_element(By.CSS_SELECTOR, ".prediction .label").text == expected[2]["label"]
    screenshot(browser, tmp_path, "2-drop")

    query = browser.find_element(By.ID, "query")
    query.send_keys("a photo of a dog")
    browser.find_element(By.CSS_SELECTOR, "#search-form button").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results img")) == 12)
    wait.until(
        lambda d: d.execute_script(
            "return [...document.querySelectorAll('#results img')]"
            ".every((img) => img.complete && img.naturalWidth > 0)"
        )
    )
    captions = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#results figcaption")]
    assert sum(c.startswith("dog/") for c in captions) >= 6, captions
    screenshot(browser, tmp_path, "3-search")
