"""The report as a person opens it: the tiny run's results/report.html in headless Chromium.

Skipped, with the reason, where Chromium or Playwright is missing (`make ci` installs Debian's
chromium; Playwright drives it, never downloading a browser of its own). The front page's
screenshot is kept under this checkout's results/browser/ as the CI run's picture of the report."""

import shutil
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Headless and offline: no sandbox (CI runs as root), no GPU, no connections of Chromium's own.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO / "results" / "browser"

playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (Debian: apt-get install chromium)"),
]

# The figure's own picture is on the page and loaded.
SHOWN = "path => [...document.images].some(i => i.src === results[path].data_uri && i.complete && i.naturalWidth > 0)"
LOADED = "images => images.map(image => [image.currentSrc.slice(0, 40), image.complete && image.naturalWidth > 0])"


def not_blank(png: Path) -> bool:
    """More than one colour over most of the picture: something was drawn."""
    low, high = Image.open(png).convert("L").getextrema()
    return high - low > 100


def test_the_report_renders_in_chromium(tiny_run):
    workdir, _ = tiny_run
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    problems = []
    with playwright.sync_playwright() as browser_driver:
        browser = browser_driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda message: message.type == "error" and problems.append(message.text))
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url[:80]}"))
            page.goto((workdir / "results/report.html").as_uri())
            page.wait_for_load_state("networkidle")

            # The front page states the run's answer and shows the sample grid.
            first = page.get_by_text("generates micro-Doppler spectrograms").bounding_box()
            assert first["y"] >= 0, "the top of the front page is out of the scroll bar's reach"
            text = page.inner_text("body")
            assert "Does the generator keep the person?" in text and "Do the samples help?" in text
            front = page.eval_on_selector_all("img", LOADED)
            assert all(loaded for _, loaded in front), front
            assert any(source.startswith("data:image/png") for source, _ in front), "no sample grid on the front page"
            page.screenshot(path=SCREENSHOTS / "report.png")
            assert not_blank(SCREENSHOTS / "report.png")

            # Every figure opens, as a click on its eye button does, and its picture loads.
            figures = page.evaluate("Object.keys(results).filter(path => results[path].mime_type.startsWith('image/'))")
            assert "results/samples/grid.png" in figures and "results/eval/identity.png" in figures, figures
            for figure in figures:
                page.evaluate("path => app.showResultInfo(path)", figure)
                page.locator("span", has_text=figure).locator("a[iconname=eye]").first.click()
                page.wait_for_function(SHOWN, arg=figure, timeout=10_000)
            page.screenshot(path=SCREENSHOTS / "figure.png")
        finally:
            browser.close()
    assert problems == []
