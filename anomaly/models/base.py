"""The one interface every detector shares (autoencoder, PaDiM, PatchCore).

A detector is fitted on good images only and returns, for a batch of images,
one anomaly score per image and one anomaly map per image at the input's resolution.

One forward per detector (as anomalib's ``torch_model``): each detector's inference is one
``torch.nn.Module``, ``detector.model``, holding what was fitted as buffers (PatchCore's memory
bank, PaDiM's means and inverse covariances, the autoencoder's network and normalisation), whose
``forward(images (B, 3, S, S)) -> (scores (B,), maps (B, S, S))`` is both what
:meth:`Detector.predict` runs (between a resize to S and back) and the graph ``anomaly export``
writes to ONNX. There is no second copy of the scoring to drift.
On disk a detector is ``model.json`` (method + config) and ``model.pt`` (a dict of
tensors loaded with ``weights_only=True``) -- never a pickled module.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from anomaly.geometry import letterbox_batch, maps_to_input
from anomaly.utils import make_config, resolve_device

MODEL_JSON = "model.json"
MODEL_STATE = "model.pt"
MAX_IMAGE_SIZE = 2048  # px; twice MVTec AD's largest images. PatchCore at 2048 px holds 65,536 patches an image


def check_image_size(value: int, minimum: int, multiple: int = 1) -> None:
    """ValueError unless ``minimum <= value <= MAX_IMAGE_SIZE`` and a multiple of ``multiple``: every
    config's ``image_size`` check, so a typo (100000) is a message before any memory is asked for."""
    if not minimum <= value <= MAX_IMAGE_SIZE or value % multiple:
        also = f"a multiple of {multiple} " if multiple > 1 else ""
        raise ValueError(f"image_size must be {also}from {minimum} to {MAX_IMAGE_SIZE} px, got {value}"
                         + (" (the model's input side, not the images' size: they are resized to it)"
                            if value > MAX_IMAGE_SIZE else ""))


@dataclass
class Prediction:
    """What every detector returns.

    Attributes:
        image_scores: (B,) float32, higher = more anomalous.
        anomaly_maps: (B, H, W) float32 at the input images' resolution.
    """

    image_scores: np.ndarray
    anomaly_maps: np.ndarray


