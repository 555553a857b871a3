"""The browser page of `xlsr-edge serve` (issue 24) in headless Chromium (Debian's `chromium` and
`chromium-driver`, driven by selenium): a fake microphone plays a clip through the page's AudioWorklet and the
WebSocket protocol, and a file goes through the upload form. Nothing leaves 127.0.0.1.

Set XLSR_EDGE_PAGE_SCREENSHOT=path.png to keep a screenshot of the page after the run (docs/serve-page.png).
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_http import CLIPS, DEMO, ROOT, ServerThread, bundle, rec, transcribe_cli  # noqa: F401

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else shutil.which("chromedriver")
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--window-size=1000,900",
)

pytestmark = [
    pytest.mark.skipif(
        not (DEMO / "config.json").is_file(),
        reason="the demo model is not in this checkout (make demo-model)",
    ),
    pytest.mark.skipif(
        CHROMIUM is None or DRIVER is None,
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
    ),
]


@pytest.fixture
def driver_for(tmp_path, monkeypatch):
    """A function: fake-microphone WAV -> a headless Chromium that plays it as its microphone."""
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_AVOID_STATS", "true")  # selenium: no usage statistics sent anywhere
    drivers = []

    def make(audio: Path):
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROME_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={tmp_path / f'profile{len(drivers)}'}")
        options.add_argument(f"--use-file-for-fake-audio-capture={audio}")
        driver = webdriver.Chrome(service=Service(DRIVER), options=options)
        drivers.append(driver)
        return driver

    yield make
    for d in drivers:
        d.quit()


def first_final_of_stream_cli(bundle_path: Path, audio: Path) -> str:
    """`xlsr-edge stream BUNDLE clip.wav`: its first final's text."""
    out = subprocess.run(
        [sys.executable, "-m", "xlsr_edge", "stream", str(bundle_path), str(audio)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    return next(e["text"] for e in map(json.loads, out.splitlines()) if e["type"] == "final")


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def test_page_microphone_first_final_and_file_upload(bundle, rec, driver_for, tmp_path):  # noqa: F811
    import soundfile as sf
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from xlsr_edge.runtime.audio import load_audio

    rng = np.random.default_rng(0)
    speech = load_audio(CLIPS[0], 16000)
    quiet = [(1e-3 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in (0.5, 2.0)]
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.concatenate([quiet[0], speech, quiet[1]]), 16000, subtype="PCM_16")
    expected_final = first_final_of_stream_cli(bundle, clip)
    expected_text = transcribe_cli(bundle, [CLIPS[1]])[0]["text"]

    with ServerThread(rec, name="demo-tr") as server:
        driver = driver_for(clip)
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "model").get_attribute("value") == "demo-tr")
        driver.find_element(By.ID, "start").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#finals .final")))
        first = driver.find_element(By.CSS_SELECTOR, "#finals .final .text").text
        assert first and similarity(first, expected_final) >= 0.8, (first, expected_final)
        assert "listening" in driver.find_element(By.ID, "status").text
        driver.find_element(By.ID, "stop").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text in ("done", ""))
        assert driver.find_element(By.ID, "start").is_enabled()

        driver.find_element(By.ID, "file").send_keys(str(CLIPS[1]))
        wait.until(lambda d: d.find_element(By.ID, "transcript").get_attribute("class") in ("done", "error"))
        transcript = driver.find_element(By.ID, "transcript")
        assert transcript.get_attribute("class") == "done", transcript.text
        assert transcript.text == expected_text
        if os.environ.get("XLSR_EDGE_PAGE_SCREENSHOT"):
            driver.save_screenshot(os.environ["XLSR_EDGE_PAGE_SCREENSHOT"])
        status = server.status()
        assert status["served"] == 1 and status["http_served"] == 1
