"""Browser tests: the console in a real headless Chromium (Debian's `chromium`), driven by
Playwright for Python (its own browser downloads are never used).

Without a Chromium (or without Playwright) every test here is skipped, and the end of
the pytest run says so in one line. `CM_CHROMIUM` names another Chromium binary.
`CM_CONSOLE_SCREENSHOTS=DIR` saves screenshots of the main pages there (docs/console/).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

#: The switches of a headless run on a machine without GPU, sandbox or network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    configured = os.environ.get("CM_CHROMIUM")
    if configured:
        return configured if Path(configured).exists() else None
    for candidate in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def why_no_browser() -> str | None:
    try:
        import playwright  # noqa: F401, PLC0415
    except ImportError:
        return "Playwright for Python is not installed"
    if chromium_path() is None:
        return "no Chromium found (apt-get install chromium, or set CM_CHROMIUM)"
    return None


_SKIPPED: list[str] = []


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    reason = why_no_browser()
    if reason is not None:
        _SKIPPED.append(reason)
        pytest.skip(f"browser tests skipped: {reason}")
    from playwright.async_api import async_playwright  # noqa: PLC0415

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
def screenshots() -> Path | None:
    configured = os.environ.get("CM_CONSOLE_SCREENSHOTS")
    if not configured:
        return None
    path = Path(configured)
    path.mkdir(parents=True, exist_ok=True)
    return path


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _SKIPPED:
        terminalreporter.write_sep(
            "!", f"BROWSER TESTS SKIPPED: {_SKIPPED[0]}", yellow=True, bold=True
        )
