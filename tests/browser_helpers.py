"""What the browser tests share: Debian's chromium (never a downloaded browser), the flags it
needs here, and the rule for a machine without it — skip, or fail in CI
(``CI`` or ``ESEGETA_REQUIRE_BROWSER=1``) saying what to install."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

#: headless, no sandbox (root in CI), and no background connections to Google's hosts
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: WebGL2 without a GPU (SwiftShader), which newer Chromium wants asked for
WEBGL_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


def unavailable(reason: str) -> None:
    """Skip this module, or fail it where a browser is required."""
    if os.environ.get("CI") or os.environ.get("ESEGETA_REQUIRE_BROWSER") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def chromium() -> str:
    """The path of Debian's chromium (or skip/fail)."""
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).is_file():
        unavailable("Debian's chromium is not installed: apt-get install chromium")
    return executable


def sync_playwright():
    """Playwright's synchronous API (or skip/fail)."""
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        unavailable("the playwright package is not installed: pip install playwright (no browser download needed)")
    return start()
