"""The report runs every notebook end to end (papermill, tiny synthetic data), and fails loudly when it should."""

from __future__ import annotations

import json

import nbformat
import pytest
from papermill import PapermillExecutionError

from anomaly import cli
from anomaly.study.report import METHODS, build_report, check_parameter, plan_jobs, select_notebooks

# Tiny everything: 64 px, 2 autoencoder epochs, two data-efficiency sizes, one example per case.
TINY = {"image_size": 64, "epochs": 2, "efficiency_sizes": [3], "efficiency_seeds": 2, "n_examples": 2, "n_per_case": 2,
        "per_type": 1, "example_good": 30}
STEMS = (["01_data_exploration"] + [f"02_training_{m}" for m in METHODS] + [f"03_evaluation_{m}" for m in METHODS]
         + ["04_heatmap_gallery", "05_method_comparison", "06_own_parts"])


@pytest.fixture(scope="module")
def report(tmp_path_factory, synthetic_root):
    out, runs = tmp_path_factory.mktemp("report"), tmp_path_factory.mktemp("runs")
    index = build_report(out, data=synthetic_root, category="screw_like", runs_dir=runs, params=TINY)
    return out, runs, index


@pytest.mark.slow
def test_every_notebook_is_executed_and_exported(report):
    out, _, index = report
    assert index == out / "index.html"
    for stem in STEMS:
        nb = nbformat.read(out / f"{stem}.ipynb", as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells), stem
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors, stem
        assert (out / f"{stem}.html").stat().st_size > 10_000, stem


