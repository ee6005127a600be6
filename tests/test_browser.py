"""A real browser: headless Chromium loads the page, uploads an image and sees the gallery
fill; opens on the collection and clicks a thumbnail for more like it; opens the Duplicates
tab and sees the groups and their downloads; opens the Map tab, clicks a point into a
search, hovers over a point for its thumbnail and drags a box that lists exactly the items
inside it. Runs in CI (which installs Debian's chromium
and chromium-driver); elsewhere it skips when no browser is installed."""

from __future__ import annotations

import os

import pytest
from browser import HAVE_BROWSER, element_text, wait_for

if not HAVE_BROWSER and os.environ.get("CI") != "true":
    pytest.skip("no chromium/chromedriver here (CI installs them)", allow_module_level=True)


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


def test_hide_near_copies_shows_each_group_once_with_its_count(served, browser):
    from selenium.webdriver.common.by import By

    images, _, url = served
    browser.get(url)
    wait = wait_for(browser)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#distinct input")).click()
    upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "input[type=file]"))
    upload.send_keys(str(images / "class2" / "img009.png"))
    wait.until(lambda d: "neighbours of" in element_text(d, "search-status"))
    captions = element_text(browser, "results")
    assert "near copies" in captions
    assert not ("img009.png" in captions and "img009-copy.png" in captions), captions


def _tab(browser, name: str):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.XPATH, f"//button[@role='tab'][normalize-space()='{name}']")


def test_page_opens_on_the_collection_and_a_click_gives_more_like_it(served, browser):
    from selenium.webdriver.common.by import By

    _, _, url = served
    browser.get(url)
    wait = wait_for(browser)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#collection img")) >= 24)
    assert "page 1 of 2" in element_text(browser, "browse-status")
    browser.find_elements(By.CSS_SELECTOR, "#collection img")[0].click()
    wait.until(lambda d: "neighbours of" in element_text(d, "search-status"))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results img")) >= 5)
    _tab(browser, "Collection").click()
    wait.until(lambda d: d.find_element(By.ID, "browse-next").is_displayed())
    browser.find_element(By.ID, "browse-next").click()
    wait.until(lambda d: "page 2 of 2" in element_text(d, "browse-status"))


def test_duplicates_tab_shows_the_groups(served, browser):
    from selenium.webdriver.common.by import By

    _, _, url = served
    browser.get(url)
    wait = wait_for(browser)
    wait.until(lambda d: _tab(d, "Duplicates")).click()
    wait.until(lambda d: "groups" in element_text(d, "dupes-status"))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#dupes img")) >= 2)
    assert "group 1" in browser.find_element(By.ID, "dupes").text
    assert browser.find_elements(By.ID, "dupes-json") and browser.find_elements(By.ID,
                                                                                "dupes-csv")


@pytest.fixture(scope="module")
def served_map(tmp_path_factory):
    """A running app over a mapped index of 60 raw-pixel items: (index dir, URL)."""
    from conftest import free_port, make_collection

    from groco.app.web import launch_app
    from groco.encoder.baselines import export_raw_pixels
    from groco.index.build import build_index_dir
    from groco.index.map import compute_map

    base = tmp_path_factory.mktemp("mapped-app")
    export_raw_pixels(8, base / "raw.onnx", parity_images=2)
    images = make_collection(base / "images", classes=4, per_class=15, size=16)
    index = base / "index"
    build_index_dir(images, base / "raw.onnx", index, progress=False)
    compute_map(index, n_epochs=100, progress=False)
    app, url = launch_app(index, port=free_port(), block=False)
    yield index, url
    app.close()


def _isolated_point(view) -> int:
    """Row of the drawn point farthest from any other, so a pointer a pixel off still
    lands on it."""
    import numpy as np

    gaps = ((view.pixels[:, None] - view.pixels[None]) ** 2).sum(-1)
    np.fill_diagonal(gaps, np.inf)
    return int(gaps.min(axis=1).argmax())


def _open_map(browser, url):
    """Open the Map tab; returns the map picture's <img>, scrolled into view."""
    from selenium.webdriver.common.by import By

    browser.get(url)
    wait = wait_for(browser)
    wait.until(lambda d: _tab(d, "Map")).click()
    wait.until(lambda d: "items" in element_text(d, "map-status"))
    picture = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#map-image img"))
    wait.until(lambda d: picture.size["width"] > 0 and d.execute_script(
        "return arguments[0].naturalWidth", picture) > 0)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", picture)
    return picture


