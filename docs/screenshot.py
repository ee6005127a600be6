"""Take the README's screenshot: serve an index, upload a query in headless Chromium.

    python docs/screenshot.py groco-demo/index groco-demo/digits/3/0003.png docs/screenshot.png
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path


def main(index: str, query: str, out: str) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    from groco.app.web import launch_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app, url = launch_app(index, port=port, block=False)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--window-size=1400,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        upload = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR,
                                                               "input[type=file]")))
        upload.send_keys(str(Path(query).resolve()))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results img")) >= 12)
        driver.save_screenshot(out)
    finally:
        driver.quit()
        app.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