@pytest.mark.slow
def test_notebooks_write_run_folders_and_conclusions(report):
    out, runs, _ = report
    for method in METHODS:
        metrics = json.loads((runs / method / "metrics.json").read_text())
        assert metrics["method"] == method and 0.0 <= metrics["image_auroc"] <= 1.0
    refits = sorted(p.parent.name for p in (runs / "efficiency").glob("*/metrics.json"))
    # 2 seeds x (3 images, the full set of 12): every seed is fitted at every size; seed 0's full set is the
    # run of notebook 02 (same settings), reused
    assert refits == ["patchcore_s0_n0003", "patchcore_s1_n0003", "patchcore_s1_n0012"]
    nb = nbformat.read(out / "03_evaluation_patchcore.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "summarise_metrics" in c.source)  # the conclusions (not the last section)
    conclusion = next(o for o in cell.outputs if "data" in o)["data"]["text/markdown"]
    assert f"{json.loads((runs / 'patchcore' / 'metrics.json').read_text())['image_auroc']:.3f}" in conclusion


def _markdown(nb) -> list[str]:
    return [o["data"]["text/markdown"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "text/markdown" in o.get("data", {})]


@pytest.mark.slow
def test_exercises_are_solved_and_checked_in_the_report(report):
    out, _, _ = report
    for stem in STEMS:
        nb = nbformat.read(out / f"{stem}.ipynb", as_version=4)
        checks = [c for c in nb.cells if "check" in c.metadata.get("tags", [])]
        assert len(checks) >= 2, stem
        for cell in checks:
            text = "".join(o["data"]["text/markdown"] for o in cell.outputs if "text/markdown" in o.get("data", {}))
            assert text.startswith("✅ **Right.**"), (stem, cell.source, text)


@pytest.mark.slow
def test_headers_carry_the_measured_run_time_and_the_text_comes_from_the_records(report):
    out, runs, _ = report
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["seconds"]) == set(STEMS) and timings["machine"]["cores"] >= 1
    for stem in STEMS:
        texts = _markdown(nbformat.read(out / f"{stem}.ipynb", as_version=4))
        header = next(t for t in texts if "What you will learn" in t)
        assert f"{timings['seconds'][stem]:.0f} s at the last build" in header, stem
        assert not any("99th percentile" in t or " nan" in t.lower() for t in texts), stem
        assert any("What you learned" in t for t in texts), stem
    html = (out / "03_evaluation_patchcore.html").read_text()
    assert "at the last build" in html and "not measured yet" not in html
    threshold = json.loads((runs / "patchcore" / "threshold.json").read_text())
    calibration = nbformat.read(out / "03_evaluation_patchcore.ipynb", as_version=4)
    text = next(t for t in _markdown(calibration) if "The conformal rule" in t)
    assert f"α = {threshold['target_frr']:g} with n = {threshold['n_scores']}" in text


@pytest.mark.slow
def test_trained_methods_have_seed_runs_and_the_comparison_holds_verdicts_to_them(report):
    out, runs, index = report
    listed = json.loads((runs / "autoencoder_seeds.json").read_text())["runs"]
    assert listed == ["autoencoder", "autoencoder_seed1", "autoencoder_seed2"]
    assert all((runs / name / "metrics.json").is_file() for name in listed)  # fitted by 02, evaluated by 03
    assert not (runs / "patchcore_seeds.json").exists() or len(json.loads(
        (runs / "patchcore_seeds.json").read_text())["runs"]) == 1
    texts = _markdown(nbformat.read(out / "05_method_comparison.ipynb", as_version=4))
    assert any("patchcore (64 px) − autoencoder (64 px)" in t for t in texts)
    assert "image AUROC over training seeds" in index.read_text()


ALGORITHMS = {"02_training_padim": ("thresholds.calibration_rank", "padim.mahalanobis", "coreset.lazy_greedy",
                                     "patchcore.reweighted_scores"),
              "03_evaluation_padim": ("M.pro_curve",)}


@pytest.mark.slow
def test_each_algorithm_cell_is_asserted_equal_to_the_package(report):
    """The numpy versions (conformal rank, Mahalanobis, greedy k-centre, Eq. 7, PRO) assert equality with the
    package in the cell itself; the report executed them without error (test above)."""
    out, _, _ = report
    for stem, calls in ALGORITHMS.items():
        cells = nbformat.read(out / f"{stem}.ipynb", as_version=4).cells
        for call in calls:
            cell = next(c for c in cells if c.cell_type == "code" and call in c.source)
            assert "assert " in cell.source and cell.metadata["papermill"]["status"] == "completed", (stem, call)
            assert not [o for o in cell.outputs if o.output_type == "error"]


@pytest.mark.slow
def test_index_links_every_notebook_and_lists_metrics(report):
    out, _, index = report
    page = index.read_text()
    for stem in STEMS:
        assert f"href='{stem}.ipynb'" in page and f"href='{stem}.html'" in page
    for method in METHODS:
        assert f"<td>{method}</td>" in page


def test_unknown_parameter_is_an_error(tmp_path, synthetic_root):
    with pytest.raises(ValueError, match=r"unknown notebook parameter\(s\) 'epochz'; valid: .*epochs"):
        build_report(tmp_path, data=synthetic_root, params={"epochz": 3})
    assert not list(tmp_path.iterdir())  # nothing was executed


def test_a_parameter_of_the_wrong_type_is_refused_before_any_notebook_runs(tmp_path, synthetic_root):
    for params, message in [({"seed": "zero"}, r"seed='zero': expected int"),
                            ({"epochs": 2.5}, r"epochs=2.5: expected int or None"),
                            ({"seed": True}, r"seed=True: expected int"),
                            ({"efficiency_sizes": 5}, r"efficiency_sizes=5: expected list")]:
        with pytest.raises(ValueError, match=message):
            build_report(tmp_path, data=synthetic_root, params=params)
    assert not list(tmp_path.iterdir())
    assert check_parameter({"name": "epochs", "help": "int or None: epochs", "inferred_type_name": "None"}, None) is None
    assert check_parameter({"name": "lr", "help": "rate", "inferred_type_name": "float"}, 3) is None


def test_unknown_notebook_is_an_error(tmp_path, synthetic_root):
    with pytest.raises(ValueError, match="unknown notebook '07'"):
        build_report(tmp_path, data=synthetic_root, notebooks=["07"])


@pytest.mark.slow
def test_failing_cell_fails_the_report_with_its_traceback(tmp_path, synthetic_root):
    with pytest.raises(PapermillExecutionError) as info:
        build_report(tmp_path, data=synthetic_root, category="no_such_category", notebooks=["01"])
    assert "no_such_category" in str(info.value)  # the cell's exception, not just "a cell failed"
    assert (tmp_path / "01_data_exploration.ipynb").is_file()  # the failed notebook is kept for inspection


def test_cli_reports_unknown_parameters(tmp_path, synthetic_root, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["report", "--out", str(tmp_path), "--data", str(synthetic_root), "--set", "nope=1"])
    assert info.value.code == 2 and "'nope'" in capsys.readouterr().err


def test_plan_runs_training_and_evaluation_once_per_method():
    jobs = plan_jobs(select_notebooks(["02", "03", "05"]), "d", "c", "runs", "synthetic", {"image_size": 96})
    assert [j.stem for j in jobs] == [f"02_training_{m}" for m in METHODS] + [
        f"03_evaluation_{m}" for m in METHODS] + ["05_method_comparison"]
    assert [j.parameters["run_dir"] for j in jobs[:len(METHODS)]] == [f"runs/{m}" for m in METHODS]
    assert all(j.parameters["image_size"] == 96 for j in jobs if "image_size" in j.parameters)
    assert "image_size" not in jobs[len(METHODS)].parameters  # 03 has no such parameter: not injected


@pytest.mark.slow
def test_training_run_dir_follows_method(tmp_path, synthetic_root):
    """02's run_dir defaults to weights/report/<method> (the None sentinel): changing only method never
    overwrites another method's run."""
    import papermill

    from anomaly.study.explain import run_dir_for
    from anomaly.study.report import notebook_dir

    assert [run_dir_for(m) for m in METHODS] == [f"weights/report/{m}" for m in METHODS]
    assert run_dir_for("padim", "mine") == "mine"
    source = notebook_dir() / "02_training.ipynb"
    assert papermill.inspect_notebook(str(source))["run_dir"]["default"] == "None"
    papermill.execute_notebook(str(source), str(tmp_path / "02.ipynb"), kernel_name="python3",
                               parameters={"data": str(synthetic_root), "method": "intensity", "image_size": 64},
                               cwd=str(tmp_path), progress_bar=False)
    assert (tmp_path / "weights" / "report" / "intensity" / "model.json").is_file()
    assert not (tmp_path / "weights" / "report" / "autoencoder").exists()