class Detector(ABC):
    """Base class: ``fit(train_loader) -> self``, ``predict(images) -> Prediction``, ``save``/``load``.

    Subclasses set ``name`` (the CLI's ``--method``) and ``config_class`` (a dataclass whose
    fields are the detector's parameters, including ``image_size``), build ``self.model`` (the
    inference module, see the module docstring; it has a ``fitted`` property) and implement
    ``_fit``, ``state_dict`` and ``load_state_dict``.

    Cross-fitting is a declared capability: a detector that can score its own training images out of
    sample sets ``crossfits = True`` and implements :meth:`fit_crossfit` (checked when the class is
    defined); the calibration then uses it instead of a validation split.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    crossfits: ClassVar[bool] = False
    model: nn.Module

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.crossfits and cls.fit_crossfit is Detector.fit_crossfit:
            raise TypeError(f"{cls.__name__} declares crossfits = True but does not implement fit_crossfit")

    def __init__(self, config: Any = None, device: str | torch.device = "cpu") -> None:
        if config is None:
            config = self.config_class()
        elif isinstance(config, dict):
            config = make_config(self.config_class, config)
        self.config = config
        self.device = device if isinstance(device, torch.device) else resolve_device(device)

    # -- the interface -------------------------------------------------------------------------
    def fit(self, train_loader: DataLoader) -> "Detector":
        """Fit on good images. ``train_loader`` yields dicts with ``image`` (B, 3, S, S) in [0, 1]."""
        self._fit(train_loader)
        return self

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> Prediction:
        """Score a batch with ``self.model``.

        Args:
            images: (B, 3, H, W) float in [0, 1]; resized to ``config.image_size`` S for the model.

        Returns:
            Prediction with scores (B,) and maps (B, H, W) at the input's H, W.

        Raises:
            ValueError: not a (B, 3, H, W) batch. RuntimeError: the detector is not fitted.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if not self.model.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: predict called before fit (or load)")
        size = int(self.config.image_size)
        x = letterbox_batch(images.to(self.device, torch.float32), size)  # (B, 3, S, S), aspect kept
        if self.model.training:  # eval() walks every submodule (~0.5 ms for a backbone): only when needed
            self.model.eval()
        scores, maps = self.model(x)  # (B,), (B, S, S)
        maps = maps_to_input(maps, tuple(images.shape[-2:]), size)  # (B, H, W) on the input's pixels
        return Prediction(scores.float().cpu().numpy(), maps.float().cpu().numpy())

    def fit_crossfit(self, train_loader: DataLoader, folds: int = 5, seed: int = 0) -> Prediction:
        """Fit on every image of ``train_loader`` AND score each one with the model fitted without its fold.

        Only for detectors that declare ``crossfits = True``; the others raise ``NotImplementedError``.

        Args:
            train_loader: unshuffled dict batches with ``image`` (B, 3, S, S) and ``index`` (B,).
            folds: number of folds (>= 2). seed: seeds the fold assignment (:func:`fold_ids`).

        Returns:
            Prediction with out-of-sample scores (n,) and maps (n, S, S), row i = dataset index i.
        """
        raise NotImplementedError(f"{self.name} cannot be cross-fitted (crossfits is False)")

    def save(self, directory: str | Path) -> None:
        """Write ``model.json`` and ``model.pt`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"method": self.name, "config": dataclasses.asdict(self.config)}
        (directory / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        torch.save(state, directory / MODEL_STATE)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "Detector":
        """Rebuild a saved detector of this class (:func:`anomaly.models.load_detector` picks the class from
        ``model.json``'s method).

        Raises:
            FileNotFoundError: no ``model.json``.
            ValueError: a malformed ``model.json`` or a ``model.pt`` that is not this model's finite
                tensors of the right shapes; the message names the file.
        """
        if cls is Detector:
            raise TypeError("Detector.load needs a detector class: anomaly.models.load_detector picks it from model.json")
        directory = Path(directory)
        meta_path = directory / MODEL_JSON
        meta = read_model_meta(directory)
        try:
            detector = cls(meta["config"], device=device)
        except ValueError as err:
            raise ValueError(f"{meta_path}: {err}") from None
        state_path = directory / MODEL_STATE
        state = _read_state(state_path)
        try:
            detector.load_state_dict(state)
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            detail = " ".join(str(err).split())[:300]
            raise ValueError(f"{state_path} does not fit the {detector.name} model of {meta_path}: {detail}") from None
        return detector

    def _check_state(self, state: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> None:
        """Raise ValueError unless ``state[key]`` has shape ``shapes[key]`` for every key."""
        for key, shape in shapes.items():
            if key not in state:
                raise ValueError(f"no {key!r} tensor")
            if tuple(state[key].shape) != tuple(shape):
                raise ValueError(f"{key!r} has shape {tuple(state[key].shape)}, expected {tuple(shape)}")

    # -- what subclasses implement ----------------------------------------------------------------
    @abstractmethod
    def _fit(self, train_loader: DataLoader) -> None: ...

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


def model_buffer(name: str, doc: str) -> property:
    """A detector attribute that reads and writes the buffer ``name`` of its inference module
    ``self.model`` (``None`` stays ``None``; tensors are stored as float32 on the detector's device)."""

    def get(self: Detector) -> torch.Tensor | None:
        return getattr(self.model, name)

    def set_(self: Detector, value: torch.Tensor | None) -> None:
        setattr(self.model, name, None if value is None else value.to(self.device, torch.float32))

    return property(get, set_, doc=doc)


def read_model_meta(directory: str | Path) -> dict[str, Any]:
    """``model.json`` of ``directory``: ``{"method": ..., "config": {...}}``; the errors name the file.

    Raises:
        FileNotFoundError: no ``model.json``.
        ValueError: not valid JSON, or not that shape.
    """
    directory = Path(directory)
    meta_path = directory / MODEL_JSON
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: is {directory} a run folder written by `anomaly fit`?")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as err:
        raise ValueError(f"{meta_path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or "method" not in meta or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{meta_path} must hold {{\"method\": ..., \"config\": {{...}}}}")
    return meta


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """``model.pt`` as a dict of finite tensors; ValueError names the file when it is not one."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # empty, truncated or foreign files: torch raises EOFError, RuntimeError, pickle errors
        raise ValueError(f"{path} is corrupt, truncated or not a PyTorch tensor file (torch.load fails); "
                         f"run `anomaly fit` again") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} must hold a dict of tensors, got {type(state).__name__}")
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{path}: tensor {key!r} holds NaN or infinite values")
    return state


# -- cross-fitting (out-of-sample scores of the training images) -------------------------------------
def fold_ids(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """(n,) fold of every training image: a seeded permutation dealt round-robin into ``folds`` folds."""
    if not 2 <= folds <= n:
        raise ValueError(f"cross-fitting needs 2 <= folds <= the number of training images ({n}), got {folds}")
    ids = np.empty(n, dtype=np.int64)
    ids[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
    return ids


def score_by_fold(detector: Detector, loader: DataLoader, ids: np.ndarray, activate: Any) -> Prediction:
    """Score every image of ``loader`` with the state of its fold, in dataset-index order.

    Args:
        detector: a detector whose ``predict`` uses the state ``activate(fold)`` installs.
        loader: dict batches with ``image`` (B, 3, S, S) and ``index`` (B,) dataset indices.
        ids: (n,) fold of every dataset index (:func:`fold_ids`).
        activate: ``activate(fold)`` installs the state fitted WITHOUT that fold.

    Returns:
        Prediction with scores (n,) and maps (n, S, S), row i = dataset index i.
    """
    scores: dict[int, float] = {}
    maps: dict[int, np.ndarray] = {}
    for batch in loader:
        index = np.asarray(batch["index"])  # (B,)
        for fold in np.unique(ids[index]):
            rows = np.flatnonzero(ids[index] == fold)
            activate(int(fold))
            out = detector.predict(batch["image"][torch.as_tensor(rows)])
            for r, s, m in zip(index[rows], out.image_scores, out.anomaly_maps):
                scores[int(r)], maps[int(r)] = float(s), m
    order = sorted(scores)
    return Prediction(np.array([scores[i] for i in order], dtype=np.float32), np.stack([maps[i] for i in order]))
