"""A real headless Chromium for tests, driven by selenium through Debian's chromedriver.

    with chromium(tmp_path) as driver:
        driver.get(url)

Uses /usr/bin/chromium and /usr/bin/chromedriver (Debian packages ``chromium`` and
``chromium-driver``, installed by .ci/system-deps.sh). Missing ones fail the test
loudly: the web page is tested in a real browser or not at all. selenium-manager
never runs (the driver path is given), so nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from .gateway import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = REPO / "test-artifacts"
T = TypeVar("T")


def require_chromium() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        raise RuntimeError(
            f"missing {', '.join(missing)}: install Debian's chromium and chromium-driver "
            "(sudo apt-get install -y chromium chromium-driver, or bash .ci/system-deps.sh)"
        )


@contextlib.contextmanager
def chromium(profile_dir: Path, *, width: int = 1280, height: int = 900) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a fresh profile in ``profile_dir``; quit on exit."""
    require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--disable-extensions", "--disable-default-apps",
        f"--window-size={width},{height}", f"--user-data-dir={profile_dir}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile_dir, ignore_errors=True)


def wait_until(what: str, probe: Callable[[], T | None], timeout: float = 10.0, driver: Any = None) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` (and the console)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # the element is not there yet, went stale, ...
            last = exc
        time.sleep(0.05)
    console = ""
    if driver is not None:
        with contextlib.suppress(Exception):
            console = "\n".join(str(entry) for entry in driver.get_log("browser"))
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})\n{console}")
