"""The Ray engine (``predict --engine ray``, ``benchmark --engine ray``): the local engine's rows, on Ray.

Two Ray start-ups for the whole file (CI time): a local Ray in this process (session fixture) and a
real two-node cluster on loopback (``ray start --head`` + ``ray start --address``, one CPU each),
driven from subprocesses. Both are skipped -- with the reason printed by ``-ra`` -- only where Ray
cannot start; every node is stopped in the fixture's teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly.cli import main
from anomaly.station.inspection import inspect_paths, list_images
from anomaly.station.manifest import read_manifest
from anomaly.inference import load_run
from anomaly.station.ray_cluster import plan_resources
from anomaly.station.results_parquet import read_results

ROOT = Path(__file__).resolve().parents[1]
CATEGORY = "screw_like"


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs in this process for the whole session (workers import this checkout)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed")
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), previous]))  # inherited by the workers
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    except Exception as err:  # noqa: BLE001 -- any reason Ray cannot start here is a skip, with the reason
        pytest.skip(f"Ray cannot start on this machine: {err}")
    finally:
        if previous is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = previous
    yield ray  # the engine uses a connected session as it is (anomaly.station.ray_cluster.ray_session)
    ray.shutdown()


@pytest.fixture(scope="session")
def cluster():
    """A two-node Ray cluster on 127.0.0.1 (one CPU per node), stopped -- every process, by id -- at the end."""
    from anomaly.station.ray_cluster import RayUnavailableError, loopback_cluster

    try:
        context = loopback_cluster(nodes=2, cpus_per_node=1, env={"PYTHONPATH": str(ROOT)})
        address, driver_env = context.__enter__()
    except RayUnavailableError as err:
        pytest.skip(f"a two-node Ray cluster cannot start on this machine: {err}")
    try:
        yield address, {**os.environ, **driver_env, "PYTHONPATH": str(ROOT)}
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def run(patchcore_run):
    return load_run(patchcore_run)


@pytest.fixture(scope="module")
def parts(synthetic_root, tmp_path_factory) -> Path:
    """The 14 test images in two sub-folders (same file names in both) and a corrupt file."""
    root = tmp_path_factory.mktemp("ray_parts") / "parts"
    for i, src in enumerate(sorted((synthetic_root / CATEGORY / "test").glob("*/*.png"))):
        target = root / ("a" if i % 2 else "b") / f"{i // 2:03d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, target)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    return root


@pytest.fixture(scope="module")
def local_rows(run, parts, tmp_path_factory) -> pd.DataFrame:
    """The local engine's rows for ``parts`` (batch 4, ONNX): what every Ray run must reproduce."""
    out = tmp_path_factory.mktemp("local") / "local.csv"
    inspect_paths(run, [parts], out, batch_size=4, runtime="onnx", progress=False)
    return read_results(out)


