"""Headless Debian Chromium, driven by Playwright, against the deployment's UI."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
#: Where screenshots go (git-ignored): one per step, named after it.
SCREENSHOTS = Path(__file__).parent / "screenshots"
#: How the Airflow UI shows a failed request: an alert in the page or dialog, or an error toast.
ERROR_BANNERS = "[data-testid=error-alert], [data-scope=toast][data-type=error]"
#: The documentation's screenshots; the browser test rewrites its own there only when this variable is ``1``.
DOCS = Path(__file__).parents[2] / "docs"
UPDATE_SCREENSHOTS = "QWEN_UPDATE_SCREENSHOTS"


@contextmanager
def chromium_page(base_url: str) -> Iterator[UiPage]:
    """A fresh headless Chromium page on ``base_url``; closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(base_url=base_url, viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            # The deployment makes everyone admin; Airflow 3.1's UI still wants the admin's cookie, set here.
            page.goto("/auth/token/login", wait_until="networkidle")
            yield UiPage(page)
        finally:
            browser.close()


class UiPage:
    """A Playwright page with the few moves the tests make, a screenshot per step, and no error banner allowed."""

    def __init__(self, page) -> None:
        self.page = page

    def open(self, path: str):
        """Go to ``path`` and wait until the network is idle; return the page's response."""
        return self.page.goto(path, wait_until="networkidle")

    def step(self, name: str, expected_error: str | None = None) -> Path:
        """
        Take a screenshot named ``name``; fail if the page shows an error banner.

        :param expected_error: text of the one error banner this step is meant to show.
        """
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_-]+', '-', name)}.png"
        self.page.screenshot(path=str(path), full_page=True)
        banners = [banner.inner_text() for banner in self.page.locator(ERROR_BANNERS).all()]
        unexpected = [text for text in banners if expected_error is None or expected_error not in text]
        if unexpected:
            raise AssertionError(f"error banner at step {name!r} ({path}): {unexpected}")
        if expected_error is not None and not banners:
            raise AssertionError(f"no error banner saying {expected_error!r} at step {name!r} ({path})")
        return path

    def docs_screenshot(self, name: str, elsewhere: Path, selector: str = "body") -> Path:
        """
        Take a screenshot of ``selector`` for the documentation, as ``docs/<name>`` when ``QWEN_UPDATE_SCREENSHOTS=1``
        is set, else in the folder ``elsewhere``; return its path.

        It is saved as the documentation's other screenshots are: cropped to what it shows and reduced to a
        256-colour palette, which keeps the repository small.
        """
        from PIL import Image

        folder = DOCS if os.environ.get(UPDATE_SCREENSHOTS) == "1" else elsewhere
        path = folder / name
        self.page.locator(selector).screenshot(path=str(path))
        with Image.open(path) as shot:
            palette = shot.convert("RGB").quantize(colors=256)
        palette.save(path, optimize=True)
        return path

    def choose_connection_type(self, label: str) -> None:
        """Pick ``label`` in the connection form's type selector (a searchable combobox)."""
        self.page.get_by_role("combobox").focus()
        self.page.keyboard.type(label)
        self.page.get_by_role("option", name=label, exact=True).click()

    def row(self, text: str):
        """The table row that shows ``text``."""
        return self.page.get_by_role("row").filter(has_text=text)
