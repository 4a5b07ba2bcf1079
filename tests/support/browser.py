"""Headless Debian Chromium (Selenium + chromium-driver) for the browser tests; skipped without it (failed under CI).

Selenium is blocking: call these in a reactor thread (``deferToThread``) while the daemon keeps serving.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).parent.parent / "artifacts"
WAIT = 10.0


def need_browser() -> None:
    """Skip the test without chromium and chromedriver (fail it under CI, which installs them)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        message = f"no {' and no '.join(missing)}: run `make install-browser` (apt: chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def start_browser(profile: Path, size: str = "1200,800") -> Any:
    """Headless Chromium driven by chromium-driver, with a fresh profile and nothing talking to the network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", f"--window-size={size}"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def wait_for(driver: Any, check: Callable[[Any], Any], what: str, shown: Callable[[Any], str]) -> Any:
    """Wait (bounded by WAIT) until ``check(driver)`` is truthy and return it; else fail naming ``what`` and
    ``shown(driver)``."""
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT).until(check)
    except Exception:
        raise AssertionError(f"never saw {what}; the page shows {shown(driver)!r}") from None


def wait_text(driver: Any, element_id: str, text: str) -> str:
    """Wait (bounded) until the element's text contains ``text``; returns that text."""
    from selenium.webdriver.common.by import By

    def seen(d: Any) -> str | bool:
        found = d.find_element(By.ID, element_id).text
        return found if text in found else False

    return wait_for(driver, seen, f"{text!r} in #{element_id}",  # type: ignore[no-any-return]
                    lambda d: d.find_element(By.ID, element_id).text)


def click(driver: Any, element_id: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, element_id).click()
