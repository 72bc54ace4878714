"""The two requirement lists (pyproject.toml, environment.yml) agree, and the torch pins stay put."""

import re
import shutil
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return dict(r.split("==") for r in reqs)


def _environment_pins() -> dict[str, str]:
    pins = re.findall(r"^\s+- ([A-Za-z0-9_.\-]+)==([^\s#]+)\s*$", (ROOT / "environment.yml").read_text(), re.M)
    return dict(pins)


def test_every_requirement_is_pinned_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"] + project["optional-dependencies"]["dev"]:
        assert "==" in req, f"{req} is not pinned with =="


def test_pyproject_and_environment_agree():
    assert _pyproject_pins() == _environment_pins()


def test_torch_pins():
    pins = _pyproject_pins()
    assert pins["torch"] == "2.14.1"
    assert pins["torchvision"] == "0.29.1"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make report" in readme and "make test" in readme


def test_every_package_is_listed():
    """pyproject lists packages explicitly (for the notebooks' package-dir): a new subpackage must be added."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "anomaly").rglob("__init__.py")}
    assert listed == found | {"anomaly.notebooks"}


@pytest.mark.slow
def test_wheel_ships_the_report_notebooks(tmp_path):
    """`anomaly report` works from an installed wheel: the notebooks are package data (anomaly/notebooks)."""
    import importlib.metadata
    import importlib.util
    import subprocess
    import sys
    import zipfile

    try:
        setuptools_version = tuple(int(x) for x in importlib.metadata.version("setuptools").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        setuptools_version = (0, 0)
    if setuptools_version < (70, 1) and importlib.util.find_spec("wheel") is None:  # offline: no build isolation
        pytest.skip("this environment's setuptools cannot build wheels offline (needs >= 70.1 or `wheel`)")
    src = tmp_path / "src"  # build a copy: a build leaves build/ and *.egg-info behind
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("anomaly", "notebooks"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("anomaly-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"anomaly/notebooks/{p.name}" for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")} <= names
    assert "anomaly/study/report.py" in names and "anomaly/models/patchcore.py" in names


def test_report_uses_installed_notebooks_or_says_where_it_looked(tmp_path, monkeypatch, capsys):
    from anomaly import cli
    from anomaly.study import report

    site = tmp_path / "site-packages"  # an installed package: no source checkout around it
    monkeypatch.setattr(report, "REPO_ROOT", site)
    monkeypatch.setattr(report, "PACKAGED_NOTEBOOKS", site / "anomaly" / "notebooks")
    assert report.source_checkout() is None
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["report", "--out", str(tmp_path / "out"), "--data", str(tmp_path), "--notebooks", "01"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "no report notebooks" in err and str(site / "anomaly" / "notebooks") in err
    shutil.copytree(ROOT / "notebooks", site / "anomaly" / "notebooks")
    assert report.notebook_dir() == site / "anomaly" / "notebooks"
    assert [p.stem for p in report.select_notebooks(["01"])] == ["01_data_exploration"]
    assert report._rel(tmp_path / "data") == str((tmp_path / "data").resolve())  # absolute: cwd is the user's


def test_requires_python_is_what_the_pins_and_the_code_need():
    """requires-python's floor = environment.yml's python = the highest floor of the pinned packages (and 3.11
    for tomllib, which these tests import); an older interpreter would fail at install, not at run time."""
    import importlib.metadata

    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floor = re.fullmatch(r">=(3\.\d+)", project["requires-python"]).group(1)
    assert re.search(rf"^\s+- python={re.escape(floor)}\s*$", (ROOT / "environment.yml").read_text(), re.M)
    floors = {}
    for name in _pyproject_pins():
        try:
            spec = importlib.metadata.metadata(name).get("Requires-Python")
        except importlib.metadata.PackageNotFoundError:
            continue
        if spec:
            floors[name] = spec
            assert f"{floor}.0" in SpecifierSet(spec), f"{name} needs Python {spec}, requires-python says >={floor}"
    needed = max([(3, 11), *(tuple(int(x) for x in m.split(".")) for s in floors.values()
                             for m in re.findall(r">=\s*(3\.\d+)", s))])
    assert floor == f"{needed[0]}.{needed[1]}", f"the pins need Python >= {needed}, requires-python says >={floor}"
