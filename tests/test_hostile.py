"""Hostile inputs, second round (issue 23): container-format bombs, NaN pixels, EXIF, the pixel budget,
memory under concurrent uploads, and a crafted + mutated fuzz corpus through ``/predict``.

``HOSTILE_N`` (default 150) sets the size of the fuzz corpus; ``HOSTILE_N=2000 pytest
tests/test_hostile.py -k corpus -s`` is the long run. The real-server test prints what it measured
with ``-s`` (``ANOMALY_MALLOC=keep`` in front measures the allocator's defaults, and fails).
Files, names and the CSV are in ``test_hostile_files.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from anomaly.decoding import DECODE_BUDGET, ImageDecodeError, PixelBudget, decode_cost, decode_image, decode_with_hw
from anomaly.station.service import create_app
from conftest import mutate

LOCAL = "http://127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
HOSTILE_N = int(os.environ.get("HOSTILE_N", "150"))
BOMB_SIDE = 13_000  # 169 Mpx: over our 64 Mpx cap, under PIL's own bomb error (179 Mpx), so PIL would decode it
LEGAL_PEAK_MIB = 400  # stated in docs/robustness.md: a worker's peak grows by at most this under legal uploads


# -- crafted files ----------------------------------------------------------------------------------
def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def zero_png(side: int) -> bytes:
    """A valid side x side RGBA PNG of zeros, compressed row by row (never a full image in memory)."""
    packer, row, parts = zlib.compressobj(9), b"\0" * (1 + 4 * side), []
    for _ in range(side):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def ico(png: bytes, kind: int = 1) -> bytes:
    """An ICO (``kind`` 1) or CUR (2) whose one entry (declared 256 x 256) is ``png``."""
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return struct.pack("<HHH", 0, kind, 1) + entry + png


def icns(png: bytes) -> bytes:
    """An ICNS holding ``png`` as its 1024 px ``ic10`` element."""
    element = b"ic10" + struct.pack(">I", 8 + len(png)) + png
    return b"icns" + struct.pack(">I", 8 + len(element)) + element


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """The issue's container bombs: ICO, CUR and ICNS each holding a 13000 x 13000 RGBA PNG (~650 KB)."""
    folder, png = tmp_path_factory.mktemp("bombs"), zero_png(BOMB_SIDE)
    files = {"ico": ico(png), "cur": ico(png, kind=2), "icns": icns(png)}
    for name, data in files.items():
        (folder / f"{name}.png").write_bytes(data)  # named .png, as in the CLI case
    return {name: folder / f"{name}.png" for name in files}


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def float_tiff(values: np.ndarray) -> bytes:
    return encode(Image.fromarray(values.astype(np.float32), mode="F"), "TIFF")


@pytest.fixture(scope="module")
def client(patchcore_run) -> TestClient:
    with TestClient(create_app(patchcore_run), base_url=LOCAL) as test_client:
        yield test_client


_RSS_MIB = """
def rss_mib(pid="self", key="VmRSS"):
    \"\"\"VmRSS (now) or VmHWM (peak) of a process from /proc, in MiB.\"\"\"
    for line in open(f"/proc/{pid}/status").read().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no {key} in /proc/{pid}/status")
"""


