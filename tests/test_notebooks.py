"""The report runs every notebook end to end (papermill, tiny synthetic data), and fails loudly when it should."""

from __future__ import annotations

import json

import nbformat
import pytest
from papermill import PapermillExecutionError

from anomaly import cli
from anomaly.report import METHODS, build_report, check_parameter, plan_jobs, select_notebooks

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


def test_every_notebook_is_executed_and_exported(report):
    out, _, index = report
    assert index == out / "index.html"
    for stem in STEMS:
        nb = nbformat.read(out / f"{stem}.ipynb", as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells), stem
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors, stem
        assert (out / f"{stem}.html").stat().st_size > 10_000, stem


def test_notebooks_write_run_folders_and_conclusions(report):
    out, runs, _ = report
    for method in METHODS:
        metrics = json.loads((runs / method / "metrics.json").read_text())
        assert metrics["method"] == method and 0.0 <= metrics["image_auroc"] <= 1.0
    refits = sorted(p.parent.name for p in (runs / "efficiency").glob("*/metrics.json"))
    # 2 seeds x 3 images; the full set (all 12: PatchCore is cross-fitted) has no subset to draw, so every seed
    # reuses runs/patchcore instead of refitting it
    assert refits == ["patchcore_s0_n0003", "patchcore_s1_n0003"]
    nb = nbformat.read(out / "03_evaluation_patchcore.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "summarise_metrics" in c.source)  # the conclusions (not the last section)
    conclusion = next(o for o in cell.outputs if "data" in o)["data"]["text/markdown"]
    assert f"{json.loads((runs / 'patchcore' / 'metrics.json').read_text())['image_auroc']:.3f}" in conclusion


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


def test_training_run_dir_follows_method(tmp_path, synthetic_root):
    """02's run_dir defaults to weights/report/<method> (the None sentinel): changing only method never
    overwrites another method's run."""
    import papermill

    from anomaly.explain import run_dir_for
    from anomaly.report import notebook_dir

    assert [run_dir_for(m) for m in METHODS] == [f"weights/report/{m}" for m in METHODS]
    assert run_dir_for("padim", "mine") == "mine"
    source = notebook_dir() / "02_training.ipynb"
    assert papermill.inspect_notebook(str(source))["run_dir"]["default"] == "None"
    papermill.execute_notebook(str(source), str(tmp_path / "02.ipynb"), kernel_name="python3",
                               parameters={"data": str(synthetic_root), "method": "intensity", "image_size": 64},
                               cwd=str(tmp_path), progress_bar=False)
    assert (tmp_path / "weights" / "report" / "intensity" / "model.json").is_file()
    assert not (tmp_path / "weights" / "report" / "autoencoder").exists()
