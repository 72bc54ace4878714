"""The two requirement lists (pyproject.toml, environment.yml) agree, and the torch pins stay put."""

import re
import tomllib
from pathlib import Path

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
