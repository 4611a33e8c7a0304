"""The leaderboard page in a real browser, headless Chromium driven by selenium: every row is
shown, a click on a header sorts that table by the column, and the page loads nothing from
the network. Skipped where Chromium, chromedriver or selenium is absent (.ci/run installs
them where apt-get works).

``python tests/leaderboard/test_leaderboard_browser.py --write`` rebuilds the recorded
leaderboard with the README's command and writes its screenshot,
``benchmarks/results/leaderboard.png``.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import sys
from pathlib import Path

import pytest

from art_ssni.leaderboard import COLUMNS, build_leaderboard, main

from results_files import make_row, write_results

ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "benchmarks" / "results" / "leaderboard"
SCREENSHOT = ROOT / "benchmarks" / "results" / "leaderboard.png"
COLUMN = {name: index for index, (name, _) in enumerate(COLUMNS)}


def start_browser():
    """A headless Chromium under selenium; RuntimeError saying what is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ModuleNotFoundError:
        raise RuntimeError("selenium is not installed (pip install -e '.[test]')") from None
    if browser is None or driver is None:
        raise RuntimeError(
            "chromium and chromedriver are not on PATH (apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,900")
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture(scope="module")
def browser():
    try:
        driver = start_browser()
    except RuntimeError as err:
        pytest.skip(f"no headless browser: {err}")
    yield driver
    driver.quit()


def column(table, name: str) -> list[str | None]:
    """A column of a table as the page shows it now: sort values (data-v), else text."""
    index = COLUMN[name] + 1
    cells = table.find_elements("css selector", f"tbody tr td:nth-child({index})")
    return [cell.get_attribute("data-v") or cell.text for cell in cells]


def numbers(values: list[str | None]) -> list[float | None]:
    return [None if v == "—" else float(v) for v in values]


def screenshot(driver, page: Path, png: Path) -> None:
    """The whole page, every table column in view, as PNG."""
    driver.get(page.resolve().as_uri())
    width = driver.execute_script(
        "return Math.max(document.documentElement.scrollWidth, "
        "...Array.from(document.querySelectorAll('table'), t => t.scrollWidth + 40))"
    )
    driver.set_window_size(max(1200, width + 40), 900)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(max(1200, width + 40), height + 140)
    driver.save_screenshot(str(png))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_every_row_shown_and_headers_sort(browser, tmp_path):
    rows = [
        make_row("a", method="A", attack="PGD-EOT", robust=(0.25, 0.125)),
        make_row("b", method="B", attack="PGD-EOT", robust=(0.5, 0.25)),
        make_row("c", method="C", attack="APGD-EOT", robust=(0.375, 0.0)),
        make_row("d", method="D", attack="BPDA-EOT", robust=(0.125, 0.0), seconds_per_image=None),
    ]
    write_results(tmp_path / "run", rows)
    write_results(tmp_path / "longer", [make_row("e", iterations=200)])
    built = build_leaderboard([tmp_path / "run", tmp_path / "longer"], tmp_path / "lb")
    browser.get(built.html.resolve().as_uri())
    tables = browser.find_elements("css selector", "table.lb")
    assert [len(t.find_elements("css selector", "tbody tr")) for t in tables] == [4, 1]
    first = "tbody td:first-child"
    shown = [c.text for t in tables for c in t.find_elements("css selector", first)]
    assert sorted(shown) == sorted(e.name for e in built.entries)

    table = tables[0]
    # default order: by attack, then robust vote
    assert column(table, "attack") == ["APGD-EOT", "BPDA-EOT", "PGD-EOT", "PGD-EOT"]
    before = numbers(column(table, "robust vote"))
    assert before == [0.375, 0.125, 0.5, 0.25]
    header = table.find_element("xpath", f".//th[{COLUMN['robust vote'] + 1}]")
    header.click()
    assert numbers(column(table, "robust vote")) == sorted(before)
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert numbers(column(table, "robust vote")) == sorted(before, reverse=True)
    table.find_element("xpath", f".//th[{COLUMN['defence'] + 1}]").click()
    assert column(table, "defence") == ["A", "B", "C", "D"]
    seconds = table.find_element("xpath", f".//th[{COLUMN['s/img'] + 1}]")
    seconds.click()
    assert column(table, "s/img")[-1] == "—"  # a missing value sorts last either way
    seconds.click()
    assert column(table, "s/img")[-1] == "—"
    assert column(tables[1], "defence") == ["DiffPure + SSNI-N"]  # the other table untouched


def test_recorded_page_is_self_contained(browser, tmp_path):
    page = RECORDED / "leaderboard.html"
    text = page.read_text()
    assert not re.search(r"https?://|<link\b|<img\b|<iframe\b|\bsrc\s*=|@import|url\(", text)
    browser.get(page.resolve().as_uri())
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert browser.title == "art-ssni leaderboard"
    rows = browser.find_elements("css selector", "table.lb tbody tr")
    markdown = (RECORDED / "leaderboard.md").read_text()
    assert len(rows) == len(re.findall(r"^\| (?!defence |---).*\|$", markdown, flags=re.M))
    assert len(rows) == len(list((RECORDED / "model_info").rglob("*.json")))
    png = tmp_path / "leaderboard.png"
    screenshot(browser, page, png)
    width, height = png_size(png)
    table = browser.find_element("css selector", "table.lb")
    assert width >= table.size["width"] and height >= 600


def write() -> None:
    """Rebuild the recorded leaderboard as the README's command does
    (``art-ssni leaderboard benchmarks/results/*/ --out benchmarks/results/leaderboard``),
    then its screenshot."""
    os.chdir(ROOT)
    folders = sorted(str(p) for p in Path("benchmarks/results").glob("*") if p.is_dir())
    if main([*folders, "--out", str(RECORDED.relative_to(ROOT))]) != 0:
        sys.exit("the leaderboard was not built")
    driver = start_browser()
    try:
        screenshot(driver, RECORDED / "leaderboard.html", SCREENSHOT)
    finally:
        driver.quit()
    print(f"wrote {SCREENSHOT.relative_to(ROOT)}, {png_size(SCREENSHOT)} pixels")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: python {sys.argv[0]} --write")
    write()
