"""Screenshots of an output folder's HTML report, as the README shows them (Debian's chromium,
driven by Playwright; no browser is downloaded).

    .venv/bin/python scripts/report_screenshots.py esegeta_out docs/images
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="an output folder with report/index.html")
    parser.add_argument("target", type=Path, help="where the PNGs go")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    index = (args.out / "report" / "index.html").resolve()
    args.target.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(index.as_uri())
        page.screenshot(path=str(args.target / "report_index.png"), full_page=True)
        page.locator("table a").first.click()
        page.wait_for_load_state()
        page.screenshot(path=str(args.target / "report_image.png"))
        browser.close()
    print(f"{args.target / 'report_index.png'}, {args.target / 'report_image.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
