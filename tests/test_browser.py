"""The page in a real browser: Debian's chromium, headless, driven by selenium against a running server.

The server runs the session's demo model with its knobs calibrated (tests/trained_models.py), so
the page shows the knobs and the rate knob can be moved. The screenshot goes to
$PROSODY_VAE_ARTIFACTS (CI keeps it), else the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi", reason="the serve extra (FastAPI) is not installed")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")]

REPO = Path(__file__).resolve().parents[1]
TEXT = "The old man opened the door."


@pytest.fixture(scope="module")
def server(calibrated_demo_checkpoint):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from load_test import free_port, start_server

    port = free_port()
    with pytest.MonkeyPatch.context() as patch:  # only the server subprocess imports this checkout
        patch.setenv("PYTHONPATH", str(REPO))
        process = start_server(calibrated_demo_checkpoint, port, ["--vocoder", "auto"])
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(30)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1400",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(120)
    yield driver
    driver.quit()


def synthesize_in_page(browser) -> float:
    """Press Synthesize with the keyboard; the duration (s) of the newest result's audio element."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    before = len(browser.find_elements(By.CSS_SELECTOR, "#history li"))
    button = browser.find_element(By.ID, "synthesize")
    button.send_keys(Keys.ENTER)
    assert browser.find_element(By.ID, "synthesize").get_property("disabled")  # no double submission
    WebDriverWait(browser, 120).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history li")) > before)
    return browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const audio = document.querySelector('#history li audio');
        const report = () => done(audio.duration);
        if (audio.readyState >= 1) report(); else audio.addEventListener('loadedmetadata', report);
    """)


def severe_console_messages(browser) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def test_the_page_synthesizes_with_no_console_errors(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    WebDriverWait(browser, 30).until(lambda d: "latent" in d.find_element(By.ID, "model-summary").text)
    text = browser.find_element(By.ID, "text")
    text.clear()
    text.send_keys(TEXT)
    duration = synthesize_in_page(browser)
    api = httpx.post(server + "/v1/synthesize", json={"text": TEXT, "seed": 0, "temperature": 1.0}, timeout=120)
    assert api.status_code == 200
    assert duration == pytest.approx(float(api.headers["X-Duration-Seconds"]), abs=0.005)
    assert "failed" not in browser.find_element(By.ID, "status").text
    assert severe_console_messages(browser) == []

    artifacts = Path(os.environ.get("PROSODY_VAE_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(artifacts / "server.png"))


def test_the_rate_knob_changes_the_duration_the_right_way(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "knob-rate"))
    rate = browser.find_element(By.ID, "knob-rate")
    text = browser.find_element(By.ID, "text")
    text.clear()
    text.send_keys(TEXT)
    durations = {}
    for name, key in (("neutral", None), ("slower", Keys.ARROW_LEFT), ("faster", Keys.ARROW_RIGHT)):
        browser.execute_script("arguments[0].value = 0; arguments[0].dispatchEvent(new Event('input'))", rate)
        if key:
            rate.send_keys(*[key] * 20)  # with the keyboard, to the end of the knob's calibrated range
        durations[name] = synthesize_in_page(browser)
    assert durations["slower"] > durations["neutral"] > durations["faster"], durations
    assert severe_console_messages(browser) == []


def test_the_voice_menu_lists_the_models_voices_and_the_request_names_the_chosen_one(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    card = httpx.get(server + "/v1/model", timeout=30).json()
    browser.get(server + "/")
    WebDriverWait(browser, 30).until(lambda d: "latent" in d.find_element(By.ID, "model-summary").text)
    menu = Select(browser.find_element(By.ID, "speaker"))
    assert [option.get_attribute("value") for option in menu.options] == card["speakers"]
    assert browser.find_element(By.ID, "voices").is_displayed() == bool(card["speakers"])
    voice = card["speakers"][-1]
    menu.select_by_value(voice)
    text = browser.find_element(By.ID, "text")
    text.clear()
    text.send_keys(TEXT)
    duration = synthesize_in_page(browser)
    assert browser.find_element(By.CSS_SELECTOR, "#history li .params").text.startswith(f"voice {voice}, ")
    api = httpx.post(server + "/v1/synthesize", json={"text": TEXT, "seed": 0, "temperature": 1.0, "speaker": voice},
                     timeout=120)
    assert duration == pytest.approx(float(api.headers["X-Duration-Seconds"]), abs=0.005)
    assert severe_console_messages(browser) == []
