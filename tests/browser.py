"""Debian's chromium, headless through Playwright, for the browser tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
"""Flags for a container: no sandbox, no GPU, and nothing fetched behind the test's back."""


def require_chromium() -> None:
    """Skip the calling test where Debian's chromium is missing; in CI (which installs
    it, see .ci/run) that is a failure instead."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def launch(playwright: Playwright) -> Browser:
    """Debian's chromium (not a downloaded one), headless, with ``ARGS``."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
