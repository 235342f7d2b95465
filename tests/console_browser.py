"""Helpers the console's browser tests share: a gunicorn server, waits, screenshots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.peers import ROOT

#: Set (e.g. ``SCREENSHOTS_DIR=docs/console``) to save each page's screenshot there:
#: how the PNGs in docs/console are made (see docs/console.md).
SCREENSHOTS = os.environ.get("SCREENSHOTS_DIR")


def screenshot(driver: Any, name: str, tmp_path: Path) -> None:
    """Save the page as ``name``.png: in the test's directory, and where SCREENSHOTS says."""
    driver.save_screenshot(str(tmp_path / f"{name}.png"))
    if SCREENSHOTS:
        target = ROOT / SCREENSHOTS
        target.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(target / f"{name}.png"))


def no_console_errors(driver: Any, refused: str | None = None) -> None:
    """Nothing the browser logged as SEVERE: no CSP violation, no failed script, no 404 asset
    (but the 4xx of the page at ``refused``, which the test meant to be refused)."""
    severe = [
        e
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and not (refused and e["message"].startswith(refused))
    ]
    assert severe == [], severe


def fits_width(driver: Any, width: int) -> bool:
    """The page needs no horizontal scrolling at ``width`` CSS pixels."""
    return bool(driver.execute_script(f"return document.documentElement.scrollWidth <= {width}"))