def rss_mib(pid: int | str = "self", key: str = "VmRSS") -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of a process from ``/proc``, in MiB (also in the scripts: ``_RSS_MIB``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no {key} in /proc/{pid}/status")


# -- 1. container formats never reach a decoder ------------------------------------------------------
# Peaks are read from VmHWM: ru_maxrss of a child starts at its parent's size (Linux keeps the pre-exec
# peak), so with a large pytest process as the parent it would hide a growth.
_DECODE_PEAK = _RSS_MIB + """
import sys
from pathlib import Path
from PIL import Image
from anomaly.decoding import ImageDecodeError, decode_image
decode_image(Path(sys.argv[2]), 64)  # warm-up
before = rss_mib("self", "VmHWM")
if sys.argv[3] == "pil":  # control: PIL alone decodes the embedded frame inside Image.open
    print("pil", Image.open(sys.argv[1]).size)
else:
    try:
        decode_image(Path(sys.argv[1]), 64)
        print("decoded")
    except ImageDecodeError as err:
        print("refused", err.status_code)
print(rss_mib("self", "VmHWM") - before)
"""


def _clean_env() -> dict[str, str]:
    """This environment without allocator settings (an in-process ``anomaly serve`` test may have set them)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, "PYTHONPATH": str(REPO)}


def _decode_peak(path: Path, small: Path, mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", _DECODE_PEAK, str(path), str(small), mode], capture_output=True,
                         text=True, env=_clean_env(), check=True).stdout.splitlines()
    return out[0], float(out[1])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ico", "cur", "icns"])
def test_container_bombs_are_refused_before_decoding(bombs, tmp_path, kind):
    small = tmp_path / "small.png"
    Image.new("L", (64, 64)).save(small)
    answer, growth = _decode_peak(bombs[kind], small, "ours")
    assert answer == "refused 415" and growth < 20, (answer, growth)
    with pytest.raises(ImageDecodeError, match="not an image in a format this reads"):
        decode_image(bombs[kind].read_bytes(), 64)
    if kind == "ico":  # the control: the same file through PIL alone allocates the 13000 x 13000 frame
        answer, pil_growth = _decode_peak(bombs[kind], small, "pil")
        assert answer == f"pil ({BOMB_SIDE}, {BOMB_SIDE})" and pil_growth > 500, (answer, pil_growth)
        print(f"ICO bomb: PIL's Image.open +{pil_growth:.0f} MiB; decode_image refused it (+{growth:.0f} MiB)")


@pytest.mark.slow
def test_container_bombs_get_415_from_the_service(client, bombs):
    for kind, path in bombs.items():
        response = client.post("/predict", files={"file": (f"{kind}.ico", path.read_bytes())})
        assert response.status_code == 415 and "not an image" in response.json()["detail"], kind
    assert client.get("/health").status_code == 200


_CLI_PEAK = _RSS_MIB + """
import sys
from anomaly.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("RSS", code, rss_mib("self", "VmHWM"))
"""


def _cli_peak(*argv: str) -> tuple[int, float, str]:
    out = subprocess.run([sys.executable, "-c", _CLI_PEAK, *argv], capture_output=True, text=True, env=_clean_env(),
                         timeout=300)
    _, code, peak = out.stdout.strip().splitlines()[-1].split()
    return int(code), float(peak), out.stderr


@pytest.mark.slow
def test_container_bombs_in_a_folder_are_error_rows_in_bounded_memory(patchcore_run, bombs, tmp_path):
    """The CLI case of the issue: an ICO named .png among good images; peak RSS as with a good image alone."""
    good = tmp_path / "good"
    good.mkdir()
    Image.new("RGB", (64, 64), (90, 90, 90)).save(good / "part.png")
    common = ["predict", "--run-dir", str(patchcore_run), "--device", "cpu", "--runtime", "torch"]
    code, baseline, _ = _cli_peak(*common, "--csv", str(tmp_path / "good.csv"), str(good))
    code_bombs, peak, _ = _cli_peak(*common, "--csv", str(tmp_path / "bombs.csv"), str(good), str(bombs["ico"].parent))
    rows = (tmp_path / "bombs.csv").read_text().splitlines()[1:]
    assert code == code_bombs == 0 and len(rows) == 4
    assert sum("not an image" in row for row in rows) == 3
    assert peak - baseline < 100, f"peak RSS {peak:.0f} MiB with the bombs, {baseline:.0f} MiB without"
    code, _, err = _cli_peak(*common, str(bombs["icns"]))  # JSON mode stops at it, naming it
    assert code == 2 and str(bombs["icns"]) in err and "not an image" in err


# -- 2. NaN and infinite pixels ------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_refused_with_422(client, bad):
    values = np.full((64, 64), 0.5, np.float32)
    values[10, 10] = bad
    data = float_tiff(values)
    with pytest.raises(ImageDecodeError, match="NaN or infinite") as err:
        decode_image(data, 64)
    assert err.value.status_code == 422
    response = client.post("/predict", files={"file": ("float.tif", data)})
    assert response.status_code == 422 and "float.tif" in response.json()["detail"]
    batch = client.post("/predict/batch", files=[("files", ("ok.tif", float_tiff(np.full((64, 64), 0.5)))),
                                                 ("files", ("nan.tif", data))])
    assert batch.status_code == 422 and "nan.tif" in batch.json()["detail"]
    ok = client.post("/predict", files={"file": ("ok.tif", float_tiff(np.full((64, 64), 0.5)))})
    assert ok.status_code == 200 and np.isfinite(ok.json()["score"])


def test_nan_image_in_predict_is_an_error_row_and_json_stays_valid(patchcore_run, tmp_path, capsys):
    from anomaly.cli import main

    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "nan.tif").write_bytes(float_tiff(np.full((32, 32), np.nan)))
    Image.new("L", (32, 32), 128).save(folder / "ok.png")
    out = tmp_path / "r.csv"
    assert main(["predict", "--run-dir", str(patchcore_run), "--device", "cpu", "--csv", str(out), str(folder)]) == 0
    import pandas as pd

    rows = pd.read_csv(out).set_index("path")
    nan_row = rows.loc[str(folder / "nan.tif")]
    assert "NaN" in nan_row["error"] and pd.isna(nan_row["score"]) and pd.isna(nan_row["is_anomalous"])
    assert np.isfinite(rows.loc[str(folder / "ok.png"), "score"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--run-dir", str(patchcore_run), "--device", "cpu", str(folder / "ok.png"),
              str(folder / "nan.tif")])
    captured = capsys.readouterr()
    assert exc.value.code == 2 and "nan.tif" in captured.err and "NaN" in captured.err
    assert [json.loads(line)["path"] for line in captured.out.splitlines()] == [str(folder / "ok.png")]


def test_a_fit_names_the_nan_image_in_train_good(tiny_mvtec, tmp_path, capsys):
    from anomaly.cli import main

    bad = tiny_mvtec / "widget" / "train" / "good" / "003.tif"
    bad.write_bytes(float_tiff(np.where(np.eye(32) > 0, np.nan, 0.5)))
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--method", "autoencoder", "--data", str(tiny_mvtec), "--category", "widget", "--run-dir",
              str(tmp_path / "run"), "--device", "cpu", "--epochs", "1", "--image-size", "32"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and str(bad) in err and "NaN" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


# -- 3. EXIF orientation -----------------------------------------------------------------------------------
def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_and_regions_are_upright(client, synthetic_root, orientation):
    upright = Image.open(sorted((synthetic_root / "screw_like" / "test").glob("[!g]*/*.png"))[0]).convert("RGB")
    upright = upright.crop((0, 0, 64, 48))  # not square: a swapped axis would show
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    stored = upright.transpose(undo[orientation])  # what a camera would write with this tag
    tagged = encode(stored, "PNG", exif=_exif(orientation))
    image, hw = decode_with_hw(tagged)
    assert hw == (48, 64) and torch.equal(image, decode_image(encode(upright)))
    one, two = (client.post("/predict", files={"file": (n, d)}).json()
                for n, d in (("tagged.png", tagged), ("upright.png", encode(upright))))
    assert one["score"] == pytest.approx(two["score"], rel=1e-5)
    assert one.get("regions") == two.get("regions")


# -- 4. the pixel budget ---------------------------------------------------------------------------------------
def test_pixel_budget_bounds_pixels_in_flight_first_come_first_served():
    budget, peak, order, lock = PixelBudget(100), [0], [], threading.Lock()

    def decode(name: str, pixels: int) -> None:
        with budget.hold(pixels):
            with lock:
                peak[0] = max(peak[0], budget.in_use)
                order.append(name)
            time.sleep(0.02)

    with ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(decode, "big", 90)]
        time.sleep(0.005)
        jobs += [pool.submit(decode, f"s{i}", 30) for i in range(6)] + [pool.submit(decode, "huge", 10**9)]
        for job in jobs:
            job.result(timeout=10)
    assert peak[0] <= 100 and budget.in_use == 0
    assert order[0] == "big" and order[-1] == "huge"  # a larger request is not starved by later small ones


class RecordingBudget(PixelBudget):
    """A budget that remembers the most pixels it ever held at once."""

    peak = 0

    @contextlib.contextmanager
    def hold(self, pixels: int):
        with super().hold(pixels):
            self.peak = max(self.peak, self.in_use)
            yield


def test_concurrent_decodes_stay_within_the_budget(monkeypatch):
    import anomaly.decoding as D

    one = decode_cost("L", (2048, 2048), (4, 4))
    budget = RecordingBudget(3 * one)
    monkeypatch.setattr(D, "DECODE_BUDGET", budget)
    data = encode(Image.new("L", (2048, 2048), 7))
    with ThreadPoolExecutor(12) as pool:
        images = list(pool.map(lambda _: decode_image(data, 64), range(24)))
    assert all(image.shape == (3, 64, 64) for image in images)
    assert one <= budget.peak <= 3 * one and budget.in_use == 0
    assert DECODE_BUDGET.capacity == D.MAX_PIXELS  # the service's budget: one 64 Mpx image's 4-byte pixels


def test_decode_cost_counts_conversions_and_float_copies():
    assert decode_cost("L", (100, 100)) == 10_000 + 4 * 10_000  # not reduced: the float copy dominates
    assert decode_cost("RGBA", (100, 100)) == 2 * 10_000 + 4 * 10_000  # converted at full size
    assert decode_cost("RGBA", (1000, 1000), (10, 10)) == 1_000_000 + 4 * 10_000  # converted in strips


# -- 5. memory of a real server under concurrent bombs and legal 64 Mpx uploads ----------------------------------
def _start_server(run_dir: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "anomaly", "serve", "--run-dir", str(run_dir), "--port", str(port),
                               "--runtime", "torch"], env=_clean_env(),  # ANOMALY_MALLOC=keep passes
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(900):
        try:
            httpx.post(url + "/predict", files={"file": ("w.png", encode(Image.new("L", (64, 64))))}, timeout=60)
            return server, url
        except httpx.TransportError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("anomaly serve did not start")


def _concurrent(url: str, uploads: list[tuple[str, bytes]]) -> list[int]:
    import httpx

    with httpx.Client(base_url=url, timeout=600) as http, ThreadPoolExecutor(len(uploads)) as pool:
        return list(pool.map(lambda u: http.post("/predict", files={"file": u}).status_code, uploads))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the server's peak RSS from /proc")
def test_real_server_memory_under_concurrent_bombs_and_legal_uploads(patchcore_run, bombs):
    """8 concurrent container bombs: peak RSS +<= 300 MB; 32 concurrent legal 8192 x 8192 uploads (RGBA,
    RGB, gray, 16-bit): +<= LEGAL_PEAK_MIB, and the memory is given back after the load."""
    legal = {"rgba": Image.new("RGBA", (8192, 8192), (120, 130, 140, 200)), "rgb": Image.new("RGB", (8192, 8192), 90),
             "gray": Image.new("L", (8192, 8192), 100), "16bit": Image.new("I;16", (8192, 8192), 3000)}
    legal = {name: encode(image, compress_level=1) for name, image in legal.items()}
    server, url = _start_server(patchcore_run)
    try:
        start = rss_mib(server.pid, "VmHWM")
        kinds = ["ico", "cur", "icns"] * 3
        codes = _concurrent(url, [(f"{k}.png", bombs[k].read_bytes()) for k in kinds[:8]])
        after_bombs = rss_mib(server.pid, "VmHWM")
        began = time.perf_counter()
        legal_codes = _concurrent(url, [(f"{name}{i}.png", data) for i in range(8) for name, data in legal.items()])
        seconds = time.perf_counter() - began
        peak, settled = rss_mib(server.pid, "VmHWM"), rss_mib(server.pid, "VmRSS")
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"server peak RSS {start:.0f} MiB; 8 container bombs +{after_bombs - start:.0f} MiB ({set(codes)}); 32 "
          f"legal 64 Mpx uploads +{peak - start:.0f} MiB in {seconds:.0f} s ({set(legal_codes)}); RSS after "
          f"{settled:.0f} MiB")
    assert set(codes) == {415} and set(legal_codes) == {200}
    assert after_bombs - start <= 300, f"8 bombs: peak RSS +{after_bombs - start:.0f} MiB"
    assert peak - start <= LEGAL_PEAK_MIB, f"32 legal 64 Mpx uploads: peak RSS +{peak - start:.0f} MiB"
    assert settled - start <= 100, f"RSS {settled:.0f} MiB after the load, {start:.0f} MiB before"


# -- 6. a crafted and mutated corpus through /predict: never a 5xx --------------------------------------------
def crafted_bases() -> list[bytes]:
    """Small images of every kind the issue lists, plus the crafted ones: 16-bit, CMYK, float TIFF (finite,
    NaN, inf), ICO/CUR/ICNS (small, and one holding a 2048 px PNG), EXIF-rotated, palette, PGM,
    multi-frame TIFF and PNG (APNG), compressed TIFF, WebP, GIF."""
    rng = np.random.default_rng(1)
    gray = Image.fromarray(rng.integers(0, 256, (24, 32), dtype=np.uint8))
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    small_png = encode(rgb.convert("RGBA"))
    values = rng.random((24, 32)).astype(np.float32)
    bases = [encode(gray), encode(rgb, "JPEG"), encode(rgb, "BMP"), encode(gray, "PPM"), encode(rgb.convert("P")),
             encode(Image.fromarray((values * 65535).astype(np.uint16))), encode(rgb.convert("CMYK"), "JPEG"),
             encode(rgb.convert("CMYK"), "TIFF"), float_tiff(values), float_tiff(np.where(values > 0.5, np.nan, values)),
             float_tiff(np.where(values > 0.9, np.inf, values)), encode(rgb, "PNG", exif=_exif(6)),
             encode(rgb, "JPEG", exif=_exif(8)), encode(rgb, "WEBP"), ico(small_png), ico(small_png, 2), icns(small_png),
             ico(zero_png(2048)), encode(gray, "TIFF", save_all=True, append_images=[rgb.convert("L")] * 2),
             encode(rgb, "TIFF", compression="tiff_deflate"), encode(rgb, "TIFF", compression="jpeg"),
             encode(rgb, "PNG", save_all=True, append_images=[gray.convert("RGB")]), encode(rgb, "GIF")]
    return bases


def hostile_corpus(n: int, seed: int = 0) -> list[bytes]:
    """Every crafted base as is, then seeded mutations of them (byte flips biased to headers, truncations,
    overwrites, insertions) up to ``n`` images."""
    rng, bases = np.random.default_rng(seed), crafted_bases()
    corpus = list(bases)
    for i in range(max(0, n - len(bases))):
        corpus.append(mutate(bases[i % len(bases)], (i // len(bases)) % 4, rng))
    return corpus


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the corrupt metadata it skips
def test_hostile_corpus_never_gets_a_5xx(client):
    corpus = hostile_corpus(HOSTILE_N)
    statuses: dict[int, int] = {}
    began = time.perf_counter()
    for i, data in enumerate(corpus):
        response = client.post("/predict", files={"file": (f"{i}.bin", data)})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code == 200:
            assert np.isfinite(response.json()["score"])
        assert response.status_code < 500, (i, response.text)
    batch = client.post("/predict/batch", files=[("files", (f"{i}.bin", d)) for i, d in enumerate(corpus[:32])])
    assert batch.status_code < 500
    assert statuses.get(200, 0) > 0 and statuses.get(415, 0) > 0 and statuses.get(422, 0) > 0
    print(f"hostile corpus: {len(corpus)} uploads through /predict in {time.perf_counter() - began:.0f} s: "
          f"{dict(sorted(statuses.items()))}, 0 >= 500")


def test_limit_allocator_sets_glibc_and_the_workers_environment():
    from anomaly.memory import ARENA_MAX, MMAP_THRESHOLD, limit_allocator

    env: dict[str, str] = {}
    changed = limit_allocator(env)
    assert env == {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_ARENA_MAX": str(ARENA_MAX)}
    assert changed == (os.uname().sysname == "Linux" and os.confstr("CS_GNU_LIBC_VERSION") is not None)
    kept = {"ANOMALY_MALLOC": "keep"}
    assert limit_allocator(kept) is False and kept == {"ANOMALY_MALLOC": "keep"}
