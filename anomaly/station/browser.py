"""Headless Chromium for the inspection page: a screenshot command and the real-browser tests.

Playwright drives Debian's ``chromium`` package (``/usr/bin/chromium``, or ``$ANOMALY_CHROMIUM``)
through ``executable_path``; no browser is ever downloaded (never run ``playwright install``).
:func:`serve` runs an app with uvicorn on a free loopback port in a background thread, and
:func:`screenshot_station` uploads one image to the page and saves a PNG of the verdict
(``anomaly station``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from anomaly.station.service import create_app

logger = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")
VIEWPORT = {"width": 1280, "height": 800}  # a laptop screen


def chromium_path() -> str | None:
    """The Chromium executable to drive (``$ANOMALY_CHROMIUM`` or Debian's), or None when absent."""
    path = os.environ.get("ANOMALY_CHROMIUM") or CHROMIUM
    return path if Path(path).is_file() and os.access(path, os.X_OK) else shutil.which("chromium")


def missing_browser_reason() -> str | None:
    """Why the browser cannot run here (None when it can)."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e .)"
    if chromium_path() is None:
        return f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does it)"
    return None


@contextlib.contextmanager
def launch() -> Iterator[Any]:
    """A headless Chromium (Playwright ``Browser``), closed on exit."""
    from playwright.sync_api import sync_playwright

    reason = missing_browser_reason()
    if reason:
        raise FileNotFoundError(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=list(CHROMIUM_FLAGS),
                                             headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def serve(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Run ``app`` with uvicorn on a free port of ``host`` in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the service did not start")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def upload(page: Any, path: str | Path, timeout_ms: float = 60_000) -> Any:
    """Choose ``path`` in the page's file input; wait for its result card (verdict or error) and return it."""
    before = page.locator("#results .result").count()
    page.set_input_files("#file-input", str(path))
    card = page.locator("#results .result").first
    wait_until(page, f"document.querySelectorAll('#results .result').length > {before} && "
                     "document.querySelector('#results .result').dataset.state !== 'pending'", timeout_ms)
    return card


def wait_until(page: Any, expression: str, timeout_ms: float = 60_000, poll_s: float = 0.05) -> None:
    """Poll ``expression`` in ``page`` until it is truthy (TimeoutError after ``timeout_ms``).

    ``page.evaluate`` runs over the DevTools protocol, so the page's Content-Security-Policy (no
    ``'unsafe-eval'``) allows it; Playwright's ``wait_for_function`` evaluates its predicate with
    ``eval`` inside the page, which that policy refuses.
    """
    deadline = time.monotonic() + timeout_ms / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expression!r} still false after {timeout_ms:.0f} ms")
        time.sleep(poll_s)


def screenshot_station(run_dir: str | Path, image: str | Path, out: str | Path, runtime: str = "torch") -> dict[str, Any]:
    """Serve ``run_dir``, upload ``image`` to the page in headless Chromium, save a PNG screenshot at ``out``.

    Returns:
        dict with screenshot (path), score, verdict and verdict_ms (upload to verdict, as timed by the page).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with serve(create_app(run_dir, runtime=runtime)) as url, launch() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url + "/")
        page.wait_for_selector("#card dt")  # the run card is loaded
        card = upload(page, image)
        if card.get_attribute("data-state") != "done":
            raise ValueError(f"the page rejected {image}: {card.inner_text()}")
        wait_until(page, "document.querySelector('#results img.heatmap').complete")
        page.screenshot(path=str(out), full_page=True)
        result = {"screenshot": str(out), "score": float(card.get_attribute("data-score")),
                  "verdict": card.locator(".verdict").inner_text(), "verdict_ms": int(card.get_attribute("data-ms"))}
    logger.info("wrote %s", out)
    return result
