"""The HTML report in a real browser: Debian's chromium driven by Playwright (never a downloaded
browser). Every image loads from file:// URLs, links between pages work (an image name with a
space, ``#``, ``%`` and ``é`` included), the stylesheet applies, nothing is fetched from anywhere
else, and the page renders as more than a blank screen.

Without chromium or the playwright package the module is skipped, unless ``CI`` is set or
``ESEGETA_REQUIRE_BROWSER=1``: then it fails and says what to install.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from browser_helpers import CHROMIUM_ARGS, chromium, sync_playwright
from report_fixture import ODD, PLAIN, add_evaluation, build_output_folder

from esegeta_monai.report.html import THUMBNAIL_WIDTH, write_report

VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT, java_script_enabled=True)
    yield context.new_page()
    context.close()


def load_every_image(page) -> list[dict]:
    """Scroll each image into view (the index's thumbnails load lazily), wait until all are
    loaded, and return their state."""
    for image in page.locator("img").all():
        image.scroll_into_view_if_needed()
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=15000)
    return page.evaluate("""() => Array.from(document.images).map(i => ({
        src: i.getAttribute('src'), complete: i.complete, naturalWidth: i.naturalWidth,
        width: i.getBoundingClientRect().width}))""")


def assert_not_blank(png: bytes) -> None:
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert pixels.shape[:2] == (VIEWPORT["height"], VIEWPORT["width"])
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50, f"{len(colours)} colours"
    assert pixels.std() > 20


def test_report_in_chromium(tmp_path, page):
    folder = build_output_folder(tmp_path / "out dir")
    add_evaluation(folder.out)
    index = write_report(folder.out)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    page.goto(index.as_uri())
    images = load_every_image(page)
    assert len(images) == 2  # the saliency thumbnail and the evaluation's figure
    assert all(i["complete"] and i["naturalWidth"] > 0 for i in images), images
    thumbnail = next(i for i in images if i["src"].endswith("figures/saliency_argmax1.png"))
    assert thumbnail["width"] == pytest.approx(THUMBNAIL_WIDTH, abs=0.5)
    # the stylesheet applies: a sticky table header, a red failed cell
    assert page.evaluate("getComputedStyle(document.querySelector('table.grid thead th')).position") == "sticky"
    assert page.evaluate("getComputedStyle(document.querySelector('td.cell-failed')).backgroundColor") == "rgb(253, 236, 234)"
    assert_not_blank(page.screenshot())

    page.get_by_role("link", name=PLAIN, exact=True).click()
    page.wait_for_load_state("load")
    assert page.url.endswith(f"/report/images/{PLAIN}.html")
    assert page.locator("h1").inner_text() == PLAIN
    images = load_every_image(page)
    assert len(images) == 2 and all(i["complete"] and i["naturalWidth"] > 0 for i in images), images
    assert_not_blank(page.screenshot())

    page.go_back()
    page.get_by_role("link", name=ODD, exact=True).click()
    page.wait_for_load_state("load")
    assert page.locator("h1").inner_text() == ODD
    assert page.locator("td.error").first.inner_text().startswith("CUDA out of memory <script>")
    page.get_by_role("link", name="← ").first.click()  # the way back to the index
    page.wait_for_load_state("load")
    assert Path(page.url).name == "index.html"

    assert requested and all(url.startswith("file://") for url in requested), requested
