"""The audit page's corrections UI in a real headless Chromium (selenium + chromedriver).

Chromium comes from the Debian packages (``.ci/run`` installs them when missing). Without
a browser this test fails; set ``MEDS_SKIP_BROWSER=1`` to skip it on a machine that has none.
"""

import csv
import os
import shutil
import time

import numpy as np
import pytest

from meds.app.report import AuditEntry, write_audit_report

EVIL = "<img src=x onerror=alert(1)>.png"


def _browser_paths():
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        if os.environ.get("MEDS_SKIP_BROWSER") == "1":
            pytest.skip("no chromium/chromedriver and MEDS_SKIP_BROWSER=1")
        pytest.fail("chromium and chromedriver are needed (apt-get install chromium chromium-driver); "
                    "set MEDS_SKIP_BROWSER=1 to skip this test")
    return binary, driver


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _browser_paths()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")  # localStorage lives here
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    try:
        yield driver, downloads
    finally:
        driver.quit()


def _report(tmp_path):
    rng = np.random.default_rng(0)
    names = [EVIL, "a.png", "b.png", "c.png", "d.png"]
    entries = [AuditEntry(rank=None, path=f"/data/train/good/{name}", score=float(5 - i), selected=i >= 2,
                          image=rng.integers(0, 256, (24, 24, 3), dtype=np.uint8),
                          anomaly_map=rng.random((4, 4)).astype(np.float32))
               for i, name in enumerate(names)]
    return write_audit_report(entries, tmp_path / "report", title="review test")["html"]


def _card(driver, key):
    from selenium.webdriver.common.by import By

    return next(c for c in driver.find_elements(By.CSS_SELECTOR, ".entry") if c.get_attribute("data-key") == key)


def _downloaded(folder, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [p for p in folder.iterdir() if p.name == "labels.csv"]
        if done and not list(folder.glob("*.crdownload")):
            return done[0]
        time.sleep(0.2)
    raise AssertionError(f"no labels.csv downloaded into {folder}: {[p.name for p in folder.iterdir()]}")


def test_marks_persist_and_download_as_labels_csv(browser, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    driver, downloads = browser
    html = _report(tmp_path)
    driver.get(html.as_uri())

    # The hostile file name is text: no element made from it, no script ran.
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text
    assert driver.execute_script('return document.querySelectorAll("img[src=x], img[onerror]").length') == 0
    evil = _card(driver, EVIL)
    assert evil.find_element(By.CSS_SELECTOR, ".file").text == EVIL

    # Mark two images: one with the buttons, one from the keyboard.
    evil.find_element(By.CSS_SELECTOR, "button.defective").click()
    card = _card(driver, "c.png")
    card.click()
    card.send_keys("g")
    assert "2 of 5 marked: 1 defective, 1 good" in driver.find_element(By.ID, "count").text

    driver.refresh()
    assert _card(driver, EVIL).get_attribute("data-mark") == "defective"
    assert _card(driver, "c.png").get_attribute("data-mark") == "good"
    assert _card(driver, "a.png").get_attribute("data-mark") is None
    driver.find_element(By.CSS_SELECTOR, '[data-filter="marked"]').click()
    shown = [c.get_attribute("data-key") for c in driver.find_elements(By.CSS_SELECTOR, ".entry") if c.is_displayed()]
    assert shown == [EVIL, "c.png"]

    driver.find_element(By.ID, "download").click()
    with open(_downloaded(downloads), newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows == [["filename", "label"], [EVIL, "defective"], ["c.png", "good"]]
