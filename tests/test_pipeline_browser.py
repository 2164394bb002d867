"""The review page in a real headless Chromium, opened from the file system (file://).

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them) and selenium
(the dev extra); skips without them, like tests/test_serve_browser.py.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("selenium")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from captioner.fileio import atomic_write_bytes  # noqa: E402
from captioner.pipeline.catalogue import Catalogue  # noqa: E402
from captioner.pipeline.page import write_review_page  # noqa: E402

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--allow-file-access-from-files",
)

CAPTIONS = {
    "beach-dog.jpg": ("Photo", 0.97, "dogs on the beach a dog and another dog", 0.8),
    "running-dog.jpg": ("Photo", 0.55, "a dog runs on a beach near the sea", 0.7),
    "sofa-dog.jpg": ("Photo", 0.91, "a dog sleeps on a sofa", 0.3),
    "car.jpg": ("Photo", 0.99, "a red car parked in a street", 0.9),
    "page.jpg": ("Text", 0.88, None, None),
    "plan.jpg": ("Schematics", 0.62, None, None),
}


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
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument("--window-size=1200,900")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalogue folder of six files of three kinds, one unreadable file, one not walked."""
    root = tmp_path_factory.mktemp("review")
    archive, out = root / "archive", root / "out"
    rows = []
    for n, (name, (kind, p, caption, score)) in enumerate(CAPTIONS.items()):
        atomic_write_bytes(archive / name, _jpeg((40 * n, 90, 200)))
        thumb = f"thumbs/{n:016x}.jpg"
        atomic_write_bytes(out / thumb, _jpeg((40 * n, 90, 200)))
        row = {
            "path": str(archive / name),
            "sha256": f"{n:064x}",
            "kind": kind,
            "probability": p,
            "probabilities": {kind: p, "Other": round(1 - p, 4)},
            "thumbnail": thumb,
            "captioned": caption is not None,
            "caption": caption,
            "caption_score": score,
        }
        if name == "running-dog.jpg":
            row["denoised"] = True
            row["denoised_thumbnail"] = f"thumbs/{n:016x}-denoised.jpg"
            atomic_write_bytes(out / row["denoised_thumbnail"], _jpeg((0, 0, 0)))
            row["attention_path"] = "attention/running.png"
            atomic_write_bytes(out / row["attention_path"], _jpeg((255, 0, 0)))
        rows.append(row)
    rows.append({"path": str(archive / "broken.jpg"), "error": "truncated or corrupt image"})
    with Catalogue.open(out, {"test": 1}) as catalogue:
        catalogue.write(rows)
        catalogue.set_not_walked([(str(archive / "loop"), "symbolic link loop")])
        write_review_page(catalogue, out)
    return out / "index.html"


def wait_for(driver: WebDriver, script: str, timeout: float = 20) -> object:
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.execute_script(script)
    )


def card_paths(driver: WebDriver, where: str) -> list[str]:
    cards = driver.find_elements(By.CSS_SELECTOR, f"{where} .card")
    return [Path(c.get_attribute("data-path")).name for c in cards]


def test_groups_by_kind_least_confident_first_from_the_file_system(
    browser: WebDriver, page: Path
) -> None:
    browser.get(page.as_uri())
    wait_for(browser, "return document.body.dataset.ready === 'true'")
    titles = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#groups h2")]
    assert titles == [
        "Photo (4)",
        "Schematics (1)",
        "Text (1)",
        "Unreadable (1)",
        "Not walked (1)",
    ]  # the largest kind first
    # least confident first: min(kind probability, caption score)
    assert card_paths(browser, "#kind-0") == [
        "sofa-dog.jpg",
        "running-dog.jpg",
        "beach-dog.jpg",
        "car.jpg",
    ]
    # thumbnails load from file://, the denoised one beside the original
    wait_for(
        browser,
        "return [...document.images].length > 0 && "
        "[...document.images].every((i) => i.complete && i.naturalWidth > 0)",
    )
    running = browser.find_element(By.CSS_SELECTOR, "[data-path$='running-dog.jpg']")
    assert len(running.find_elements(By.TAG_NAME, "img")) == 2
    assert "denoised" in running.text and "attention" in running.text
    link = running.find_element(By.CSS_SELECTOR, "a.attention-link").get_attribute("href")
    assert link == (page.parent / "attention" / "running.png").as_uri()
    original = running.find_element(By.CSS_SELECTOR, "a").get_attribute("href")
    assert original == (page.parent.parent / "archive" / "running-dog.jpg").as_uri()
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "truncated or corrupt image" in body and "symbolic link loop" in body
    assert "55 %" in running.text  # the kind's probability


def test_search_box_ranks_like_the_catalogue(browser: WebDriver, page: Path) -> None:
    browser.get(page.as_uri())
    wait_for(browser, "return document.body.dataset.ready === 'true'")
    box = browser.find_element(By.ID, "search")
    box.send_keys("dog on a beach")
    wait_for(browser, "return !document.getElementById('results').hidden")
    found = card_paths(browser, "#results")
    with Catalogue.open(page.parent, readonly=True) as catalogue:
        expected = [Path(h.path).name for h in catalogue.search("dog on a beach")]
    assert found[:2] == expected[:2] == ["beach-dog.jpg", "running-dog.jpg"]
    assert set(found) == set(expected)
    assert browser.find_element(By.ID, "groups").get_attribute("hidden") is not None
    assert "match" in browser.find_element(By.ID, "search-info").text
    box.clear()
    box.send_keys("DOGS")  # case and plural
    wait_for(browser, "return document.querySelectorAll('#results .card').length > 0")
    box.clear()
    box.send_keys("zebra")
    wait_for(browser, "return document.getElementById('search-info').textContent.startsWith('0')")
    assert card_paths(browser, "#results") == []
