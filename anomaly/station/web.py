"""The service's web side: the inspection page at ``/``, offline API docs, API-key access control.

:func:`add_page_and_docs` serves ``anomaly/static/index.html`` (self-contained: inline script and
style, no external URL) at ``/`` and Swagger UI at ``/docs`` from the three assets of the
``swagger-ui-bundle-v2`` package it uses (:data:`DOCS_FILES`; the package's own ``index.html``,
``oauth2-redirect.html`` and source maps are not served), so the docs work with no internet. Both
pages carry a Content-Security-Policy that allows exactly their inline script and style (by SHA-256)
and the app's own origin, and forbids framing (:func:`content_security_policy`). :class:`ApiKeyMiddleware`
answers 401 to every request without the right ``X-API-Key`` header, compared in constant time,
except the open paths (``/health``, the page, the docs' static assets). :func:`settings_to_env` writes
the ``ANOMALY_*`` environment variables from which each worker process of ``anomaly serve --workers N``
builds its own app (:func:`anomaly.station.service.create_app_from_env`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.resources
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from anomaly.decoding import require_regular_file

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
API_KEY_ENV = "ANOMALY_API_KEY"
DOCS_ASSETS = "/docs/assets"
OPEN_PATHS = ("/health", "/", "/favicon.ico")  # answered without a key (the page asks for the key itself)
DOCS_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
              "favicon-32x32.png": "image/png"}  # all that /docs loads
MIN_KEY_CHARS = 16
MAX_KEY_FILE_BYTES = 4096
# what `anomaly serve` passes to each worker process (see anomaly.station.service.create_app_from_env)
ENV_SETTINGS = {"run_dir": "ANOMALY_RUN_DIR", "runtime": "ANOMALY_RUNTIME",
                "max_upload_bytes": "ANOMALY_MAX_UPLOAD_BYTES", "threads": "ANOMALY_THREADS",
                "allowed_hosts": "ANOMALY_ALLOWED_HOSTS"}


def page_html() -> str:
    """The inspection page (``anomaly/static/index.html``, shipped as package data)."""
    return importlib.resources.files("anomaly").joinpath("static/index.html").read_text(encoding="utf-8")


def add_page_and_docs(app: FastAPI) -> None:
    """``GET /`` (the page) and ``GET /docs`` (Swagger UI from local assets); the app needs ``docs_url=None``."""
    from swagger_ui_bundle import swagger_ui_path

    html = page_html()
    page_csp = content_security_policy(html, images="'self' data: blob:")
    docs_html = get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - API docs",
                                    swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                    swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                    swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png").body.decode()
    # Swagger UI's React code adds inline styles at run time: allowed for the docs, not for the page
    docs_csp = content_security_policy(docs_html, images="'self' data:", styles="'self' 'unsafe-inline'")

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(html, headers={"Cache-Control": "no-store", "Content-Security-Policy": page_csp})

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(docs_html, headers={"Content-Security-Policy": docs_csp})

    for name, media_type in DOCS_FILES.items():
        app.add_api_route(f"{DOCS_ASSETS}/{name}", _static_file(Path(swagger_ui_path) / name, media_type),
                          methods=["GET"], include_in_schema=False)


def _static_file(path: Path, media_type: str) -> Callable[[], FileResponse]:
    def serve() -> FileResponse:
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})

    return serve


def content_security_policy(html: str, images: str = "'self'", styles: str | None = None) -> str:
    """A CSP for ``html``: its inline ``<script>`` and ``<style>`` blocks by SHA-256, scripts from this
    origin, fetches to this origin only, ``images`` as given, no plugins, forms, base URL or framing."""
    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    return (f"default-src 'none'; script-src 'self' {hashes('script')}; style-src {styles or hashes('style')}; "
            f"img-src {images}; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def read_api_key_file(path: str | Path) -> str:
    """The key in ``path`` (surrounding whitespace stripped); refuses a file that is not a small regular
    file of printable ASCII text, and an empty or short key."""
    source = f"the API key file {path}"
    require_regular_file(Path(path), source)  # a ValueError: never open a FIFO (it would block)
    with open(path, "rb") as handle:
        data = handle.read(MAX_KEY_FILE_BYTES + 1)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ValueError(f"{source} is larger than {MAX_KEY_FILE_BYTES} bytes: it is not a key file")
    return check_api_key(data.decode("ascii", errors="replace").strip(), source)


def check_api_key(key: str, source: str = "the API key") -> str:
    """``key`` when it is at least ``MIN_KEY_CHARS`` printable ASCII characters without spaces; else ValueError."""
    if len(key) < MIN_KEY_CHARS or not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise ValueError(f"{source} must hold one key of at least {MIN_KEY_CHARS} printable ASCII characters, "
                         f"no spaces or control characters (e.g. `python -c 'import secrets; "
                         f"print(secrets.token_urlsafe(32))'`)")
    return key


def api_key_from(key_file: str | Path | None) -> str | None:
    """The key from ``--api-key-file`` if given, else from ``$ANOMALY_API_KEY``, else None (no access control)."""
    if key_file:
        return read_api_key_file(key_file)
    key = os.environ.get(API_KEY_ENV, "").strip()
    return check_api_key(key, f"${API_KEY_ENV}") if key else None


class ApiKeyMiddleware:
    """ASGI middleware: 401 unless the ``X-API-Key`` header equals ``api_key`` (``hmac.compare_digest``).

    ``/health``, the page at ``/`` and the docs' static assets stay open; everything else, the API
    docs and ``/openapi.json`` included, needs the key.
    """

    def __init__(self, app: Callable, api_key: str) -> None:
        self.app, self.key = app, api_key.encode("ascii")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or self._open(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers", [])).get(API_KEY_HEADER.lower().encode(), b"")
        if hmac.compare_digest(given, self.key):
            await self.app(scope, receive, send)
            return
        detail = "invalid API key" if given else f"missing API key: send it in the {API_KEY_HEADER} header"
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", API_KEY_HEADER.encode())]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _open(path: str) -> bool:
        return path in OPEN_PATHS or path.startswith(DOCS_ASSETS + "/")


def settings_to_env(**settings: Any) -> dict[str, str]:
    """``create_app`` keyword arguments -> the ``ANOMALY_*`` variables :func:`anomaly.station.service.create_app_from_env`
    reads."""
    unknown = set(settings) - set(ENV_SETTINGS)
    if unknown:
        raise ValueError(f"unknown service settings {sorted(unknown)}")
    return {ENV_SETTINGS[name]: json.dumps(value) for name, value in settings.items() if value is not None}
