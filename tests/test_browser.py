"""The inspection page in a real headless Chromium (Debian's package, driven by Playwright).

Skipped with the reason printed when the browser is missing, except under ``CI``, where a missing
browser fails (``.ci/run`` installs it).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from anomaly.station.browser import VIEWPORT, launch, missing_browser_reason, serve, upload, wait_until
from anomaly.station.service import create_app

pytestmark = pytest.mark.slow  # headless Chromium: left out of `make test-fast`

KEY = "browser-test-key-0123456789"
REASON = missing_browser_reason()
if REASON:
    if os.environ.get("CI"):
        raise RuntimeError(f"CI is set but the browser tests cannot run: {REASON}")
    print(f"test_browser.py skipped: {REASON}")
    pytestmark = pytest.mark.skip(reason=REASON)


@pytest.fixture(scope="module")
def browser():
    with launch() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def defective(synthetic_root) -> Path:
    return sorted(p for p in (synthetic_root / "screw_like" / "test").glob("*/*.png") if p.parent.name != "good")[0]


@pytest.fixture(scope="module")
def open_url(patchcore_run):
    with serve(create_app(patchcore_run)) as url:
        yield url


def test_upload_shows_verdict_score_and_heatmap(browser, open_url, patchcore_run, defective, tmp_path):
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(open_url + "/")
    page.wait_for_selector("#card dt")
    assert "patchcore" in page.inner_text("#card")
    card = upload(page, defective)
    assert card.get_attribute("data-state") == "done"
    with TestClient(create_app(patchcore_run), base_url="http://127.0.0.1") as client:
        expected = client.post("/predict", files={"file": (defective.name, defective.read_bytes())}).json()
    assert float(card.get_attribute("data-score")) == pytest.approx(expected["score"], rel=1e-6)
    assert card.locator(".verdict").inner_text() == ("Anomalous" if expected["is_anomalous"] else "Normal")
    wait_until(page, "document.querySelector('#results img.heatmap').naturalWidth > 0")
    assert page.eval_on_selector("#results img.heatmap", "img => img.naturalWidth") == 64
    assert card.locator(".colourbar").count() == 1
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not an image")
    error = upload(page, bad)
    assert error.get_attribute("data-state") == "error"
    assert "notes.txt: rejected (not an image)" in error.locator(".error").inner_text()
    page.close()


def test_page_is_keyboard_usable(browser, open_url):
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(open_url + "/")
    focused = []
    for _ in range(6):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    assert "drop" in focused and "file-input" in focused
    with page.expect_file_chooser() as chooser:
        page.focus("#drop")
        page.keyboard.press("Enter")
    assert chooser.value.is_multiple()
    page.close()


def test_region_boxes_are_drawn_when_present(browser, open_url, defective):
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(open_url + "/")

    heatmap = base64.b64encode(defective.read_bytes()).decode()

    def add_regions(route):  # a /predict answer with the regions field of the operating-point issue
        route.fulfill(json={"score": 2.0, "is_anomalous": True, "threshold": 1.0, "heatmap_png_base64": heatmap,
                            "regions": [{"bbox": [8, 8, 32, 40], "area_px": 300, "max_score": 2.0}]})

    page.route("**/predict", add_regions)
    card = upload(page, defective)
    assert card.locator(".box").count() == 1 and card.locator(".fact-regions").inner_text() == "1"
    page.close()


def test_key_is_asked_once_and_used(browser, patchcore_run, defective):
    with serve(create_app(patchcore_run, api_key=KEY)) as url:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url + "/")
        page.wait_for_selector("#key-form:not([hidden])")
        page.fill("#api-key", "wrong-key-but-long-enough")
        page.keyboard.press("Enter")
        page.wait_for_selector("#key-message:has-text('refused')")
        page.fill("#api-key", KEY)
        page.keyboard.press("Enter")
        page.wait_for_selector("#card dt")
        card = upload(page, defective)
        assert card.get_attribute("data-state") == "done"
        assert page.evaluate("sessionStorage.getItem('anomaly-api-key')") == KEY
        assert page.is_hidden("#key-form")
        page.close()


def test_too_large_upload_is_explained(browser, patchcore_run, defective):
    with serve(create_app(patchcore_run, max_upload_bytes=1000)) as url:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url + "/")
        card = upload(page, defective)
        assert card.get_attribute("data-state") == "error"
        message = card.locator(".error").inner_text()
        assert f"{defective.name}: rejected (too large)" in message and "limit is 1000 bytes" in message
        page.close()


def test_docs_render_with_the_network_cut_off(browser, open_url):
    page = browser.new_page(viewport=VIEWPORT)
    outside = []

    def local_only(route):  # anything not served by the app would need the internet
        if route.request.url.startswith(open_url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", local_only)
    page.goto(open_url + "/docs")
    page.wait_for_selector(".opblock", timeout=30_000)  # Swagger UI rendered the operations
    assert page.locator(".opblock").count() >= 4 and outside == []
    page.close()


def test_page_and_docs_work_under_their_content_security_policy(browser, open_url, defective):
    """The page (inline script and style allowed by hash only) and the docs load, score and render with no
    CSP violation reported, and a script injected into the page is refused."""
    page = browser.new_page(viewport=VIEWPORT)
    refused = []
    page.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text
            else None)
    page.goto(open_url + "/")
    page.wait_for_selector("#card dt")
    assert upload(page, defective).get_attribute("data-state") == "done"
    wait_until(page, "document.querySelector('#results img.heatmap').naturalWidth > 0")
    page.goto(open_url + "/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    assert refused == []
    page.goto(open_url + "/")
    page.evaluate("""() => { const s = document.createElement('script'); s.textContent = 'window.injected = 1';
                             document.body.appendChild(s); }""")
    assert page.evaluate("window.injected === undefined") and any("script-src" in text for text in refused)
    page.close()
