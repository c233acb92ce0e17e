"""End to end: Debian's headless chromium drives `yts-mirror serve` on a freshly synced simulator mirror.

Search, narrow by a genre facet, open a movie, and check the rendered page, including that the
hostile title and description planted in the simulator ran no script.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirror.fakeapi import FakeYTS, FaultPlan
from test_serve import EVIL_TITLE, evil_catalog, sync

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)",
)

PWNED = "return [window.__pwned, document.querySelectorAll('a[href^=\"javascript\" i], img[src^=\"javascript\" i], " \
        "img[src^=\"data\" i]').length, [...document.scripts].filter(s => s.text.includes('__pwned')).length]"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """Sync a small hostile catalog, then run `yts-mirror serve` on it; yield (catalog URL, evil movie id)."""
    path = tmp_path / "mirror.db"
    catalog, evil_id = evil_catalog(120, 9)
    with FakeYTS(catalog, FaultPlan.parse("")) as sim:
        sync(path, sim.url)
    proc = subprocess.Popen([sys.executable, "-m", "mirror", "serve", "--db", str(path), "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert " at http://" in line, line + proc.stderr.read()
        yield line.split(" at ", 1)[1].split()[0], evil_id
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless chromium through Debian's chromedriver; nothing is downloaded."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extras: pip install -e .[test]")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1800", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def assert_no_script_ran(driver: Any) -> None:
    """The planted payloads set window.__pwned; none may have run or become a live element."""
    pwned, dangerous_links, planted_scripts = driver.execute_script(PWNED)
    assert pwned is None and dangerous_links == 0 and planted_scripts == 0


def test_search_facet_and_movie_page_in_chromium(server: tuple[str, int], browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, evil_id = server
    wait = WebDriverWait(browser, 20)
    browser.get(url)
    assert "movie_catalog" in browser.title
    box = browser.find_element(By.CSS_SELECTOR, "input[name=_search]")
    box.send_keys("Crimson", Keys.ENTER)
    wait.until(ec.url_contains("movie_search"))
    assert "_search=Crimson" in browser.current_url
    rows = browser.find_elements(By.CSS_SELECTOR, "table.yts-catalog tbody tr")
    assert len(rows) > 1 and "Crimson" in rows[0].text
    assert_no_script_ran(browser)
    browser.save_screenshot(str(tmp_path / "search.png"))

    facet = browser.find_element(By.CSS_SELECTOR, "[data-column=genre]").find_element(By.LINK_TEXT, "Horror")
    facet.click()
    wait.until(ec.url_contains("_genre=Horror"))
    assert "genre is 'Horror'" in browser.find_element(By.TAG_NAME, "h3").text
    genres = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "td.col-genres")]
    assert genres and all("Horror" in text for text in genres)
    assert len(genres) < len(rows) or len(rows) == 1

    browser.find_element(By.CSS_SELECTOR, f"td.col-title a[href$='/movies/{evil_id}']").click()
    wait.until(ec.url_contains(f"/movies/{evil_id}"))
    title = browser.find_element(By.CSS_SELECTOR, "h1.yts-title").text
    assert EVIL_TITLE.replace('"><b>bold</b>', "") in title and "bold" in title  # shown as text
    assert "javascript:alert(1)" in browser.find_element(By.CSS_SELECTOR, ".yts-description").text
    magnets = browser.find_elements(By.CSS_SELECTOR, "a.yts-magnet")
    hashes = [code.text for code in browser.find_elements(By.CSS_SELECTOR, "table.yts-torrents code")]
    assert magnets and len(magnets) == len(hashes)
    for link, info_hash in zip(magnets, hashes):
        assert link.get_attribute("href").startswith(f"magnet:?xt=urn:btih:{info_hash}")
    headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    assert "Torrents" in headings
    assert_no_script_ran(browser)
    shot = tmp_path / "movie.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
