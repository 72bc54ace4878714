"""HTTP service: every endpoint, every kind of bad input, concurrency, a real uvicorn server, the load test."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from anomaly.cli import build_parser, main
from anomaly.dataset import read_image
from anomaly.inference import load_run
from anomaly.station.loadtest import check_loopback, run_loadtest, time_calls
from anomaly.station.service import DEFAULT_MAX_UPLOAD_BYTES, RUNTIMES, ImageDecodeError, create_app, decode_image

CATEGORY = "screw_like"
LIVE_LIMIT = 200_000  # bytes, for the real server
LOCAL = "http://127.0.0.1"  # TestClient base URL: the service answers loopback Host names only


@pytest.fixture(scope="module")
def run_dir(patchcore_run) -> Path:
    """The session's tiny PatchCore run (conftest.py: 64 px on ``screw_like``), fitted once; read-only here."""
    return patchcore_run


@pytest.fixture(scope="module")
def client(run_dir) -> TestClient:
    with TestClient(create_app(run_dir), base_url=LOCAL) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def test_images(synthetic_root) -> list[Path]:
    return sorted((synthetic_root / CATEGORY / "test").glob("*/*.png"))


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    (Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def predict(client: TestClient, data: bytes, name: str = "x.png"):
    return client.post("/predict", files={"file": (name, data, "image/png")})


def test_health_model_and_docs(client, run_dir):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/model").json()
    assert info["method"] == "patchcore" and info["category"] == CATEGORY and info["image_size"] == 64
    assert info["threshold"] == pytest.approx(load_run(run_dir).threshold)
    assert info["runtime"] == "torch" and info["metrics"] is None  # no metrics.json in this run
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/health", "/model", "/predict", "/predict/batch"} <= set(schema["paths"])


def test_no_endpoint_takes_a_path_or_query(client):
    for path, operations in client.get("/openapi.json").json()["paths"].items():
        for operation in operations.values():
            assert not operation.get("parameters"), path  # uploads only: no path/query parameters


def test_predict_matches_detector(client, run_dir, test_images):
    run = load_run(run_dir)
    path = test_images[-1]
    body = predict(client, path.read_bytes(), path.name).json()
    expected = run.detector.predict(read_image(path, run.image_size)[None])
    assert body["score"] == pytest.approx(float(expected.image_scores[0]), rel=1e-5)
    assert body["threshold"] == pytest.approx(run.threshold)
    assert body["is_anomalous"] == (body["score"] >= run.threshold)
    heatmap = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png_base64"])))
    assert heatmap.format == "PNG" and heatmap.size == (64, 64) and heatmap.mode == "RGB"


def test_image_modes_give_consistent_scores(client, test_images):
    gray = np.asarray(Image.open(test_images[0]).convert("L"))  # (H, W) uint8
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 128)])
    variants = {"gray": png_bytes(gray), "rgb": png_bytes(np.dstack([gray] * 3)), "rgba": png_bytes(rgba),
                "16bit": png_bytes(gray.astype(np.uint16) * 257), "palette": _palette_png(gray)}
    scores = {}
    for name, data in variants.items():
        response = predict(client, data, f"{name}.png")
        assert response.status_code == 200, (name, response.text)
        scores[name] = response.json()["score"]
    for name, score in scores.items():
        assert score == pytest.approx(scores["gray"], rel=1e-4, abs=1e-4), name


