"""Device selection: `--device auto|cpu|cuda` on machines with and without CUDA."""

from __future__ import annotations

import pytest
import torch

from anomaly.utils import resolve_device


@pytest.mark.parametrize("available, expected", [(False, "cpu"), (True, "cuda")])
def test_auto_picks_cuda_only_when_present(monkeypatch, available, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"


def test_cuda_without_a_gpu_and_unknown_devices_fail_clearly(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
