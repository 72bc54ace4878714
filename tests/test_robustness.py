"""Nothing a user sends or interrupts can crash, exhaust or corrupt the station (issue 14).

Hostile images through the one decoder and through ``/predict``, a seeded fuzz corpus
(``FUZZ_N=3000`` for the long run), run folders killed mid-fit, stale and malformed run files,
arguments refused before the fit, and the Host-header check.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from anomaly import decoding
from anomaly.cli import main
from anomaly.config import RunConfig
from anomaly.decoding import ImageDecodeError, decode_image
from anomaly.inference import load_run
from anomaly.pipeline import evaluate_run, fit_run
from anomaly.runs import MARKER, RunFolderError, check_run_dir, is_evaluated, staged_run_dir
from anomaly.station.service import create_app
from conftest import mutate

CATEGORY = "screw_like"
LOCAL = "http://127.0.0.1"
FUZZ_N = int(os.environ.get("FUZZ_N", "300"))  # mutated images through the decoder; a fifth through /predict
REPO = Path(__file__).resolve().parents[1]


# -- helpers ---------------------------------------------------------------------------------------
def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming ``width`` x ``height``, with no pixel data (a bomb's header)."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def fuzz_corpus(n: int, seed: int = 0) -> list[bytes]:
    """``n`` seeded mutations (byte flips biased to headers, truncations, overwrites, insertions) of small
    PNG, JPEG, TIFF, BMP and WEBP images, grayscale and colour."""
    rng = np.random.default_rng(seed)
    bases = [encode(rng.integers(0, 256, shape, dtype=np.uint8), fmt)
             for fmt in ("PNG", "JPEG", "TIFF", "BMP", "WEBP") for shape in ((24, 32), (24, 32, 3))]
    corpus = []
    for i in range(n):
        corpus.append(mutate(bases[i % len(bases)], (i // len(bases)) % 4, rng))
    return corpus


def tree_digest(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def pc_run(patchcore_run) -> Path:
    """The session's tiny PatchCore run (conftest.py), fitted once; tests that change a run copy it first."""
    return patchcore_run


@pytest.fixture(scope="module")
def client(pc_run) -> TestClient:
    with TestClient(create_app(pc_run), base_url=LOCAL) as test_client:
        yield test_client


def ae_fit(data: Path, run_dir: Path, **params) -> Path:
    params = {"image_size": 32, "epochs": 1, "base_channels": 4, "latent_dim": 8, **params}
    return fit_run(RunConfig(data, CATEGORY, "autoencoder", params=params, device="cpu"), run_dir)


# -- 1. memory: huge and tall images ---------------------------------------------------------------
_PEAK = """
import resource, sys
from pathlib import Path
from anomaly.decoding import ImageDecodeError, decode_image
decode_image(Path(sys.argv[2]), 64)  # warm-up: imports, torch kernels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    print("ok", tuple(decode_image(Path(sys.argv[1]).read_bytes(), 64).shape))
except ImageDecodeError as err:
    print("refused", err.status_code)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


@pytest.mark.slow
@pytest.mark.parametrize("size, answer", [((1, 16_000_000), "refused 413"), ((8000, 8000), "ok (3, 64, 64)")])
def test_huge_images_decode_in_bounded_memory(tmp_path, size, answer):
    """The issue's 1 x 16,000,000 PNG (9 GB before) and an 8000 x 8000 one: peak RSS grows <= 300 MB."""
    path, small = tmp_path / "big.png", tmp_path / "small.png"
    Image.new("L", size).save(path)
    Image.new("L", (64, 64)).save(small)
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(small)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True).stdout.splitlines()
    assert out[0] == answer
    assert float(out[1]) <= 300, f"peak RSS grew by {out[1]} MiB"


@pytest.mark.parametrize("kind", ["L", "I;16", "RGBA", "P", "JPEG"])
def test_pil_reduction_of_large_images_matches_a_direct_resize(kind):
    """Above REDUCE_MARGIN x S, the PIL box reduction is a cheap first step, not a different picture."""
    y, x = np.mgrid[0:1100, 0:2100]
    smooth = 127 + 100 * np.sin(x / 97.0) * np.cos(y / 61.0)  # (1100, 2100)
    gray = smooth.astype(np.uint8)
    image = {"L": Image.fromarray(gray), "I;16": Image.fromarray((smooth * 257).astype(np.uint16)),
             "RGBA": Image.fromarray(np.dstack([gray, gray, gray, np.full_like(gray, 9)])),
             "P": Image.fromarray(gray).convert("P"), "JPEG": Image.fromarray(gray)}[kind]
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if kind == "JPEG" else "PNG")
    reduced = decode_image(buffer.getvalue(), 64)  # factors (4, 2): reduced in PIL first
    direct = decoding.to_image_tensor(decoding.image_array(Image.open(io.BytesIO(buffer.getvalue()))), 64)
    assert reduced.shape == (3, 64, 64)
    assert float((reduced - direct).abs().max()) < 0.01


