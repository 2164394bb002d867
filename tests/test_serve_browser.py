"""The web page in a real headless Chromium: upload a photo, see its caption and attention map.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them) and selenium
(the dev extra); skips without them. ``CAPTIONER_UPDATE_SCREENSHOT=1`` also writes the page's
screenshot to docs/serve-screenshot.png, and ``CAPTIONER_SCREENSHOT_MODEL=DIR`` serves that
model (e.g. runs/demo/run/model) instead of the tiny test model.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFilter

pytest.importorskip("fastapi")
pytest.importorskip("selenium")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from serve_support import (  # noqa: E402
    TINY_CAPTION,
    build_tiny_captioner,
    live_server,
    write_search_catalogue,
)

from captioner.caption.captioner import Captioner  # noqa: E402
from captioner.demo.shapes import render_scene, sample_scene  # noqa: E402
from captioner.serve import create_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "serve-screenshot.png"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)
OVERLAY_PIXELS = """
const canvas = document.getElementById('overlay');
if (!canvas.width || !canvas.height) return 0;
const data = canvas.getContext('2d', {willReadFrequently: true})
    .getImageData(0, 0, canvas.width, canvas.height).data;
let painted = 0;
for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
return painted;
"""

# Drag and drop, as the browser delivers it: a DataTransfer holding a File, dropped on the zone.
DROP_A_FILE = """
const done = arguments[arguments.length - 1];
const realFetch = window.fetch;
window.captionCalls = 0;
window.fetch = (...args) => {
  if (String(args[0]).includes('/v1/caption')) window.captionCalls++;
  return realFetch(...args);
};
realFetch('/v1/samples/shapes-2').then((r) => r.blob()).then((blob) => {
  const data = new DataTransfer();
  data.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
  document.body.dataset.state = 'idle';
  const zone = document.getElementById('dropzone');
  zone.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
  done();
});
"""


def find_browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/lib/chromium/chromedriver"
        if Path("/usr/lib/chromium/chromedriver").is_file()
        else None
    )
    if not chromium or not driver:
        pytest.skip("no chromium + chromedriver (Debian: apt-get install chromium chromium-driver)")
    return chromium, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    chromium, driver_path = find_browser()
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must never fetch a driver
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument("--window-size=1200,940")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str | None]]:
    """(base URL, expected caption); a real model has no expected caption and no denoiser."""
    model_dir = os.environ.get("CAPTIONER_SCREENSHOT_MODEL")
    if model_dir:
        app = create_app(Captioner.from_pretrained(model_dir))
        expected = None
    else:
        captioner = build_tiny_captioner(tmp_path_factory.mktemp("tiny-model"))
        catalogue = write_search_catalogue(tmp_path_factory.mktemp("catalogue"), ["Photo", "Text"])
        app = create_app(
            captioner,
            lambda image: image.filter(ImageFilter.MedianFilter(3)),
            catalogue=catalogue,
        )
        expected = TINY_CAPTION
    with live_server(app) as url:
        yield url, expected


def scene_png(folder: Path) -> Path:
    rng = np.random.default_rng(3)
    path = folder / "scene.png"
    render_scene(sample_scene(rng, image_size=448), rng).save(path)
    return path


def wait_for(driver: WebDriver, script: str, timeout: float = 30) -> object:
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.execute_script(script)
    )


def test_upload_caption_and_attention_overlay(
    browser: WebDriver, served: tuple[str, str | None], tmp_path: Path
) -> None:
    url, expected = served
    browser.get(url + "/")
    wait_for(browser, "return !document.getElementById('model-info').textContent.includes('…')")
    assert "mobilenet_v2" in browser.find_element(By.ID, "model-info").text
    wait_for(browser, "return document.querySelectorAll('#sample-list .sample').length > 0")

    browser.find_element(By.ID, "file-input").send_keys(str(scene_png(tmp_path)))
    wait_for(browser, "return document.body.dataset.state === 'done'")
    words = browser.find_elements(By.CSS_SELECTOR, "#words .word")
    caption = " ".join(word.text for word in words)
    assert caption and (expected is None or caption == expected)
    assert wait_for(browser, "return document.getElementById('overlay').dataset.word")
    assert browser.execute_script(OVERLAY_PIXELS) > 1000

    ActionChains(browser).move_to_element(words[-1]).perform()
    wait_for(
        browser, f"return document.getElementById('overlay').dataset.word === {words[-1].text!r}"
    )
    assert "active" in words[-1].get_attribute("class")
    words[1].click()
    assert "pinned" in words[1].get_attribute("class")
    assert browser.execute_script("return document.getElementById('overlay').dataset.word") == (
        words[1].text
    )
    assert browser.execute_script(OVERLAY_PIXELS) > 1000

    shot = tmp_path / "serve-page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("CAPTIONER_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_phone_width_error_message_and_denoise(
    browser: WebDriver, served: tuple[str, str | None], tmp_path: Path
) -> None:
    url, expected = served
    browser.set_window_size(390, 844)
    try:
        browser.get(url + "/")
        wait_for(browser, "return document.querySelectorAll('#sample-list .sample').length > 0")
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0, "the page scrolls sideways at phone width"

        bad = tmp_path / "notes.png"
        bad.write_text("this is not a picture")
        browser.find_element(By.ID, "file-input").send_keys(str(bad))
        wait_for(browser, "return document.body.dataset.state === 'error'")
        assert "not an image" in browser.find_element(By.ID, "status").text

        denoise = expected is not None  # the tiny model's server has a denoiser
        assert browser.find_element(By.ID, "denoise-option").is_displayed() == denoise
        if denoise:
            browser.find_element(By.ID, "denoise").click()
        browser.find_element(By.CSS_SELECTOR, "#sample-list .sample").click()
        wait_for(browser, "return document.body.dataset.state === 'done'")
        assert browser.find_elements(By.CSS_SELECTOR, "#words .word")
        wait_for(browser, "return document.getElementById('overlay').dataset.word")
        photo = browser.find_element(By.ID, "photo").get_attribute("src")
        assert photo.startswith("data:image/png;base64,") == denoise
        assert browser.find_element(By.ID, "view-toggle").is_displayed() == denoise
        browser.save_screenshot(str(tmp_path / "serve-phone.png"))

        browser.execute_async_script(DROP_A_FILE)
        wait_for(browser, "return document.body.dataset.state === 'done'")
        assert browser.execute_script("return window.captionCalls") == 1
        assert browser.find_elements(By.CSS_SELECTOR, "#words .word")
    finally:
        browser.set_window_size(1200, 940)


def test_api_docs_render_from_local_files(
    browser: WebDriver, served: tuple[str, str | None]
) -> None:
    url, _ = served
    browser.set_window_size(1200, 940)
    browser.get(url + "/docs")
    wait_for(browser, "return document.querySelectorAll('.opblock-summary-path').length > 0")
    paths = browser.execute_script(
        "return [...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent)"
    )
    assert "/v1/caption" in " ".join(paths), paths
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert loaded and all(name.startswith(url) for name in loaded), loaded


def test_search_box_lists_the_catalogue_best_first(
    browser: WebDriver, served: tuple[str, str | None]
) -> None:
    url, expected = served
    if expected is None:
        pytest.skip("the screenshot model is served without a catalogue")
    browser.get(url + "/")
    wait_for(browser, "return !document.getElementById('search-panel').hidden")
    box = browser.find_element(By.ID, "search-query")
    box.send_keys("dog on a beach")
    browser.find_element(By.CSS_SELECTOR, "#search-form button").click()
    wait_for(browser, "return document.querySelectorAll('#search-hits li').length === 3")
    hits = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#search-hits li")]
    assert hits[0].startswith("a dog runs on a sandy beach") and "/archive/a.jpg" in hits[0]
    assert "best first" in browser.find_element(By.ID, "search-status").text
    box.clear()
    box.send_keys("zebra")
    browser.find_element(By.CSS_SELECTOR, "#search-form button").click()
    wait_for(browser, "return document.getElementById('search-status').textContent.includes('No')")
    assert browser.find_elements(By.CSS_SELECTOR, "#search-hits li") == []
