"""The GUI end to end in a real browser: Debian's chromium driven by Playwright (never a downloaded
browser) against the real server, started in this process on a free port.

It opens the token URL, picks the demo bundle and its sample, selects saliency and integrated
gradients (4 steps), runs, waits for the job, opens the viewer, and checks with the canvas's
pixels that NiiVue draws the scan and the map over it (overlay opacity 1 against 0), that the
comparison viewer's cursor follows the first one's, and that nothing is fetched from anywhere but
the server. The screenshots are kept in the test's temporary folder (and copied to
``$ESEGETA_GUI_SCREENSHOTS`` when that is set).

Without chromium or the playwright package the module is skipped, unless ``CI`` is set or
``ESEGETA_REQUIRE_BROWSER=1``: then it fails and says what to install.
"""

from __future__ import annotations

import contextlib
import io
import re
import os
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from browser_helpers import CHROMIUM_ARGS, WEBGL_ARGS, chromium, sync_playwright

from esegeta_monai.evaluation import METRICS
from esegeta_monai.evaluation.catalogue import FAMILIES

REPO = Path(__file__).resolve().parents[1]
VIEWPORT = {"width": 1280, "height": 800}
JOB_TIMEOUT_MS = 180_000


@contextlib.contextmanager
def serving(roots, out):
    """The GUI on 127.0.0.1 and a free port, served by uvicorn in a thread of this process."""
    uvicorn = pytest.importorskip("uvicorn")
    from esegeta_monai.apps.gui import create_app

    token = secrets.token_urlsafe(16)
    app = create_app(roots=roots, out=out, token=token)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    instance = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2))
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert instance.started, "the GUI server did not start"
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield SimpleNamespace(base=base, token=token, app=app)
    finally:
        instance.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving([REPO / "bundles"], tmp_path_factory.mktemp("gui_out")) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS + WEBGL_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Where the screenshots go: the test's temporary folder (pytest keeps the last few runs)."""
    folder = tmp_path_factory.mktemp("gui_screenshots")
    yield folder
    extra = os.environ.get("ESEGETA_GUI_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        for png in folder.glob("*.png"):
            shutil.copy2(png, Path(extra) / png.name)


def pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def assert_not_blank(image: np.ndarray) -> None:
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 200, f"only {len(colours)} colours: the canvas is (nearly) blank"
    assert image.std() > 20, f"contrast {image.std():.1f}: the canvas is (nearly) uniform"


def changed_share(a: np.ndarray, b: np.ndarray, level: int = 40) -> float:
    """The share of pixels whose colour differs by more than ``level`` in some channel."""
    return float((np.abs(a - b).max(axis=2) > level).mean())


def warm_share(image: np.ndarray) -> float:
    """The share of clearly warm (red/orange/yellow) pixels: the map's colours, never the grey scan's."""
    red, blue = image[..., 0], image[..., 2]
    return float(((red - blue > 80) & (red > 150)).mean())


def settle(page) -> None:
    """Two animation frames: NiiVue's last draw is on screen."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    page.wait_for_timeout(200)


def test_gui_end_to_end(server, browser, shots):
    from playwright.sync_api import expect  # auto-waiting assertions (the browser fixture checked playwright is there)

    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    requested, errors = [], []
    page.on("request", lambda request: requested.append(request.url))
    page.on("pageerror", lambda error: errors.append(str(error)))

    # the token URL sets the cookie and comes back without the token
    page.goto(f"{server.base}/?token={server.token}#bundle")
    assert "token" not in page.url, page.url
    cookies = context.cookies()
    assert [(c["name"], c["httpOnly"]) for c in cookies] == [("esegeta_token", True)], cookies

    # 1 bundle: the demo, its metadata shown
    demo = page.locator('.bundle-card[data-bundle-id$=":vessel_mra_demo"]')
    demo.click()  # the page fills in what it fetched a moment later: expect() waits for it (5 s at most)
    expect(demo).to_have_attribute("aria-checked", "true")
    expect(page.locator("#bundle-detail")).to_contain_text("1 vessel")  # its classes
    expect(page.locator("#bundle-detail")).to_contain_text("64 × 64 × 64")  # and window
    page.screenshot(path=str(shots / "1_bundle.png"))

    # 2 scans: the sample is preselected
    page.click("#bundle-next")
    expect(page.locator("#scan-selected .selected-name")).to_have_text(["vessel_phantom_0.nii.gz"])
    page.screenshot(path=str(shots / "2_scans.png"))

    # 3 methods: saliency and integrated gradients with 4 steps; the default target
    page.click("#scans-next")
    page.check("#method-saliency")
    page.check("#method-integrated_gradients")
    page.fill("#opt-integrated_gradients-n_steps", "4")
    expect(page.locator("#targets")).to_have_value("argmax:1")
    expect(page.locator("#plan-summary")).to_have_text(re.compile(r"^2 maps"))
    page.screenshot(path=str(shots / "3_methods.png"))

    # 4 run: the job appears, goes on and ends done (its live progress comes by server-sent events)
    page.click("#run-button")
    job = page.locator(".job").first
    job.wait_for()
    page.wait_for_selector('.job[data-status="done"], .job[data-status="failed"], .job[data-status="cancelled"]',
                           timeout=JOB_TIMEOUT_MS)
    page.screenshot(path=str(shots / "4_run.png"))
    assert job.get_attribute("data-status") == "done", job.inner_text()
    assert "2 of 2 maps" in job.inner_text(), job.inner_text()

    # 5 results: the viewer shows the scan with the first map over it
    job.get_by_role("button", name="View results").click()
    page.wait_for_selector('#viewers[data-state="ready"]', timeout=60_000)
    expect(page.locator(".map-btn")).to_have_count(2)
    maps = sorted(page.locator(".map-btn").all_inner_texts())
    assert maps == ["integrated_gradients · argmax1 (vessel)", "saliency · argmax1 (vessel)"], maps
    page.locator('.map-btn[data-method="saliency"]').click()
    page.wait_for_selector('#viewers[data-state="ready"]')
    canvas = page.locator("#canvas-a")
    page.fill("#opacity", "1")
    settle(page)
    shown = pixels(canvas.screenshot(path=str(shots / "5_viewer_overlay.png")))
    page.fill("#opacity", "0")
    settle(page)
    hidden = pixels(canvas.screenshot(path=str(shots / "5_viewer_scan_only.png")))
    assert_not_blank(shown)
    assert_not_blank(hidden)
    assert changed_share(shown, hidden) > 0.02, "the overlay's opacity does not change the canvas"
    assert warm_share(shown) > warm_share(hidden) + 0.01, "no warm overlay colours where the map should be"
    page.fill("#opacity", "0.8")
    settle(page)
    page.screenshot(path=str(shots / "gui_viewer.png"))

    # the comparison: a second viewer whose cursor follows the first one's
    page.check("#compare-toggle")
    page.wait_for_function("() => document.querySelector('#viewers').dataset.state === 'ready' && "
                           "!document.querySelector('#viewer-b').hidden")
    settle(page)
    other = page.locator("#canvas-b")
    before = pixels(other.screenshot())
    assert_not_blank(before)
    box = canvas.bounding_box()
    side = min(box["width"], box["height"])  # the 2 × 2 grid of planes is centred: aim inside its top-left plane
    page.mouse.click(box["x"] + box["width"] / 2 - side / 5, box["y"] + box["height"] / 2 - side / 5)
    settle(page)
    after = pixels(other.screenshot())
    assert changed_share(before, after, level=60) > 0.001, "the second viewer's cursor did not follow"
    location = page.locator("#viewer-location").inner_text()
    assert location.startswith("Cursor at") and "saliency" in location, location
    page.screenshot(path=str(shots / "gui_compare.png"))

    # the report's figures load, and nothing came from anywhere but the server
    page.locator("#figure-strip img").first.scroll_into_view_if_needed()
    page.wait_for_function("() => Array.from(document.querySelectorAll('#figure-strip img')).every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator("#figure-strip img").count() == 3, "one figure per map and the comparison"
    report = page.locator("#report-link").get_attribute("href")
    assert report.endswith("/report/index.html"), report
    assert requested and all(url.startswith(server.base) for url in requested), [u for u in requested if not u.startswith(server.base)]

    # 6 evaluation: the catalogue grouped by family; a localisation metric asks for a label per scan (the sample's
    # label file guessed); model-free metrics run as an evaluate job and their values come back in the tables
    page.click("#tab-evaluation")

    expect(page.locator("#metric-list input[type=checkbox]")).to_have_count(len(METRICS))
    families = page.locator("#metric-list .metric-family .field-label").all_inner_texts()
    assert families == list(dict.fromkeys(m.family for m in sorted(METRICS.values(), key=lambda m: FAMILIES.index(m.family)))), families
    for name in ("deletion", "insertion", "infidelity", "sensitivity"):
        page.uncheck(f"#metric-{name}")
    for name in ("sparseness", "complexity", "relevance_mass_accuracy"):
        page.check(f"#metric-{name}")
    expect(page.locator("#eval-labels select")).to_have_value(re.compile(r"vessel_phantom_0_label\.nii\.gz$"))
    page.screenshot(path=str(shots / "6_evaluation_form.png"))
    page.click("#eval-button")
    results = page.locator("#eval-results")
    expect(results.locator("table").first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    for name in ("sparseness", "complexity", "relevance_mass_accuracy"):
        expect(results).to_contain_text(name)
    expect(results.locator("td.cell-failed")).to_have_count(0)
    page.screenshot(path=str(shots / "6_evaluation_tables.png"), full_page=True)
    assert all(url.startswith(server.base) for url in requested), [u for u in requested if not u.startswith(server.base)]
    assert not errors, errors
    context.close()


def test_gui_builds_a_case_of_two_files(tmp_path, browser, shots):
    """A bundle that reads two keys: the page offers one place per key, filled from the selected
    scans (a wrong order is put right with the places' pickers), and the job explains the case."""
    from case_bundle import make_phases_bundle, write_phases
    from playwright.sync_api import expect

    make_phases_bundle(tmp_path / "root" / "phases")
    write_phases(tmp_path / "root" / "scans")
    with serving([tmp_path / "root"], tmp_path / "out") as running:
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{running.base}/?token={running.token}#bundle")
        card = page.locator('.bundle-card[data-bundle-id="0:phases"]')
        card.click()
        expect(page.locator("#bundle-detail")).to_contain_text("2 files, one per key: image, venous")
        page.screenshot(path=str(shots / "1_case_bundle.png"))

        page.click("#bundle-next")
        page.click('#step-scans .tab[data-pane="browse"]')
        page.locator("#browse-list .file-row").first.click()  # the root
        page.locator("#browse-list .file-row", has_text="scans").click()
        page.check('input[data-scan-id="0:scans/venous.nii.gz"]')  # in the wrong order first
        page.check('input[data-scan-id="0:scans/arterial.nii.gz"]')
        expect(page.locator("#case-panel")).to_be_visible()
        expect(page.locator("#case-slot-0")).to_have_value("0:scans/venous.nii.gz")
        expect(page.locator("#scans-next")).to_be_enabled()
        page.select_option("#case-slot-0", "0:scans/arterial.nii.gz")
        expect(page.locator("#case-status")).to_contain_text("in two places")
        expect(page.locator("#scans-next")).to_be_disabled()
        page.select_option("#case-slot-1", "0:scans/venous.nii.gz")
        expect(page.locator("#case-status")).to_contain_text("One case of 2 files")
        page.screenshot(path=str(shots / "2_case.png"))

        page.click("#scans-next")
        page.check("#method-saliency")
        page.fill("#targets", "otsu:1")
        expect(page.locator("#plan-summary")).to_contain_text("1 map = 1 case")
        page.click("#run-button")
        job = page.locator(".job").first
        page.wait_for_selector('.job[data-status="done"], .job[data-status="failed"]', timeout=JOB_TIMEOUT_MS)
        assert job.get_attribute("data-status") == "done", job.inner_text()
        assert "1 of 1 maps" in job.inner_text()
        (spec,) = running.app.state.gui.jobs.jobs()
        assert spec.request["case"] == [["image", "0:scans/arterial.nii.gz"], ["venous", "0:scans/venous.nii.gz"]]
        assert not errors, errors
        context.close()