def _palette_png(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray).convert("P").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("data, status, words", [
    (b"", 422, "empty"),
    (b"this is a text file, not an image\n", 415, "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 415, "not an image"),
])
def test_bad_uploads(client, data, status, words):
    response = predict(client, data, "bad.bin")
    assert response.status_code == status
    assert words in response.json()["detail"] and "bad.bin" in response.json()["detail"]


def test_truncated_and_corrupt_png(client):
    data = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    for broken in (data[: len(data) // 2], data[:100] + b"x" * 200 + data[300:]):
        response = predict(client, broken)
        assert response.status_code == 422 and "corrupt" in response.json()["detail"]
    assert client.get("/health").status_code == 200  # the server is still fine


def test_missing_or_misnamed_field(client):
    assert client.post("/predict").status_code == 422
    response = client.post("/predict", files={"image": ("x.png", png_bytes(np.zeros((8, 8), np.uint8)))})
    assert response.status_code == 422 and "file" in str(response.json()["detail"])
    assert client.post("/predict", json={"path": "/etc/passwd"}).status_code == 422
    assert client.post("/predict/batch").status_code == 422


def test_oversize_upload_gets_413(run_dir):
    with TestClient(create_app(run_dir, max_upload_bytes=4096), base_url=LOCAL) as small:
        big = png_bytes(np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8))
        assert len(big) > 4096
        response = predict(small, big)
        assert response.status_code == 413 and "too large" in response.json()["detail"]
        ok = predict(small, png_bytes(np.zeros((16, 16), np.uint8)))
        assert ok.status_code == 200


def test_oversize_chunked_upload_gets_413(run_dir):
    """No Content-Length (chunked): the streamed bytes are counted."""
    boundary = b"xyz"

    def body():
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for _ in range(10):
            yield bytes(1000)
        yield b"\r\n--" + boundary + b"--\r\n"

    with TestClient(create_app(run_dir, max_upload_bytes=4096), base_url=LOCAL) as small:
        response = small.post("/predict", content=body(),
                              headers={"content-type": "multipart/form-data; boundary=xyz"})
        assert response.status_code == 413 and "too large" in response.json()["detail"]


def test_decode_image_limits():
    with pytest.raises(ImageDecodeError) as err:
        decode_image(png_bytes(np.zeros((100, 100), np.uint8)), 64, max_pixels=5000)
    assert err.value.status_code == 413
    image = decode_image(png_bytes(np.full((10, 20), 65535, np.uint16)), 8)
    assert image.shape == (3, 8, 8) and torch.allclose(image, torch.ones_like(image))


def test_batch_endpoint(client, test_images):
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in test_images[:3]]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == [p.name for p in test_images[:3]]
    for path, result in zip(test_images[:3], results):
        single = predict(client, path.read_bytes(), path.name).json()
        assert result["score"] == pytest.approx(single["score"], rel=1e-5)
    files.append(("files", ("notes.txt", b"not an image", "text/plain")))
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 415 and "notes.txt" in response.json()["detail"]
    too_many = [("files", (f"{i}.png", png_bytes(np.zeros((8, 8), np.uint8)))) for i in range(33)]
    assert client.post("/predict/batch", files=too_many).status_code == 413


def test_concurrent_requests_are_independent(client, test_images):
    payloads = [p.read_bytes() for p in test_images[:6]]
    sequential = [predict(client, data).json()["score"] for data in payloads]
    with ThreadPoolExecutor(6) as pool:
        concurrent = list(pool.map(lambda data: predict(client, data).json()["score"], payloads * 2))
    assert concurrent == pytest.approx(sequential * 2, rel=1e-5)


@pytest.fixture(scope="module")
def live_url(run_dir):
    """A real uvicorn server on a free loopback port, in a thread; shut down after the tests."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(run_dir, max_upload_bytes=LIVE_LIMIT)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_real_server_over_http(live_url, test_images):
    import httpx

    with httpx.Client(base_url=live_url, timeout=30) as http:
        assert http.get("/health").json() == {"status": "ok"}
        response = http.post("/predict", files={"file": ("a.png", test_images[0].read_bytes(), "image/png")})
        assert response.status_code == 200 and response.json()["score"] >= 0
        assert http.post("/predict", files={"file": ("a.txt", b"hello", "text/plain")}).status_code == 415
        big = http.post("/predict", files={"file": ("big.png", bytes(LIVE_LIMIT + 1), "image/png")})
        assert big.status_code == 413 and "too large" in big.json()["detail"]
        assert http.get("/health").status_code == 200


def test_loadtest_against_real_server(live_url, test_images):
    result = run_loadtest(live_url, n_requests=6, concurrency=2, image=test_images[0].read_bytes())
    assert result["ok"] == 6 and result["errors"] == 0
    assert result["throughput_rps"] > 0 and result["latency_ms_p95"] >= result["latency_ms_p50"] > 0


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:1", "http://[::1]:8000",
                                 "http://127.1.2.3:80"])
def test_loopback_urls_accepted(url):
    check_loopback(url)


@pytest.mark.parametrize("url", ["http://example.com:8000", "http://10.0.0.1:8000", "http://0.0.0.0:8000",
                                 "ftp://127.0.0.1/", "127.0.0.1:8000", "http://localhost.example.com"])
def test_loadtest_refuses_non_loopback(url):
    with pytest.raises(ValueError):
        run_loadtest(url, n_requests=1, concurrency=1)


def test_cli_loadtest_refuses_remote_host(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["loadtest", "--url", "http://192.168.1.10:8000", "--requests", "1"])
    assert exit_info.value.code == 2 and "loopback" in capsys.readouterr().err


def test_create_app_rejects_bad_arguments(run_dir, tmp_path):
    with pytest.raises(ValueError, match="runtime"):
        create_app(run_dir, runtime="tensorrt")
    with pytest.raises(FileNotFoundError):
        create_app(tmp_path / "missing")


def test_time_calls_takes_turns_in_blocks():
    order = []
    timings = time_calls({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=7, rounds=3)
    assert [len(wall) for wall, _ in timings.values()] == [7, 7]
    assert all((wall >= 0).all() and (cpu >= 0).all() for wall, cpu in timings.values())
    # 3 rounds of blocks of 3, 2, 2 timed calls, each block after one untimed call; the runtimes alternate
    assert "".join(order) == "aaaa" "bbbb" "aaa" "bbb" "aaa" "bbb"


def test_serve_command_offers_what_the_service_accepts():
    for runtime in RUNTIMES:
        args = build_parser().parse_args(["serve", "--run-dir", "r", "--runtime", runtime])
        assert args.runtime == runtime
    assert int(args.max_upload_mb * 2**20) == DEFAULT_MAX_UPLOAD_BYTES
