"""The inspection page, offline API docs, and API-key access control (no browser: see test_browser.py)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from anomaly.cli import main
from anomaly.station.service import create_app
from anomaly.station.service import create_app_from_env
from anomaly.station.web import API_KEY_ENV, page_html, read_api_key_file, settings_to_env

LOCAL = "http://127.0.0.1"
KEY = "k" * 12 + "-secret-0123"
URL_RE = re.compile(r"""(?:https?:|ftp:|wss?:)?//[\w.-]+\.[a-z]{2,}|(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?(?:https?:)?//""", re.I)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(patchcore_run):
    with TestClient(create_app(patchcore_run), base_url=LOCAL) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def keyed(patchcore_run):
    with TestClient(create_app(patchcore_run, api_key=KEY), base_url=LOCAL) as test_client:
        yield test_client


def test_page_is_served_and_references_no_external_url(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert html == page_html() and "Inspection station" in html
    assert not URL_RE.search(html), URL_RE.search(html)
    assert "http:" not in html and "https:" not in html
    srcs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html)
    assert all(s.startswith(("/", "data:", "#")) for s in srcs), srcs


def test_docs_work_offline(client):
    html = client.get("/docs").text
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)""", html)
    assert urls and all(u.startswith("/") for u in urls), urls  # nothing from a CDN
    assert "https://" not in html and "http://" not in html
    for asset in re.findall(r"""['"](/docs/assets/[^'"]+)""", html):
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 500, asset
    assert client.get("/redoc").status_code == 404  # dropped: its script came from a CDN
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_model_card_fields(client):
    info = client.get("/model").json()
    assert info["decision"]["threshold"] == pytest.approx(info["threshold"]) and info["decision"]["n_scores"] >= 1
    assert set(info["heatmap_range"]) == {"vmin", "vmax"}


ENDPOINTS = [("get", "/model", {}), ("get", "/openapi.json", {}), ("get", "/docs", {}),
             ("post", "/predict", {"files": {"file": ("a.png", png(), "image/png")}}),
             ("post", "/predict/batch", {"files": [("files", ("a.png", png(), "image/png"))]})]


@pytest.mark.parametrize("method, path, kwargs", ENDPOINTS, ids=[p for _, p, _ in ENDPOINTS])
def test_every_endpoint_needs_the_key(keyed, method, path, kwargs):
    call = getattr(keyed, method)
    missing = call(path, **kwargs)
    assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
    assert call(path, headers={"X-API-Key": KEY[:-1] + "x"}, **kwargs).status_code == 401
    assert call(path, headers={"X-API-Key": KEY}, **kwargs).status_code == 200


def test_open_paths_without_key(keyed):
    assert keyed.get("/health").json() == {"status": "ok"}
    assert keyed.get("/").status_code == 200  # the page, which asks for the key
    assert keyed.get("/docs/assets/swagger-ui.css").status_code == 200
    schema_paths = set(TestClient.get(keyed, "/openapi.json", headers={"X-API-Key": KEY}).json()["paths"])
    assert schema_paths == {"/health", "/model", "/predict", "/predict/batch"}


def test_key_sources_and_bad_keys(patchcore_run, tmp_path, monkeypatch):
    path = tmp_path / "key"
    path.write_text(f"  {KEY}\n")
    assert read_api_key_file(path) == KEY
    path.write_text("short\n")
    with pytest.raises(ValueError, match="at least"):
        read_api_key_file(path)
    with pytest.raises(ValueError, match="at least"):
        create_app(patchcore_run, api_key="")
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--run-dir", str(patchcore_run), "--api-key-file", str(path)])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--run-dir", str(patchcore_run), "--api-key-file", str(tmp_path / "missing")])
    assert exc.value.code == 2


def test_app_factory_reads_the_environment(patchcore_run, monkeypatch):
    for name, value in settings_to_env(run_dir=str(patchcore_run), runtime="torch", threads=1).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(API_KEY_ENV, KEY)
    with TestClient(create_app_from_env(), base_url=LOCAL) as test_client:
        assert test_client.get("/model").status_code == 401
        assert test_client.get("/model", headers={"X-API-Key": KEY}).json()["runtime"] == "torch"
    with pytest.raises(ValueError, match="unknown"):
        settings_to_env(run_dri="x")


@pytest.mark.slow
def test_serve_with_two_workers_and_a_key(patchcore_run, tmp_path):
    """A real ``anomaly serve --workers 2 --api-key-file``: both workers answer, with the key only."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ANOMALY_API_KEY", None)
    server = subprocess.Popen([sys.executable, "-m", "anomaly", "serve", "--run-dir", str(patchcore_run), "--port",
                               str(port), "--workers", "2", "--api-key-file", str(key_file)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        assert httpx.get(url + "/model").status_code == 401
        statuses = [httpx.post(url + "/predict", headers={"X-API-Key": KEY}, timeout=60,
                               files={"file": ("a.png", png(), "image/png")}).status_code for _ in range(4)]
        assert statuses == [200] * 4
    finally:
        os.killpg(server.pid, signal.SIGINT)
        _, err = server.communicate(timeout=60)
    assert err.decode().count("Application startup complete") >= 2, err.decode()[-2000:]  # two workers
