"""Hostile files and settings, second round (issue 23): ``--csv`` on files it did not write, the run a CSV
came from, file names that are not UTF-8, FIFOs, API key files, security headers and docs assets, the
export cache, heatmaps outside the run folder, a full disk during a fit, and image sizes."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from anomaly.cli import main
from anomaly.inference import load_run
from anomaly.station.results_csv import COLUMNS, ResultsCsvError, read_done, run_fingerprint
from anomaly.station.service import create_app

REPO = Path(__file__).resolve().parents[1]
LOCAL = "http://127.0.0.1"
NON_UTF8 = os.fsdecode(b"caf\xe9 \xff.png")  # a Latin-1 name and a byte no encoding uses


@pytest.fixture
def parts(tmp_path) -> Path:
    """Two good images, one of them with a file name that is not UTF-8, and a corrupt one named likewise."""
    folder = tmp_path / "parts"
    folder.mkdir()
    Image.new("RGB", (64, 64), (90, 90, 90)).save(folder / "a.png")
    Image.new("RGB", (64, 64), (100, 90, 90)).save(folder / NON_UTF8)
    (folder / os.fsdecode(b"broken \xe9.png")).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    return folder


def predict(run_dir: Path, *argv: str) -> int:
    return main(["predict", "--run-dir", str(run_dir), "--device", "cpu", "--runtime", "torch", *argv])


# -- --csv never rewrites a file it did not write ---------------------------------------------------------
@pytest.mark.parametrize("content", ["KEY=secret\n", "KEY=secret", "line one\nline two\nlast line, no newline",
                                     "path,score,is_anomalous,regions,error\n/x.png,1.0,True,0,\n", "MODEL.PT"],
                         ids=["env-line", "env-no-newline", "multi-line", "old-columns", "model.pt"])
def test_csv_that_is_not_ours_is_refused_byte_identical(patchcore_run, parts, tmp_path, capsys, content):
    target = tmp_path / "target"
    if content == "MODEL.PT":
        shutil.copy(patchcore_run / "model.pt", target)
    else:
        target.write_bytes(content.encode())
    before = target.read_bytes()
    with pytest.raises(SystemExit) as exc:
        predict(patchcore_run, "--csv", str(target), str(parts))
    assert exc.value.code == 2 and "not an inspection CSV" in capsys.readouterr().err
    assert target.read_bytes() == before


def test_csv_of_another_run_is_refused(patchcore_run, parts, tmp_path, capsys):
    from anomaly.pipeline import rethreshold_run

    out = tmp_path / "r.csv"
    assert predict(patchcore_run, "--csv", str(out), str(parts / "a.png")) == 0
    other = tmp_path / "other"
    shutil.copytree(patchcore_run, other)
    rethreshold_run(other, target_frr=0.2)  # same model.pt, another threshold: another verdict scale
    assert run_fingerprint(load_run(other)) != run_fingerprint(load_run(patchcore_run))
    before = out.read_bytes()
    with pytest.raises(SystemExit) as exc:
        predict(other, "--csv", str(out), str(parts))
    assert exc.value.code == 2 and "another run" in capsys.readouterr().err and out.read_bytes() == before
    assert predict(patchcore_run, "--csv", str(out), str(parts)) == 0  # the run that wrote it resumes
    rows = pd.read_csv(out)
    assert list(rows.columns) == list(COLUMNS) and len(rows) == 3
    assert set(rows["run"]) == {run_fingerprint(load_run(patchcore_run))}


def test_a_cut_row_is_dropped_only_from_our_csv(patchcore_run, parts, tmp_path):
    out = tmp_path / "r.csv"
    assert predict(patchcore_run, "--csv", str(out), str(parts / "a.png")) == 0
    whole = out.read_bytes()
    out.write_bytes(whole + b"/some/path.png,0.1")  # killed mid-row
    assert read_done(out) == read_done(out)  # reading changes nothing
    assert out.read_bytes() == whole + b"/some/path.png,0.1"
    assert predict(patchcore_run, "--csv", str(out), str(parts)) == 0
    assert b"/some/path.png" not in out.read_bytes() and len(pd.read_csv(out)) == 3


def test_special_files_as_csv_are_refused(patchcore_run, parts, tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (fifo, tmp_path):
        with pytest.raises(SystemExit) as exc:
            predict(patchcore_run, "--csv", str(target), str(parts))
        assert exc.value.code == 2 and "regular files" in capsys.readouterr().err
    with pytest.raises(ResultsCsvError):
        read_done(fifo)


# -- file names that are not UTF-8 -------------------------------------------------------------------------
def test_non_utf8_names_are_scored_reported_escaped_and_resumed(patchcore_run, parts, tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert predict(patchcore_run, "--csv", str(out), "--heatmaps", str(tmp_path / "h"), str(parts)) == 0
    rows = pd.read_csv(out, encoding="utf-8").set_index("path")  # valid UTF-8: pandas reads it as it is
    escaped = str(parts / "caf\\xe9 \\xff.png")
    assert np.isfinite(rows.loc[escaped, "score"]) and pd.isna(rows.loc[escaped, "error"])
    broken = str(parts / "broken \\xe9.png")
    assert broken in rows["error"][broken]  # the error names the file, escaped
    assert len(list((tmp_path / "h").iterdir())) == 2
    capsys.readouterr()
    assert predict(patchcore_run, "--csv", str(out), str(parts)) == 0  # resumed: nothing left to do
    assert '"written": 0' in capsys.readouterr().out and len(pd.read_csv(out)) == 3
    assert predict(patchcore_run, str(parts / NON_UTF8)) == 0  # JSON mode: one valid JSON line, escaped
    import json

    assert json.loads(capsys.readouterr().out)["path"] == escaped


def test_same_escaped_text_twice_is_resumed_by_count(patchcore_run, tmp_path):
    """A name holding a literal backslash-x sequence and a non-UTF-8 name can print alike; both are scored."""
    folder = tmp_path / "twins"
    folder.mkdir()
    for name in (os.fsdecode(b"x\xe9.png"), "x\\xe9.png"):
        Image.new("L", (64, 64), 77).save(folder / name)
    out = tmp_path / "r.csv"
    assert predict(patchcore_run, "--csv", str(out), str(folder)) == 0
    assert predict(patchcore_run, "--csv", str(out), str(folder)) == 0
    assert len(pd.read_csv(out)) == 2


# -- FIFOs and other non-regular files -------------------------------------------------------------------------
@pytest.mark.slow
def test_an_explicit_fifo_is_refused_without_hanging(patchcore_run, parts, tmp_path, capsys):
    fifo = tmp_path / "camera.png"
    os.mkfifo(fifo)
    argv = [sys.executable, "-m", "anomaly", "predict", "--run-dir", str(patchcore_run), "--device", "cpu", str(fifo)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 2 and "FIFO" in out.stderr and str(fifo) in out.stderr, out.stderr
    with pytest.raises(SystemExit) as exc:  # the --csv mode lists its inputs the same way (checked after: no hang)
        predict(patchcore_run, "--csv", str(tmp_path / "r.csv"), str(fifo))
    assert exc.value.code == 2 and "FIFO" in capsys.readouterr().err and not (tmp_path / "r.csv").exists()
    os.mkfifo(parts / "inside.png")  # inside a folder: not a regular file, not listed
    assert predict(patchcore_run, "--csv", str(tmp_path / "f.csv"), str(parts)) == 0
    assert len(pd.read_csv(tmp_path / "f.csv")) == 3


# -- API key files -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, words", [(b"\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e\x0f\x10\x11\x12\x13",
                                             "control characters"),
                                            (bytes(range(128, 200)), "printable ASCII"),
                                            (b"k" * 5000, "larger than")])
def test_api_key_files_must_be_printable_text(tmp_path, content, words):
    from anomaly.station.web import read_api_key_file

    path = tmp_path / "key"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=words) as err:
        read_api_key_file(path)
    assert str(path) in str(err.value)


def test_api_key_fifo_is_refused(tmp_path, capsys):
    fifo = tmp_path / "key"
    os.mkfifo(fifo)
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--run-dir", str(tmp_path), "--api-key-file", str(fifo)])
    assert exc.value.code == 2 and "FIFO" in capsys.readouterr().err


# -- security headers, docs assets ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(patchcore_run) -> TestClient:
    with TestClient(create_app(patchcore_run), base_url=LOCAL) as test_client:
        yield test_client


def test_every_answer_has_security_headers(client):
    for response in (client.get("/"), client.get("/docs"), client.get("/health"), client.get("/nowhere"),
                     client.get("/health", headers={"host": "evil.example"})):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    page = client.get("/").headers["content-security-policy"]
    assert "default-src 'none'" in page and "'unsafe-inline'" not in page and "script-src 'self' 'sha256-" in page
    assert "'unsafe-eval'" not in client.get("/docs").headers["content-security-policy"]


def test_only_the_docs_assets_the_page_uses_are_served(client):
    from anomaly.station.web import DOCS_ASSETS, DOCS_FILES

    for name in DOCS_FILES:
        assert client.get(f"{DOCS_ASSETS}/{name}").status_code == 200
    for name in ("index.html", "oauth2-redirect.html", "swagger-ui-bundle.js.map", "swagger-initializer.js",
                 "../index.html", "swagger-ui.css.map"):
        assert client.get(f"{DOCS_ASSETS}/{name}").status_code == 404, name


# -- the export cache and heatmaps ------------------------------------------------------------------------------------
def test_onnx_cache_is_keyed_on_content_not_path(patchcore_run, tmp_path, monkeypatch):
    import anomaly.export as E

    run_dir = tmp_path / "run"
    shutil.copytree(patchcore_run, run_dir)
    E.load_onnx_scorer(load_run(run_dir))  # exported once
    (tmp_path / "link").symlink_to(run_dir)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(E, "export_run", lambda run: pytest.fail(f"re-exported for {run.run_dir}"))
    for name in (tmp_path / "link", Path("run"), Path("link")):
        E.load_onnx_scorer(load_run(name))
    with open(run_dir / "model.onnx", "ab") as handle:  # another graph: exported again
        handle.write(b"\0")
    monkeypatch.undo()
    E.load_onnx_scorer(load_run(run_dir))


def test_json_predict_writes_nothing_into_the_run_folder(patchcore_run, parts, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(patchcore_run, run_dir)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    assert predict(run_dir, str(parts / "a.png")) == 0
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
    assert '"heatmap": null' in capsys.readouterr().out


# -- a full disk during a fit ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["torch", "enospc"])
def test_a_full_disk_during_a_fit_is_a_message_and_the_old_run_stays(tiny_mvtec, tmp_path, monkeypatch, capsys,
                                                                       failure):
    import torch

    from anomaly.models import base

    argv = ["fit", "--method", "autoencoder", "--data", str(tiny_mvtec), "--category", "widget", "--run-dir",
            str(tmp_path / "run"), "--device", "cpu", "--epochs", "1", "--image-size", "32"]
    assert main(argv) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}

    def full(*args, **kwargs):
        if failure == "torch":  # what torch.save says on a full disk (measured on a 1 MB tmpfs)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(base.torch, "save", full)
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--seed", "3"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err and "previous run" in err and "free" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    assert not list(tmp_path.glob(".run.tmp-*"))


# -- image sizes -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [["--image-size", "100000"], ["--set", "image_size=100000"]])
def test_an_image_size_over_the_bound_is_a_message(synthetic_root, tmp_path, capsys, extra):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--method", "patchcore", "--data", str(synthetic_root), "--category", "screw_like",
              "--run-dir", str(tmp_path / "run"), "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "2048" in err and "Traceback" not in err