def _offset(picture, x: float, y: float) -> tuple[int, int]:
    """Selenium's offset from the <img>'s centre of the picture pixel (x, y)."""
    from groco.app.map_tab import HEIGHT, WIDTH

    width, height = picture.size["width"], picture.size["height"]
    return (round(x * width / WIDTH - width / 2), round(y * height / HEIGHT - height / 2))


def test_map_tab_draws_the_map_and_a_click_on_a_point_searches_from_it(served_map, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from groco.app.map_tab import MapView
    from groco.index.map import read_map
    from groco.index.search import Searcher

    index, url = served_map
    view = MapView(read_map(index))
    target = _isolated_point(view)
    with Searcher(index) as searcher:
        path = searcher.row(int(view.data.ids[target])).path

    picture = _open_map(browser, url)
    wait = wait_for(browser)
    ActionChains(browser).move_to_element_with_offset(
        picture, *_offset(picture, *view.pixels[target])).click().perform()
    wait.until(lambda d: "neighbours of" in element_text(d, "map-result-status"))
    assert path in element_text(browser, "map-result-status")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#map-gallery img")) >= 5)
    assert path in browser.find_element(By.ID, "map-gallery").text


def _clear_box(view, min_items: int = 3, max_items: int = 20, margin: float = 6.0):
    """Picture-pixel corners of a box holding ``min_items..max_items`` items, none of them
    within ``margin`` pixels of its edges (so the pointer's rounding cannot change which
    are inside), and the rows inside."""
    import numpy as np

    from groco.app.map_tab import HEIGHT, WIDTH

    px, py = view.pixels[:, 0], view.pixels[:, 1]
    xs, ys = np.sort(px), np.sort(py)
    # edges halfway between neighbouring points, where the gap is wide enough
    cuts_x = ((xs[1:] + xs[:-1]) / 2)[np.diff(xs) > 2 * margin].tolist()
    cuts_y = ((ys[1:] + ys[:-1]) / 2)[np.diff(ys) > 2 * margin].tolist()
    cuts_x = [max(1.0, xs[0] - margin - 4), *cuts_x, min(WIDTH - 2.0, xs[-1] + margin + 4)]
    cuts_y = [max(1.0, ys[0] - margin - 4), *cuts_y, min(HEIGHT - 2.0, ys[-1] + margin + 4)]
    best = None
    for i, x0 in enumerate(cuts_x):
        for x1 in cuts_x[i + 1:]:
            for j, y0 in enumerate(cuts_y):
                for y1 in cuts_y[j + 1:]:
                    inside = np.flatnonzero((px > x0) & (px < x1) & (py > y0) & (py < y1))
                    if min_items <= len(inside) <= max_items and (
                            best is None or x1 - x0 > best[0][2] - best[0][0]):
                        best = ((x0, y0, x1, y1), inside)
    assert best is not None, "no box with clear edges on this map"
    return best


def test_map_hover_shows_a_thumbnail_and_a_box_lists_the_items_inside(served_map, browser):
    import re
    from urllib.parse import quote

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from groco.app.map_tab import MapView
    from groco.index.map import read_map
    from groco.index.search import Searcher

    index, url = served_map
    view = MapView(read_map(index))
    target = _isolated_point(view)
    (x0, y0, x1, y1), inside = _clear_box(view)
    with Searcher(index) as searcher:
        path = searcher.row(int(view.data.ids[target])).path
        expected = sorted(searcher.row(int(view.data.ids[r])).path for r in inside)

    picture = _open_map(browser, url)
    wait = wait_for(browser, 30)
    # hover: the item's cached thumbnail (served from the cache folder) and its path
    ActionChains(browser).move_to_element_with_offset(
        picture, *_offset(picture, *view.pixels[target])).perform()
    tip = browser.find_element(By.ID, "map-tip")
    wait.until(lambda d: tip.is_displayed() and path in element_text(d, "map-tip-caption"))
    thumb = browser.find_element(By.ID, "map-tip-img")
    wait.until(lambda d: d.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth", thumb) > 0)
    cache = quote(str((index / "thumbnails").resolve()))
    assert f"/gradio_api/file={cache}/" in thumb.get_attribute("src")  # the cache, only
    assert tip.get_attribute("data-item") == str(int(view.data.ids[target]))
    # away from every point: no thumbnail
    ActionChains(browser).move_to_element_with_offset(picture, *_offset(picture, 2, 2)
                                                      ).perform()
    wait.until(lambda d: not tip.is_displayed())
    # a box: exactly the items inside it, and no "more like this" from the release
    ActionChains(browser).move_to_element_with_offset(
        picture, *_offset(picture, x0, y0)).click_and_hold().move_to_element_with_offset(
        picture, *_offset(picture, (x0 + x1) / 2, (y0 + y1) / 2)).move_to_element_with_offset(
        picture, *_offset(picture, x1, y1)).release().perform()
    wait.until(lambda d: "in the box" in element_text(d, "map-result-status"))
    assert f"{len(expected)} items in the box" in element_text(browser, "map-result-status")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#map-gallery img"))
               == len(expected))
    shown = sorted(re.findall(r"class\d+/img\d+\.png",
                              browser.find_element(By.ID, "map-gallery").text))
    assert shown == expected
    assert "neighbours of" not in element_text(browser, "map-result-status")


OVERFLOW_JS = """
const page = document.documentElement;
const name = e => (e.id || e.className || e.tagName).toString().slice(0, 60);
const wide = [...document.querySelectorAll('body *')].filter(e => {
    const box = e.getBoundingClientRect();
    return box.width > 0 && box.right > page.clientWidth + 1;
}).map(name);
const scrolls = [...document.querySelectorAll('body *')].filter(e => {
    const x = getComputedStyle(e).overflowX;
    return (x === 'auto' || x === 'scroll') && e.scrollWidth > e.clientWidth + 1;
}).map(name);
return {page: page.scrollWidth - page.clientWidth, wide: wide.slice(0, 5),
        scrolls: scrolls.slice(0, 5)};
"""


@pytest.mark.parametrize("width", [1280, 1400, 1920])
def test_the_page_fits_its_window_without_sideways_scrolling(served, browser, width,
                                                             tmp_path):
    from selenium.webdriver.common.by import By

    _, _, url = served
    browser.set_window_size(width, 1000)
    browser.get(url)
    wait_for(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#collection img"))
                         >= 8)
    overflow = browser.execute_script(OVERFLOW_JS)
    if width == 1280:
        browser.save_screenshot(str(tmp_path / "page-1280.png"))
        screenshot = os.environ.get("GROCO_SCREENSHOT_1280")
        if screenshot:
            browser.save_screenshot(screenshot)
    assert overflow["page"] <= 0 and not overflow["wide"] and not overflow["scrolls"], overflow
    wait_for(browser).until(lambda d: _tab(d, "Duplicates")).click()
    wait_for(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#dupes img")) >= 2)
    overflow = browser.execute_script(OVERFLOW_JS)
    assert overflow["page"] <= 0 and not overflow["wide"] and not overflow["scrolls"], overflow


def test_a_link_to_a_tab_opens_it_filled(served, served_map, browser):
    """The addresses `groco demo` prints: `?tab=duplicates` and `?tab=map` open those tabs
    with their content, as a click on them would."""
    from selenium.webdriver.common.by import By

    from groco.app.web import tab_urls

    browser.get(tab_urls(served[2])["duplicates"])
    wait_for(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#dupes img")) >= 2)
    browser.get(tab_urls(served_map[1])["map"])
    wait_for(browser).until(lambda d: "items" in element_text(d, "map-status"))
    assert _tab(browser, "Map").get_attribute("aria-selected") == "true"


def test_a_signed_in_browser_searches(encoder_file, tmp_path, browser):
    """With --auth the page loads and searches for a browser that sends the credentials
    with every request (as one does after its sign-in prompt)."""
    import base64
    import socket

    from conftest import make_collection
    from selenium.webdriver.common.by import By

    from groco.app.auth import Credentials, set_password
    from groco.app.web import launch_app
    from groco.index.build import build_index_dir

    images = make_collection(tmp_path / "images", classes=2, per_class=5, size=32)
    build_index_dir(images, encoder_file, tmp_path / "index", batch_size=8, progress=False)
    set_password(tmp_path / "users", "alice", "secret")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app, url = launch_app(tmp_path / "index", port=port, block=False,
                          credentials=Credentials.read(tmp_path / "users"))
    try:
        token = base64.b64encode(b"alice:secret").decode()
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                                {"headers": {"Authorization": f"Basic {token}"}})
        browser.get(url)
        upload = wait_for(browser).until(
            lambda d: d.find_element(By.CSS_SELECTOR, "input[type=file]"))
        upload.send_keys(str(images / "class1" / "img003.png"))
        wait_for(browser).until(lambda d: "neighbours of" in element_text(d, "search-status"))
        assert "class1/img003.png" in element_text(browser, "results")
    finally:
        app.close()
