"""The page at GET / in a real browser: headless Chromium (Debian chromium + chromium-driver,
driven by python3-selenium) opens it, types a prompt, sets greedy sampling, starts generation, and
the text that appears must equal the API's greedy text; a screenshot is saved in the work
directory (under the build directory)."""
import json
import os
import shutil
import tempfile

import pytest

from conftest import SLOW

PROMPT = "and the lord said unto moses ,"


@pytest.fixture(scope="module")
def browser(options):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, "Debian's chromium and chromium-driver are needed (tools/install-deps.sh)"
    profile = tempfile.mkdtemp(prefix="itera-chromium-", dir=options["workdir"])
    o = webdriver.ChromeOptions()
    o.binary_location = chromium
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-extensions", "--window-size=1000,800", f"--user-data-dir={profile}"]:
        o.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path, log_output=os.path.join(options["workdir"], "chromedriver.log")),
                              options=o)
    driver.set_page_load_timeout(30 * SLOW)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def set_value(driver, element_id, value):
    field = driver.find_element("id", element_id)
    field.clear()
    field.send_keys(value)


def test_page_generates_the_api_text(server, browser, options):
    from selenium.webdriver.support.ui import WebDriverWait

    status, _, body = server.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 40, "temperature": 0})
    assert status == 200, body
    api_text = json.loads(body)["choices"][0]["text"]

    browser.get(server.url + "/")
    assert browser.title == "itera-server"
    WebDriverWait(browser, 10 * SLOW).until(lambda d: "itera-kjv" in d.find_element("id", "model").text)
    set_value(browser, "prompt", PROMPT)
    set_value(browser, "max_tokens", "40")
    set_value(browser, "temperature", "0")
    browser.find_element("id", "generate").click()
    WebDriverWait(browser, 30 * SLOW).until(lambda d: d.find_element("id", "status").text != "generating")
    status_text = browser.find_element("id", "status").text
    shown = browser.execute_script("return document.getElementById('output').textContent")
    stats = browser.find_element("id", "stats").text
    screenshot = os.path.join(options["workdir"], "server_page.png")
    browser.save_screenshot(screenshot)
    assert status_text == "done", status_text
    assert shown == api_text, (shown, api_text)
    assert stats.startswith("40 tokens in ") and "tokens/s" in stats, stats
    print(f"  Chromium: the page streamed {shown!r}, equal to the API's greedy text; {stats}; screenshot {screenshot}")
