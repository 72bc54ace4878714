"""The typed run configuration (``RunConfig``) and typed detector configs at the CLI: a wrong type or value
is a message naming the key, the value and what is expected (exit code 2), never a traceback."""

from __future__ import annotations

import dataclasses
import json

import pytest

from anomaly.cli import main
from anomaly.config import RunConfig, detector_params
from anomaly.models import METHODS, get_detector_class

BASE = {"data": "d", "category": "c", "method": "patchcore"}
# field -> (a value of the wrong type, a value of the right type outside its range or None)
_BAD = {"data": (3, None), "category": ([1], None), "method": (1, "nope"), "params": ([1], None),
        "device": (0, None), "seed": (1.5, None), "val_fraction": ("x", 1.0), "batch_size": (True, 0),
        "target_frr": ("x", 1.0), "estimator": (1, "magic"), "pixel_fpr": ([0.1], 0.0), "folds": ("3", 1),
        "max_train": (2.5, 0), "good": (3, None), "defective": ([1], None), "masks": (2, None),
        "test_good": (True, None), "test_fraction": ("x", 1.0)}


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(RunConfig)])
def test_every_run_config_field_refuses_wrong_types_and_values(name):
    assert set(RunConfig.field_names()) == set(_BAD)
    for value in (v for v in _BAD[name] if v is not None):
        with pytest.raises(ValueError) as err:
            RunConfig.from_dict({**BASE, name: value})
        message = str(err.value)
        assert name in message and (json.dumps(value) in message or repr(value) in message), (name, message)


def test_none_is_the_one_method_default_sentinel():
    config = RunConfig.from_dict({**BASE, "device": None, "seed": None, "folds": None, "params": None})
    assert config == RunConfig("d", "c", "patchcore")
    assert config.folds is None and config.params == {}
    assert detector_params("padim", None, 3) == {} and detector_params("autoencoder", 64, 3) == {"image_size": 64,
                                                                                                  "epochs": 3}
    with pytest.raises(ValueError, match="needs data"):
        RunConfig.from_dict({"category": "c", "method": "padim"})
    assert RunConfig.from_dict({**BASE, "target_frr": 0.1, "val_fraction": 0}).val_fraction == 0.0  # int -> float


def _wrong_type(hint: str) -> str:
    """A ``--set`` value of the wrong JSON type for a field annotated ``hint``."""
    if "bool" in hint:
        return "3"
    if "tuple" in hint:
        return "8"
    return '"abc"' if "str" not in hint else "3"


@pytest.mark.parametrize("method, name", [(m, f.name) for m in METHODS
                                          for f in dataclasses.fields(get_detector_class(m).config_class)])
def test_every_detector_key_with_a_wrong_type_exits_2_without_traceback(method, name, tmp_path, capsys):
    hint = {f.name: str(f.type) for f in dataclasses.fields(get_detector_class(method).config_class)}[name]
    value = _wrong_type(hint)
    argv = ["fit", "--method", method, "--data", str(tmp_path), "--category", "c", "--run-dir", str(tmp_path / "r"),
            "--device", "cpu", "--set", f"{name}={value}"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and name in err and "expected" in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


def test_detector_params_are_typed_in_the_run_config_and_the_benchmark_checks_before_any_fit(tmp_path, capsys):
    with pytest.raises(ValueError, match="strides=8"):
        RunConfig("d", "c", "patchcore", {"strides": 8})
    argv = ["benchmark", "--data", str(tmp_path), "--categories", "a,b", "--methods", "intensity,padim",
            "--out", str(tmp_path / "out"), "--set", "padim.n_features=abc"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "n_features" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
