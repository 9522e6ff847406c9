"""Retake docs/server.png: the page on a calibrated model, after one synthesis with the rate knob moved.

    PYTHONPATH=$PWD python docs/take_screenshot.py --checkpoint /tmp/knobs/demo_final.pt

Needs the serve extra, selenium, and Debian's chromium + chromium-driver (as tests/test_browser.py).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from load_test import free_port, start_server  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a calibrated checkpoint")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "server.png")
    parser.add_argument("--text", default="The old man opened the door.")
    args = parser.parse_args(argv)
    port = free_port()
    server = start_server(args.checkpoint, port, ["--vocoder", "auto"])
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1400"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "knob-rate"))
        text = browser.find_element(By.ID, "text")
        text.clear()
        text.send_keys(args.text)
        browser.find_element(By.ID, "knob-rate").send_keys(*[Keys.ARROW_LEFT] * 10)  # halfway to slowest
        browser.find_element(By.ID, "synthesize").send_keys(Keys.ENTER)
        WebDriverWait(browser, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#history li"))
        browser.save_screenshot(str(args.out))
        print(f"wrote {args.out}")
    finally:
        browser.quit()
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
