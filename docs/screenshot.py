"""Take the README's screenshots: serve an index, then in headless Chromium upload a query
(the results), and optionally show the page as it opens (the collection) and the
Duplicates tab.

    python docs/screenshot.py groco-demo/index groco-demo/roaming-digits/3/0964.png \\
        docs/screenshot.png
    python docs/screenshot.py INDEX QUERY docs/screenshot.png --browse docs/browse.png \\
        --duplicates docs/duplicates.png --map docs/map.png --encoder ENCODER.onnx
"""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index")
    parser.add_argument("query")
    parser.add_argument("out", help="PNG of the results of QUERY.")
    parser.add_argument("--browse", help="PNG of the page as it opens (the collection).")
    parser.add_argument("--duplicates", help="PNG of the Duplicates tab.")
    parser.add_argument("--map", help="PNG of the Map tab (the index needs `groco index map`).")
    parser.add_argument("--encoder", help="Encoder [default: the index's recorded one].")
    parser.add_argument("--order", default="folder", choices=["folder", "random"],
                        help="Collection order in the --browse shot.")
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    from groco.app.web import launch_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app, url = launch_app(args.index, port=port, block=False, encoder=args.encoder)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    wait = WebDriverWait(driver, 300)

    def tab(name: str) -> None:
        driver.find_element(By.XPATH, f"//button[@role='tab'][contains(., '{name}')]").click()

    try:
        driver.get(url)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#collection img")) >= 24)
        if args.browse:
            if args.order == "folder":
                driver.find_element(By.XPATH, "//label[contains(., 'folder')]").click()
                time.sleep(1)
                wait.until(lambda d: "page 1 of" in d.find_element(By.ID, "browse-status").text)
            time.sleep(2)  # the thumbnails load
            driver.save_screenshot(args.browse)
        upload = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR,
                                                               "input[type=file]")))
        upload.send_keys(str(Path(args.query).resolve()))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results img")) >= 12)
        time.sleep(2)
        driver.save_screenshot(args.out)
        if args.duplicates:
            tab("Duplicates")
            wait.until(lambda d: "groups" in d.find_element(By.ID, "dupes-status").text)
            time.sleep(3)
            driver.save_screenshot(args.duplicates)
        if args.map:
            tab("Map")
            wait.until(lambda d: "items" in d.find_element(By.ID, "map-status").text)
            picture = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#map-image img"))
            wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth",
                                                  picture) > 0)
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", picture)
            time.sleep(2)
            driver.save_screenshot(args.map)
    finally:
        driver.quit()
        app.close()


if __name__ == "__main__":
    main()
