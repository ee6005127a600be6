"""`groco demo` runs the whole flow (train, export, index, k-NN, serve) on a given folder,
as a user runs it: in its own process with outbound connections refused; its page fills
all three tabs."""

import time

import pytest
from browser import element_text, wait_for
from outbound import exercise


@pytest.mark.slow
def test_demo_runs_the_whole_flow(demo_run):
    from groco.demo import RAW_PIXELS_SIZES
    from groco.index.map import has_map

    _, work, output, _, _ = demo_run
    assert "k-NN top-1" in output and "untrained" in output
    assert "raw pixels (best size," in output and "points over the better of the two" in output
    assert all((work / "raw-pixels" / f"{size}px" / "index").is_dir()
               for size in RAW_PIXELS_SIZES)
    assert (work / "encoder.onnx").is_file()
    assert (work / "index" / "manifest.json").is_file()
    assert (work / "run" / "last.safetensors").is_file()
    assert has_map(work / "index")  # the Map tab has something to draw


def test_demo_writes_the_bundled_digits(tmp_path):
    from groco.demo import write_digits
    from groco.images import find_images, label_of

    folder = write_digits(tmp_path / "digits")
    files = find_images(folder)
    assert len(files) == 1797
    assert {label_of(f, folder) for f in files} == {str(d) for d in range(10)}


def test_the_built_in_collection_moves_and_resizes_each_digit(tmp_path):
    """The roaming digits: every scan once, under its digit's folder, a grey 48 px picture
    whose ink fills 30-40 % of the side at a place that varies, a few of them also as a JPEG
    copy beside the original; the same seed writes the same pixels, another seed others."""
    import numpy as np
    from PIL import Image

    from groco.demo import ROAMING_COPIES, ROAMING_SIZE, write_roaming_digits
    from groco.images import find_images, label_of

    folder = write_roaming_digits(tmp_path / "a")
    copies = sorted(folder.glob("*/*-copy.jpg"))
    assert len(copies) == ROAMING_COPIES
    assert all(c.with_name(c.name.replace("-copy.jpg", ".png")).is_file() for c in copies)
    files = sorted(f for f in find_images(folder) if f.suffix == ".png")
    assert len(files) == 1797
    assert {label_of(f, folder) for f in files} == {str(d) for d in range(10)}
    boxes = []
    for f in files[:200]:
        image = Image.open(f)
        assert image.size == (ROAMING_SIZE, ROAMING_SIZE)
        left, top, right, bottom = image.getbbox()
        assert max(right - left, bottom - top) <= round(0.4 * ROAMING_SIZE)
        boxes.append((left, top))
    lefts, tops = zip(*boxes, strict=True)
    assert np.ptp(lefts) >= ROAMING_SIZE // 2 and np.ptp(tops) >= ROAMING_SIZE // 2
    again = write_roaming_digits(tmp_path / "b")
    other = write_roaming_digits(tmp_path / "c", seed=1)
    first = files[0].relative_to(folder)
    assert (again / first).read_bytes() == files[0].read_bytes()
    assert (other / first).read_bytes() != files[0].read_bytes()


@pytest.mark.slow
def test_the_demo_makes_no_outbound_connection(demo_run):
    """`groco demo`, as a user runs it (train, export, index, serve), with outbound
    connections refused from its first line."""
    images, _, output, url, log = demo_run
    assert "k-NN top-1" in output
    exercise(url, images)
    time.sleep(3)
    assert not log.exists(), log.read_text()


@pytest.mark.slow
def test_the_demo_page_fills_every_tab(demo_run, browser):
    """`groco demo`'s own server: the collection on Search, its groups on Duplicates, its
    map on Map, its outliers on Curate, each opened from the address the demo prints."""
    from selenium.webdriver.common.by import By

    images, _, output, url, _ = demo_run
    urls = {line.split()[0]: line.split()[1] for line in output.splitlines()
            if line.startswith("  ") and "http://" in line}
    assert set(urls) == {"search", "duplicates", "map", "curate"}, output
    assert urls["search"].startswith(url)
    browser.get(urls["search"])
    wait_for(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR,
                                                          "#collection img")) >= 8)
    browser.get(urls["duplicates"])
    wait_for(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#dupes img")) >= 2)
    browser.get(urls["map"])
    wait_for(browser).until(lambda d: f"{len(list(images.rglob('*.png')))} items"
                         in element_text(d, "map-status"))
    browser.get(urls["curate"])
    wait_for(browser).until(lambda d: d.find_element(By.ID, "curate-outliers").is_displayed())
    browser.find_element(By.ID, "curate-outliers").click()
    wait_for(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR,
                                                          "#curate-gallery img")) >= 8)
    assert "most unusual items" in element_text(browser, "curate-status")
