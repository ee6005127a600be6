"""The Map tab's page load at 10k and 100k points (issue 17): how long from navigation
until the map is drawn and answers the pointer, in headless Chromium.

For each size a Fashion-MNIST-like collection is written (``N`` 28 px greyscale images
in 10 folders: one smooth random template per class, each image shifted by up to 2 px,
rescaled in contrast and noised), indexed with the raw-pixel encoder at 8 px (`groco
index build`) and mapped (`groco index map`, defaults); all of it reused when present.
One server (`groco serve`'s app, no thumbnail warm-up) serves it, one Chromium loads it.

Two sides, timed alike through ``benchmarks/timing.py`` (each its own warm-up load, the
cold first one reported apart, interleaved rounds, median with min-max):

- *collection* (the baseline): navigation until the page as it opens shows its first 24
  collection thumbnails, decoded;
- *map*: navigation, a click on the Map tab, until the map picture is decoded, the
  overlay's pointer listeners are installed and a first ``hover`` at a mapped item's
  pixel has come back from the server: drawn and answering the pointer.

Then, in the same loads, a click on a point until the "more like this" gallery shows
(the map's click into a search). Target (issue 17): the Map tab interactive within 3 s
at 100k points.

    python benchmarks/map_page.py --n 10000 100000 --loads 5
    python benchmarks/map_page.py --quick      # 2,000 points, 2 loads: seconds
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402
from timing import LoadWatch, interleaved  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLASSES = 10
TARGET_S = 3.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_collection(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` Fashion-MNIST-like 28 px greyscale PNGs in ``CLASSES`` folders (reused when
    complete)."""
    from PIL import Image

    done = root / ".complete"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (CLASSES, 7, 7))
    templates = np.kron(coarse, np.ones((4, 4)))  # 28 x 28, blocky
    kernel = np.ones(3) / 3  # smooth the blocks a little
    templates = np.apply_along_axis(lambda r: np.convolve(r, kernel, "same"), 2, templates)
    templates = np.apply_along_axis(lambda r: np.convolve(r, kernel, "same"), 1, templates)
    labels = np.arange(n) % CLASSES
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(labels):
        dx, dy = rng.integers(-2, 3, 2)
        image = np.roll(templates[c], (dy, dx), axis=(0, 1)) * rng.uniform(0.6, 1.0)
        image = image + rng.normal(0, 0.12, image.shape)
        pixels = (np.clip(image, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"class{c}" / f"{i:07d}.png")
    done.write_text("ok\n")
    return root


def mapped_index(work: Path, n: int) -> Path:
    """The index of an ``n``-image collection with its map (built once)."""
    from groco.encoder.baselines import export_raw_pixels
    from groco.index.build import build_index_dir
    from groco.index.map import compute_map, has_map

    index = work / f"index-{n}"
    if has_map(index):
        return index
    encoder = work / "raw-8.onnx"
    if not encoder.exists():
        export_raw_pixels(8, encoder)
    t = time.perf_counter()
    images = write_collection(work / f"images-{n}", n)
    log(f"{n} images written in {time.perf_counter() - t:.0f} s; indexing")
    t = time.perf_counter()
    build_index_dir(images, encoder, index, progress=False)
    log(f"indexed in {time.perf_counter() - t:.0f} s; mapping")
    report = compute_map(index, progress=False)
    log(report.summary())
    return index


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


MAP_READY = """
const img = document.querySelector('#map-image img');
return !!(img && img.complete && img.naturalWidth > 0 && window.__grocoMapInstalled &&
          window.__grocoMap && window.__grocoMap.server);
"""
HOVER = """
const done = arguments[arguments.length - 1];
window.__grocoMap.server.hover([arguments[0], arguments[1]]).then(
  (hit) => done(hit ? hit.id : -1), (e) => done('error ' + e));
"""
COLLECTION_READY = """
const imgs = [...document.querySelectorAll('#collection img')];
return imgs.length >= 24 && imgs.slice(0, 24).every((i) => i.complete && i.naturalWidth > 0);
"""


class Page:
    """The two page loads over one server and one browser, and the extra map figures."""

    def __init__(self, driver, url: str, index: Path) -> None:
        from groco.app.map_tab import MapView
        from groco.index.map import read_map

        self.driver, self.url = driver, url
        view = MapView(read_map(index))
        self.count, self.drawn = len(view.data.ids), len(view.drawn)
        # a drawn point away from the others (hover and click land on it)
        sample = view.drawn[np.random.default_rng(0).choice(len(view.drawn),
                                                            min(2000, len(view.drawn)),
                                                            replace=False)]
        pix = view.pixels[sample]
        gaps = ((pix[:, None] - pix[None]) ** 2).sum(-1)
        np.fill_diagonal(gaps, np.inf)
        self.point = pix[int(gaps.min(1).argmax())].tolist()
        self.extra: dict[str, list[float]] = {"drawn": [], "hover": [], "click": []}

    def _wait(self, seconds: float = 120):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, seconds, poll_frequency=0.02,
                             ignored_exceptions=(Exception,))

    def collection(self) -> None:
        self.driver.get(self.url)
        self._wait().until(lambda d: d.execute_script(COLLECTION_READY))

    def map(self) -> None:
        from selenium.webdriver.common.by import By

        start = time.perf_counter()
        self.driver.get(self.url)
        wait = self._wait()
        tab = wait.until(lambda d: d.find_element(
            By.XPATH, "//button[@role='tab'][normalize-space()='Map']"))
        tab.click()
        wait.until(lambda d: d.execute_script(MAP_READY) and "items" in d.find_element(
            By.ID, "map-status").text)
        drawn = time.perf_counter()
        hit = self.driver.execute_async_script(HOVER, *self.point)
        if not isinstance(hit, int) or hit < 0:
            raise RuntimeError(f"no item under the hover at {self.point}: {hit}")
        hovered = time.perf_counter()
        self.extra["drawn"].append(drawn - start)
        self.extra["hover"].append(hovered - drawn)

    def click(self) -> None:
        """A click on the point (outside the timed load): until its neighbours show."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By

        from groco.app.map_tab import HEIGHT, WIDTH

        picture = self.driver.find_element(By.CSS_SELECTOR, "#map-image img")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", picture)
        w, h = picture.size["width"], picture.size["height"]
        x, y = self.point
        start = time.perf_counter()
        ActionChains(self.driver).move_to_element_with_offset(
            picture, round(x * w / WIDTH - w / 2), round(y * h / HEIGHT - h / 2)
        ).click().perform()
        self._wait().until(lambda d: "neighbours of" in d.find_element(
            By.ID, "map-result-status").text and d.find_elements(
            By.CSS_SELECTOR, "#map-gallery img"))
        self.extra["click"].append(time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(index: Path, loads: int) -> dict[str, object]:
    from groco.app.state import AppState
    from groco.app.web import serve

    state = AppState.open(index)
    app, url = serve(state, port=free_port(), block=False)
    driver = browser()
    try:
        page = Page(driver, url, index)

        sides = interleaved({"collection": page.collection, "map": page.map},
                            runs=loads, warmup=1,
                            on_round=lambda r, _: log(f"round {r + 1}/{loads}"))
        # the loads above time the page; one click per load after it, untimed there
        for _ in range(loads):
            page.map()
            page.click()
        return {"count": page.count, "drawn": page.drawn, "sides": sides,
                "extra": page.extra}
    finally:
        driver.quit()
        app.close()
        state.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000],
                        help="map sizes (points) [default: 10000 100000]")
    parser.add_argument("--loads", type=int, default=5,
                        help="timed page loads per side and size [default: 5]")
    parser.add_argument("--work", type=Path, default=REPO / ".bench/map-page")
    parser.add_argument("--quick", action="store_true",
                        help="2,000 points, 2 loads (a check that it runs)")
    args = parser.parse_args()
    if args.quick:
        args.n, args.loads = [2_000], 2
        args.work = args.work.with_name(args.work.name + "-quick")
    args.work.mkdir(parents=True, exist_ok=True)
    watch = LoadWatch()
    lines = [header(), "",
             "| points | drawn | collection ready s | map interactive s | map / collection "
             "| map drawn s | hover answer ms | click to neighbours s | cold map s "
             f"| target {TARGET_S:.0f} s |",
             "|---:|---:|---|---|---:|---|---|---|---:|---|"]
    for n in args.n:
        index = mapped_index(args.work, n)
        log(f"{n} points: {args.loads} loads a side")
        r = measure(index, args.loads)
        coll, mp = r["sides"]["collection"], r["sides"]["map"]
        extra = r["extra"]
        # the extra lists hold the warm-up load first, then the timed ones, then the
        # click loads: figures of the timed loads only (the click loads for the click)
        timed = slice(1, 1 + args.loads)

        def spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
            return (f"{statistics.median(values) * scale:.{digits}f} "
                    f"({min(values) * scale:.{digits}f}–{max(values) * scale:.{digits}f})")

        met = "met" if mp.median <= TARGET_S else f"missed by {mp.median - TARGET_S:.2f} s"
        lines.append(
            f"| {r['count']:,} | {r['drawn']:,} | {coll.summary(1, 2)} | {mp.summary(1, 2)} "
            f"| {mp.median / coll.median:.2f}x | {spread(extra['drawn'][timed])} "
            f"| {spread(extra['hover'][timed], 1e3, 0)} | {spread(extra['click'])} "
            f"| {mp.cold:.2f} | {met} |")
        log(lines[-1])
    lines += ["", watch.line()]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
