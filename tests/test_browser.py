"""A real browser: headless Chromium loads the page, uploads an image and sees the gallery
fill; opens on the collection and clicks a thumbnail for more like it; opens the Duplicates
tab and sees the groups and their downloads; opens the Map tab and clicks a point into a
search. Runs in CI (which installs Debian's chromium
and chromium-driver); elsewhere it skips when no browser is installed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HAVE_BROWSER = Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()

if not HAVE_BROWSER and os.environ.get("CI") != "true":
    pytest.skip("no chromium/chromedriver here (CI installs them)", allow_module_level=True)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_upload_fills_the_gallery(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    images, _, url = served
    browser.get(url)
    wait = WebDriverWait(browser, 60)
    upload = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR,
                                                           "input[type=file]")))
    upload.send_keys(str(images / "class2" / "img004.png"))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results img")) >= 5)
    wait.until(lambda d: "neighbours of" in d.find_element(By.ID, "search-status").text)
    captions = browser.find_element(By.ID, "results").text
    assert "class2/img004.png" in captions
    screenshot = os.environ.get("GROCO_SCREENSHOT")
    if screenshot:
        browser.save_screenshot(screenshot)


def _wait(browser, seconds: int = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, seconds, ignored_exceptions=(Exception,))


def _text(browser, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text


def _tab(browser, name: str):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.XPATH, f"//button[@role='tab'][normalize-space()='{name}']")


def test_page_opens_on_the_collection_and_a_click_gives_more_like_it(served, browser):
    from selenium.webdriver.common.by import By

    _, _, url = served
    browser.get(url)
    wait = _wait(browser)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#collection img")) >= 24)
    assert "page 1 of 2" in _text(browser, "browse-status")
    browser.find_elements(By.CSS_SELECTOR, "#collection img")[0].click()
    wait.until(lambda d: "neighbours of" in _text(d, "search-status"))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results img")) >= 5)
    _tab(browser, "Collection").click()
    wait.until(lambda d: d.find_element(By.ID, "browse-next").is_displayed())
    browser.find_element(By.ID, "browse-next").click()
    wait.until(lambda d: "page 2 of 2" in _text(d, "browse-status"))


def test_duplicates_tab_shows_the_groups(served, browser):
    from selenium.webdriver.common.by import By

    _, _, url = served
    browser.get(url)
    wait = _wait(browser)
    wait.until(lambda d: _tab(d, "Duplicates")).click()
    wait.until(lambda d: "groups" in _text(d, "dupes-status"))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#dupes img")) >= 2)
    assert "group 1" in browser.find_element(By.ID, "dupes").text
    assert browser.find_elements(By.ID, "dupes-json") and browser.find_elements(By.ID,
                                                                                "dupes-csv")


@pytest.fixture(scope="module")
def served_map(tmp_path_factory):
    """A running app over a mapped index of 60 raw-pixel items: (index dir, URL)."""
    from conftest import _free_port, make_collection

    from groco.app.web import launch_app
    from groco.encoder.baselines import export_raw_pixels
    from groco.index import layout
    from groco.index.build import build_index_dir

    base = tmp_path_factory.mktemp("mapped-app")
    export_raw_pixels(8, base / "raw.onnx", parity_images=2)
    images = make_collection(base / "images", classes=4, per_class=15, size=16)
    index = base / "index"
    build_index_dir(images, base / "raw.onnx", index, progress=False)
    layout.compute_map(index, n_epochs=100, progress=False)
    app, url = launch_app(index, port=_free_port(), block=False)
    yield index, url
    app.close()


def test_map_tab_draws_the_map_and_a_click_on_a_point_searches_from_it(served_map, browser):
    import numpy as np
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from groco.app.map_tab import HEIGHT, WIDTH, MapView
    from groco.index.layout import read_map
    from groco.index.search import Searcher

    index, url = served_map
    view = MapView(read_map(index))
    # the point farthest from any other, so a click a pixel off still lands on it
    gaps = ((view.pixels[:, None] - view.pixels[None]) ** 2).sum(-1)
    np.fill_diagonal(gaps, np.inf)
    target = int(gaps.min(axis=1).argmax())
    with Searcher(index) as searcher:
        path = searcher.row(int(view.data.ids[target])).path

    browser.get(url)
    wait = _wait(browser)
    wait.until(lambda d: _tab(d, "Map")).click()
    wait.until(lambda d: "items" in _text(d, "map-status"))
    picture = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#map-image img"))
    wait.until(lambda d: picture.size["width"] > 0)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", picture)
    x, y = view.pixels[target]
    scale_x, scale_y = picture.size["width"] / WIDTH, picture.size["height"] / HEIGHT
    ActionChains(browser).move_to_element_with_offset(
        picture, int(x * scale_x - picture.size["width"] / 2),
        int(y * scale_y - picture.size["height"] / 2)).click().perform()
    wait.until(lambda d: "neighbours of" in _text(d, "map-result-status"))
    assert path in _text(browser, "map-result-status")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#map-gallery img")) >= 5)
    assert path in browser.find_element(By.ID, "map-gallery").text