def test_tall_upload_gets_413_and_the_server_stays_up(client):
    tall = encode(np.zeros((20_000, 1), np.uint8))
    response = client.post("/predict", files={"file": ("tall.png", tall, "image/png")})
    assert response.status_code == 413 and "100:1" in response.json()["detail"]
    assert client.get("/health").status_code == 200


def _peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the server's peak RSS from /proc")
def test_real_server_peak_rss_under_huge_uploads(pc_run, tmp_path):
    """`anomaly serve` answers the issue's tall PNG and an 8000 x 8000 PNG with its peak RSS growing <= 300 MB."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "anomaly", "serve", "--run-dir", str(pc_run), "--port", str(port)],
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    uploads = {}
    for name, size in (("tall.png", (1, 16_000_000)), ("square.png", (8000, 8000))):
        Image.new("L", size).save(tmp_path / name)
        uploads[name] = (tmp_path / name).read_bytes()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            for _ in range(600):
                try:
                    http.post("/predict", files={"file": ("warm.png", encode(np.zeros((64, 64), np.uint8)))})
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            before = _peak_rss_mib(server.pid)
            codes = {name: http.post("/predict", files={"file": (name, data)}).status_code
                     for name, data in uploads.items()}
            growth = _peak_rss_mib(server.pid) - before
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert codes == {"tall.png": 413, "square.png": 200}
    assert growth <= 300, f"peak RSS grew by {growth:.0f} MiB"
    print(f"server peak RSS {before:.0f} MiB -> +{growth:.0f} MiB after {codes}")


# -- 2. every PIL error is a 4xx / exit 2 ------------------------------------------------------------
@pytest.mark.parametrize("data, status", [
    (png_header_only(30_000, 30_000), 413),  # decompression bomb: PIL refuses it on open
    (png_header_only(10_000, 7_000), 413),  # under PIL's limit, over ours
    (b"P5\n1x 1\n255\n\0", 422),  # the malformed PGM
    (encode(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))[:2000], 422),  # truncated
], ids=["bomb", "over-cap", "pgm", "truncated"])
def test_hostile_images_are_refused_with_a_status(client, data, status):
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data, 64)
    assert err.value.status_code == status
    response = client.post("/predict", files={"file": ("x.png", data, "image/png")})
    assert response.status_code == status and "x.png" in response.json()["detail"]


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the corrupt metadata it skips
def test_fuzz_corpus_never_crashes_the_decoder_or_the_service(client):
    corpus = fuzz_corpus(FUZZ_N)
    outcomes = {}
    for data in corpus:
        try:
            image = decode_image(data, 64)
            assert image.shape == (3, 64, 64) and torch.isfinite(image).all()
            outcomes["decoded"] = outcomes.get("decoded", 0) + 1
        except ImageDecodeError as err:
            assert err.status_code in (413, 415, 422)
            outcomes[err.status_code] = outcomes.get(err.status_code, 0) + 1
    statuses = [client.post("/predict", files={"file": (f"{i}.bin", data, "image/png")}).status_code
                for i, data in enumerate(corpus[::5])]
    assert max(statuses) < 500, statuses
    assert outcomes.get("decoded", 0) > 0 and outcomes.get(422, 0) > 0  # the corpus exercises both paths
    print(f"fuzz: {len(corpus)} through the decoder {outcomes}; {len(statuses)} through /predict, 0 >= 500")


def test_bad_images_in_predict_and_fit_exit_2(pc_run, tiny_mvtec, tmp_path, capsys):
    pgm = tmp_path / "x.png"
    pgm.write_bytes(b"P5\n1x 1\n255\n\0")
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--run-dir", str(pc_run), "--device", "cpu", str(pgm)])
    assert exc.value.code == 2 and str(pgm) in capsys.readouterr().err
    bomb = tiny_mvtec / "widget" / "train" / "good" / "000.png"  # the 900-Mpx training image
    bomb.write_bytes(png_header_only(30_000, 30_000))
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--method", "autoencoder", "--data", str(tiny_mvtec), "--category", "widget",
              "--run-dir", str(tmp_path / "run"), "--device", "cpu"])
    assert exc.value.code == 2 and str(bomb) in capsys.readouterr().err


# -- 3. atomic run folders, stale metrics, --resume ---------------------------------------------------
_KILL_FIT = ["-m", "anomaly", "fit", "--method", "autoencoder", "--category", CATEGORY, "--device", "cpu",
             "--image-size", "32", "--epochs", "3", "--set", "base_channels=4", "--set", "latent_dim=8"]


def _fit_and_signal(data: Path, run_dir: Path, sig: int, wait_for: str | None) -> None:
    """Start `anomaly fit` into ``run_dir``; once its staging folder holds ``wait_for``, send ``sig``."""
    process = subprocess.Popen([sys.executable, *_KILL_FIT, "--data", str(data), "--run-dir", str(run_dir),
                                "--seed", "1"], env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while wait_for is not None and process.poll() is None:
        if any((stage / wait_for).exists() for stage in run_dir.parent.glob(f".{run_dir.name}.tmp-*")):
            process.send_signal(sig)
            break
        time.sleep(0.01)
    process.wait(timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("sig, wait_for", [(signal.SIGKILL, "config.json"), (signal.SIGTERM, ""),
                                           (signal.SIGKILL, None)], ids=["kill-mid-fit", "term-at-start", "no-kill"])
def test_a_fit_killed_at_any_moment_leaves_the_old_run_or_a_complete_one(synthetic_root, tmp_path, sig, wait_for):
    run_dir = ae_fit(synthetic_root, tmp_path / "run")
    before = tree_digest(run_dir)
    _fit_and_signal(synthetic_root, run_dir, sig, wait_for)
    after = tree_digest(run_dir)
    if after != before:  # the fit finished before the signal: the new run is complete and whole
        check_run_dir(run_dir)
        assert json.loads(after["config.json"])["seed"] == 1
    assert set(after) - {"datacheck.json"} == set(before)  # `anomaly fit` also keeps its data check
    if sig != signal.SIGKILL:  # an interrupted fit removes its staging folder
        assert not list(tmp_path.glob(".run.tmp-*"))


def test_staging_failure_at_each_step_leaves_the_previous_run(synthetic_root, tmp_path, monkeypatch):
    import anomaly.runs as R

    run_dir = ae_fit(synthetic_root, tmp_path / "run")
    before = tree_digest(run_dir)
    def fail(*args):
        raise OSError("disk full")

    for target in ("write_marker", "_swap_into_place"):
        with monkeypatch.context() as patch:
            patch.setattr(R, target, fail)
            with pytest.raises(OSError, match="disk full"):
                ae_fit(synthetic_root, run_dir, seed=5)
        assert tree_digest(run_dir) == before and not list(tmp_path.glob(".run.tmp-*"))


def test_fit_refuses_to_replace_a_folder_that_is_not_a_run(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not a run folder"):
        with staged_run_dir(tmp_path):
            pass
    assert (tmp_path / "notes.txt").read_text() == "mine"
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for here in (".", ".."):
        with pytest.raises(RunFolderError, match="current directory"):
            with staged_run_dir(here):
                pass


@pytest.mark.slow
def test_refit_drops_stale_metrics_and_resume_refits(synthetic_root, tmp_path, monkeypatch):
    from anomaly.study import benchmark, executors

    run_dir = ae_fit(synthetic_root, tmp_path / CATEGORY / "autoencoder")
    evaluate_run(run_dir, device="cpu")
    old_metrics = (run_dir / "metrics.json").read_bytes()
    assert is_evaluated(run_dir) and load_run(run_dir).metrics is not None
    ae_fit(synthetic_root, run_dir, seed=3)
    assert not (run_dir / "metrics.json").exists() and not is_evaluated(run_dir)
    (run_dir / "metrics.json").write_bytes(old_metrics)  # another model's metrics copied in
    assert load_run(run_dir).metrics is None and not is_evaluated(run_dir)
    calls = []
    monkeypatch.setattr(executors, "fit_and_evaluate", lambda config, run_dir: calls.append(run_dir) or evaluate_run(run_dir))
    benchmark.run_benchmark(synthetic_root, [CATEGORY], ["autoencoder"], tmp_path, device="cpu", isolate=False,
                            resume=True)
    assert len(calls) == 1  # the stale pair was redone
    benchmark.run_benchmark(synthetic_root, [CATEGORY], ["autoencoder"], tmp_path, device="cpu", isolate=False,
                            resume=True)
    assert len(calls) == 1  # now it is evaluated: reused


def test_an_unmarked_or_mixed_folder_is_refused_by_every_command(pc_run, tmp_path, capsys):
    copy = tmp_path / "old"
    shutil.copytree(pc_run, copy)
    (copy / MARKER).unlink()
    image = tmp_path / "x.png"  # an image that exists: predict checks its inputs before the run folder
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    for argv in (["evaluate", "--run-dir", str(copy)], ["predict", "--run-dir", str(copy), str(image)],
                 ["export", "--run-dir", str(copy)]):
        with pytest.raises(SystemExit) as exc:
            main([*argv, *(["--device", "cpu"] if argv[0] != "export" else [])])
        assert exc.value.code == 2 and MARKER in capsys.readouterr().err
    with pytest.raises(RunFolderError, match=MARKER):
        create_app(copy)


# -- 4, 5. everything read from a run folder is validated ----------------------------------------------
def _broken_copy(pc_run: Path, tmp_path: Path, name: str, content: bytes) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(pc_run, copy)
    (copy / name).write_bytes(content)
    if name == "model.pt":  # re-mark, so the check reaches the file itself
        from anomaly.runs import write_marker

        write_marker(copy)
    return copy


@pytest.mark.parametrize("name, content, words", [
    ("threshold.json", b'{"threshold": NaN, "method": "quantile"}', "finite"),
    ("threshold.json", b'{"threshold": "high"}', "finite"),
    ("threshold.json", b"[1, 2]", "JSON object"),
    ("model.pt", b"", "corrupt, truncated"),
    ("model.pt", b"PK\x03\x04 truncated zip", "corrupt, truncated"),
    ("model.json", b'{"config": {}}', "method"),
    ("model.json", b'{"method": "patchcore", "config": {"image_size": "big"}}', "image_size"),
    ("config.json", b"{}", "lacks data, category, method"),
    ("config.json", b"{not json", "not valid JSON"),
])
def test_malformed_run_files_are_named(pc_run, tmp_path, name, content, words):
    copy = _broken_copy(pc_run, tmp_path, name, content)
    with pytest.raises(ValueError) as err:
        load_run(copy)
    assert words in str(err.value) and name in str(err.value)


def test_model_tensors_are_checked(pc_run, tmp_path):
    state = torch.load(pc_run / "model.pt", weights_only=True)
    for bad, words in (({"memory_bank": state["memory_bank"][:, :5]}, "does not match"),
                       ({"memory_bank": state["memory_bank"] * float("nan")}, "NaN"),
                       ({"bank": state["memory_bank"]}, "memory_bank")):
        buffer = io.BytesIO()
        torch.save(bad, buffer)
        copy = _broken_copy(pc_run, tmp_path / words, "model.pt", buffer.getvalue())
        with pytest.raises(ValueError, match=words) as err:
            load_run(copy)
        assert "model.pt" in str(err.value)


def test_a_replaced_model_is_refused(pc_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(pc_run, copy)
    with open(copy / "model.pt", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(RunFolderError, match="changed after the fit"):
        load_run(copy)


# -- 5, 6. arguments checked before the fit --------------------------------------------------------------
@pytest.mark.parametrize("extra, words", [
    (["--folds", "0", "--val-fraction", "0"], "validation split is empty"),  # no cross-fit: a split is needed
    (["--target-frr", "1"], "strictly between 0 and 1"),
    (["--set", "image_size=abc"], 'image_size="abc"'),
    (["--set", "strides=8"], "strides=8"),
    (["--set", "coreset_ratio=true"], "coreset_ratio=true"),
    (["--set", "chunk_size=0"], "chunk_size must be >= 1"),
    (["--set", "weights=WEIGHTS"], "not a PyTorch state_dict"),
    (["--batch-size", "0"], "integer >= 1"),
])
def test_fit_arguments_are_refused_before_the_fit(synthetic_root, tmp_path, capsys, extra, words):
    weights = tmp_path / "weights.txt"
    weights.write_text("not tensors")
    argv = ["fit", "--method", "patchcore", "--data", str(synthetic_root), "--category", CATEGORY,
            "--run-dir", str(tmp_path / "run"), "--device", "cpu", *[a.replace("WEIGHTS", str(weights)) for a in extra]]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.tmp-*"))


def test_one_training_image_is_refused_before_the_fit(tiny_mvtec, tmp_path, capsys):
    for extra in sorted((tiny_mvtec / "widget" / "train" / "good").iterdir())[1:]:
        extra.unlink()
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--method", "autoencoder", "--data", str(tiny_mvtec), "--category", "widget",
              "--run-dir", str(tmp_path / "run"), "--device", "cpu"])
    assert exc.value.code == 2 and "at least 2 train/good images" in capsys.readouterr().err


@pytest.mark.slow
def test_bad_set_value_with_missing_data_exits_2_without_traceback(tmp_path):
    argv = [sys.executable, "-m", "anomaly", "fit", "--method", "patchcore", "--data", "./no-such-data",
            "--category", "x", "--run-dir", str(tmp_path / "r"), "--set", "image_size=abc"]
    out = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 2 and "image_size" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("port", ["99999", "0", "http"])
def test_serve_port_out_of_range_exits_2(port, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--run-dir", "r", "--port", port])
    assert exc.value.code == 2 and "port" in capsys.readouterr().err


# -- typed configuration: every field of every *Config ------------------------------------------------
def _config_classes() -> dict:
    from anomaly.models.autoencoder import AutoencoderConfig
    from anomaly.models.padim import PaDiMConfig
    from anomaly.models.patchcore import PatchCoreConfig

    return {"autoencoder": AutoencoderConfig, "padim": PaDiMConfig, "patchcore": PatchCoreConfig}


# field -> (a value of the wrong type, a value of the right type outside its range or None)
_BAD = {
    "image_size": ("abc", 16), "base_channels": (2.5, 0), "latent_dim": ("x", 0), "epochs": (True, 0),
    "lr": ("fast", 0.0), "batch_size": (None, 0), "seed": (1.5, None), "loss": (1, "l2"), "map": (2, "l2"),
    "smooth_sigma": (True, -1.0), "score": (3, "mean"), "topk": ("x", 1.5), "normalise": (1, None),
    "backbone": (5, "no_such_net"), "weights": (5, "/no/such/file.pt"), "strides": (8, [3]),
    "patch_size": ("3", 2), "n_features": (1.0, 0), "eps": ("small", 0.0), "layer_dim": ("x", 0),
    "coreset_ratio": (True, 2.0), "coreset_min_size": ("x", -1), "sampler": (1, "kmeans"),
    "projection_dim": (1.5, 0), "num_starting_points": ([], 0), "num_neighbors": ("9", 0),
    "chunk_size": (float("nan"), 0),
}


@pytest.mark.parametrize("method", ["autoencoder", "padim", "patchcore"])
def test_every_config_field_refuses_wrong_types_and_values(method):
    import dataclasses

    from anomaly.models import create_detector

    fields = [f.name for f in dataclasses.fields(_config_classes()[method])]
    assert set(fields) <= set(_BAD), f"add a row for {set(fields) - set(_BAD)}"
    for name in fields:
        for value in (v for v in _BAD[name] if v is not None):
            params = {"image_size": 64, name: value} if name != "image_size" else {name: value}
            with pytest.raises((ValueError, FileNotFoundError)) as err:
                create_detector(method, params)
            assert name in str(err.value), (name, value, str(err.value))


# -- 8. Host header ------------------------------------------------------------------------------------
def test_foreign_host_header_gets_400(pc_run, client):
    assert client.get("/health").status_code == 200
    assert client.get("/health", headers={"host": "localhost:8000"}).status_code == 200
    assert client.get("/health", headers={"host": "evil.example.com"}).status_code == 400
    with TestClient(create_app(pc_run, allowed_hosts=["inspect.local"]), base_url="http://inspect.local") as named:
        assert named.get("/health").status_code == 200
        assert named.get("/health", headers={"host": "127.0.0.1"}).status_code == 400


def test_serve_allows_the_bound_host_and_named_hosts():
    from anomaly.station.http_guards import allowed_hosts

    assert allowed_hosts("127.0.0.1") == ["127.0.0.1", "localhost"]
    assert allowed_hosts("192.168.1.5") == ["127.0.0.1", "localhost", "192.168.1.5"]
    assert allowed_hosts("0.0.0.0", ["station.lan"]) == ["127.0.0.1", "localhost", "station.lan"]
    assert allowed_hosts("::1") == ["127.0.0.1", "localhost", "[::1]"]  # as Host headers write IPv6 literals