def assert_same_rows(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Same paths in the same order, same verdicts, regions and errors; scores within 1e-6 (relative)."""
    assert list(got["path"]) == list(expected["path"])
    for column in ("is_anomalous", "regions", "error"):
        assert got[column].astype(object).tolist() == expected[column].astype(object).tolist(), column
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-6, equal_nan=True)


def test_plan_leaves_room_for_the_decode_tasks():
    two = plan_resources(2)  # two 1-CPU actors would leave no CPU to decode on: 0.75 each
    assert (two.actors, two.actor_cpus, two.threads) == (2, 0.75, 1)
    assert two.actors * two.actor_cpus + two.decoders * two.decode_cpus <= 2 and two.decoders == 2
    big = plan_resources(64, gpus=4, threads=4, use_gpu=True)
    assert (big.actors, big.actor_cpus, big.actor_gpus) == (16, 3.0, 0.25)
    with pytest.raises(ValueError):
        plan_resources(0)


def test_manifest_reading(tmp_path):
    pd.DataFrame({"id": [1, 2], "path": ["x/a.png", "/abs/b.png"]}).to_parquet(tmp_path / "m.parquet")
    assert read_manifest(tmp_path / "m.parquet") == [str(tmp_path / "x/a.png"), "/abs/b.png"]
    (tmp_path / "bad.csv").write_text("file\na.png\n")
    (tmp_path / "gap.csv").write_text("path\na.png\n\"\"\n")
    for name, message in (("bad.csv", "no 'path' column"), ("gap.csv", "row 2 has no path"), ("m.txt", "no such")):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            read_manifest(tmp_path / name)


@pytest.mark.slow
def test_interrupted_run_resumes_from_a_manifest_to_the_local_engine_rows(ray_local, run, patchcore_run, parts,
                                                                         local_rows, tmp_path, monkeypatch, capsys):
    """Local Ray, CSV and Parquet out: interrupted after 6 rows, resumed through the CLI from a manifest of the
    same images; the outputs hold the local engine's rows (the corrupt file's error row too), each once."""
    from anomaly.station import distributed

    class Crash(KeyboardInterrupt):
        pass

    original, rows = distributed.unwritten, []

    def crash_at_the_seventh_row(sinks, row):
        if len(rows) == 6:
            raise Crash  # as if interrupted in the middle of the second batch
        rows.append(row)
        return original(sinks, row)

    monkeypatch.setattr(distributed, "unwritten", crash_at_the_seventh_row)
    csv_path, parquet = tmp_path / "r.csv", tmp_path / "r.parquet"
    with pytest.raises(Crash):
        distributed.inspect_paths_ray(run, [parts], csv_path, parquet, batch_size=4, runtime="onnx", progress=False)
    monkeypatch.undo()
    assert len(read_results(csv_path)) == 6 and len(read_results(parquet)) == 6  # whole rows only, in both
    manifest = parts / "list.csv"  # paths relative to the manifest's folder
    pd.DataFrame({"path": [p.relative_to(parts).as_posix() for p in list_images([parts])]}).to_csv(manifest, index=False)
    command = ["predict", "--run-dir", str(patchcore_run), "--engine", "ray", "--manifest", str(manifest),
               "--csv", str(csv_path), "--parquet", str(parquet), "--batch-size", "4", "--runtime", "onnx"]
    assert main(command) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["engine"], summary["actors"], summary["skipped"], summary["written"]) == ("ray", 2, 6, 9)
    assert_same_rows(read_results(csv_path), local_rows)
    assert_same_rows(read_results(parquet), local_rows)
    broken = local_rows[local_rows["path"].str.endswith("broken.png")].iloc[0]
    assert np.isnan(broken["score"]) and "broken.png" in broken["error"]  # a corrupt file is an error row
    assert main(command) == 0  # both outputs complete: nothing to do, Ray is not asked
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 15


def test_options_of_the_other_engine_are_refused(patchcore_run, parts, tmp_path, capsys):
    for extra, message in ((["--parquet", str(tmp_path / "p")], "--parquet goes with --engine ray"),
                           (["--engine", "ray"], "give --csv FILE and/or --parquet"),
                           (["--engine", "ray", "--csv", str(tmp_path / "x.csv"), "--manifest",
                             str(tmp_path / "none.csv")], "no such manifest")):
        with pytest.raises(SystemExit) as exc:
            main(["predict", "--run-dir", str(patchcore_run), *extra, str(parts)])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def _predict(address: str, env: dict, parts: Path, *outputs: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "anomaly", "predict", "--run-dir", str(env["RUN_DIR"]),
                             "--engine", "ray", "--address", address, "--batch-size", "1", "--runtime", "onnx",
                             *outputs, str(parts)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_two_node_cluster_rows_and_resume_after_kill_9(cluster, patchcore_run, parts, local_rows, tmp_path):
    """On the real cluster: kill -9 the driver once rows stream in, resume, and get the local engine's rows."""
    address, env = cluster
    env = {**env, "RUN_DIR": str(patchcore_run)}
    csv_path, parquet = tmp_path / "c.csv", tmp_path / "c.parquet"
    outputs = ("--csv", str(csv_path), "--parquet", str(parquet))
    driver = _predict(address, env, parts, *outputs)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and driver.poll() is None:
        if csv_path.exists() and csv_path.read_bytes().count(b"\n") >= 3:  # header + 2 rows
            driver.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    driver.wait(timeout=30)
    assert driver.returncode == -signal.SIGKILL, driver.stderr.read().decode()[-3000:]
    assert 2 <= len(read_results(csv_path)) < len(local_rows)  # killed mid-run
    finished = _predict(address, env, parts, *outputs)
    out, err = finished.communicate(timeout=300)
    assert finished.returncode == 0, err.decode()[-3000:]
    assert_same_rows(read_results(csv_path), local_rows)  # nothing lost, nothing twice
    assert_same_rows(read_results(parquet), local_rows)


@pytest.mark.slow
def test_benchmark_table_is_the_same_on_both_engines(ray_local, synthetic_root, tmp_path):
    from anomaly.study.benchmark import benchmark_markdown, run_benchmark
    from anomaly.study.executors import RayExecutor
    from anomaly.utils import read_json

    grid = dict(data=synthetic_root, categories=[CATEGORY, "texture"], methods=["intensity"], device="cpu",
                params={"intensity.image_size": 64})
    run_benchmark(out=tmp_path / "local", isolate=False, **grid)
    run_benchmark(out=tmp_path / "ray", executor=RayExecutor(), **grid)
    local, ray = (read_json(tmp_path / name / "benchmark.json")["rows"] for name in ("local", "ray"))
    measured = ("fit_seconds", "predict_ms_per_image", "peak_rss_mib", "load_before", "load_after")
    blank = [[{**row, **dict.fromkeys(measured)} for row in rows] for rows in (local, ray)]
    assert benchmark_markdown(blank[0]) == benchmark_markdown(blank[1])  # the table as printed, timings aside
    for a, b in zip(*blank, strict=True):  # the stored values: the same to floating-point rounding
        numbers = [k for k, v in a.items() if isinstance(v, float)]
        assert {k: v for k, v in a.items() if k not in numbers} == {k: v for k, v in b.items() if k not in numbers}
        assert [a[k] for k in numbers] == pytest.approx([b[k] for k in numbers], rel=1e-9)
    assert (tmp_path / "local" / "benchmark.md").read_text().split("\n\n", 1)[1] == \
        (tmp_path / "ray" / "benchmark.md").read_text().split("\n\n", 1)[1]  # the sections below the table
    stamps = sorted(p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("metrics.json"))
    run_benchmark(out=tmp_path / "ray", executor=RayExecutor(), resume=True, **grid)  # evaluated runs are reused
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("metrics.json")) == stamps
