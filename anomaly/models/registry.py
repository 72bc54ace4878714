"""The method registry: one :class:`MethodSpec` per detector, declared once next to the detector.

Every list of methods in the package is derived from here (as anomalib registers each model):
the CLI's ``--method`` choices and help, :data:`METHODS`, :data:`BASELINES` and :data:`TRAINED`,
the exportable methods of ``anomaly export``, the report's per-method notebook runs and their
parameters, and the per-method prose of :mod:`anomaly.study.explain` and :mod:`anomaly.study.summaries`.
A detector defined outside the package joins all of them with one call::

    register(MethodSpec("meancolour", MeanColour, "distance of the image's mean colour from the good mean"))

What a detector *can do* (cross-fitting) is declared on its class (``Detector.crossfits``); the
spec reads it from there, so it is declared once. This module imports nothing from the detectors
(they import it), so there is no import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping, Sequence

PROFILES = ("synthetic", "real")  # the report's data profiles (anomaly.study.report.PROFILES)


@dataclass(frozen=True)
class MethodSpec:
    """What the package needs to know about one detector, declared once.

    Attributes:
        name: the CLI's ``--method``, the run folder's ``method`` and the report's notebook suffix.
        detector: the :class:`~anomaly.models.base.Detector` subclass; its ``config_class`` is the config type.
        summary: one line saying what it fits and how it scores (CLI help, tables).
        exportable: ``anomaly export`` can write its forward to ONNX.
        baseline: it learns nothing: the floor every learned method is compared against.
        trained: trained by stochastic gradient descent, so a statement about it must hold over training seeds.
        report: notebook parameters of its report runs (02/03) per data profile (``synthetic``, ``real``);
            absent keys keep the notebooks' defaults.
        notes: ``notes(run_dir, config, n_train) -> markdown``: what this run fitted and how it scores
            (notebook 02, :func:`anomaly.study.explain.method_notes`); ``None``: the summary line.
        fit_lines: ``fit_lines(config, state, n_train) -> [markdown bullet]``: facts about the fitted state
            (``state``: :func:`anomaly.study.run_results.fitted_state_table`) in :func:`anomaly.study.summaries.summarise_fit`.
        score_note: ``score_note(config) -> markdown``: why a flagged image's map may stay below the threshold
            (:func:`anomaly.study.summaries.outline_text`); ``None``: the image score is the map's maximum.
    """

    name: str
    detector: type
    summary: str
    exportable: bool = False
    baseline: bool = False
    trained: bool = False
    report: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    notes: Callable[[Path, dict[str, Any], int], str] | None = None
    fit_lines: Callable[[dict[str, Any], Any, int], list[str]] | None = None
    score_note: Callable[[dict[str, Any]], str] | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"method name {self.name!r} must be a lower-case identifier (it names folders and flags)")
        unknown = sorted(set(self.report) - set(PROFILES))
        if unknown:
            raise ValueError(f"{self.name}: unknown report profile(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(PROFILES)}")
        object.__setattr__(self, "report", MappingProxyType({p: dict(self.report.get(p, {})) for p in PROFILES}))

    @property
    def config_class(self) -> type:
        """The detector's config dataclass (its fields are the method's parameters)."""
        return self.detector.config_class

    @property
    def crossfits(self) -> bool:
        """Whether the detector scores its own training images out of sample (``Detector.crossfits``)."""
        return bool(self.detector.crossfits)


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the registry (in call order) and return it.

    Raises:
        ValueError: another detector class is already registered under ``spec.name``, or the class's
            ``name`` differs from ``spec.name`` (``model.json`` records the class's name).
    """
    if getattr(spec.detector, "name", None) != spec.name:
        raise ValueError(f"{spec.detector.__name__}.name must be {spec.name!r} to be registered as {spec.name!r}")
    old = _REGISTRY.get(spec.name)
    if old is not None and old.detector is not spec.detector:
        raise ValueError(f"method {spec.name!r} is already registered for {old.detector.__name__}")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a method (a plug-in's clean-up); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def method_spec(name: str) -> MethodSpec:
    """The spec of ``name``; ``ValueError`` naming the registered methods otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(_REGISTRY)}") from None


def specs() -> tuple[MethodSpec, ...]:
    """Every registered spec, in registration order (the built-ins first)."""
    return tuple(_REGISTRY.values())


class MethodNames(Sequence[str]):
    """A live, read-only tuple of the registered names whose spec passes ``keep`` (registration order).

    Live so a method registered later (a plug-in) is in every list derived from it; it behaves as a
    tuple for ``in``, iteration, ``len``, indexing, ``index`` and ``", ".join``.
    """

    def __init__(self, keep: Callable[[MethodSpec], bool] = lambda spec: True, doc: str = "",
                 order: Callable[[MethodSpec], Any] | None = None) -> None:
        self._keep, self._order = keep, order
        self.__doc__ = doc

    def _names(self) -> tuple[str, ...]:
        chosen = [s for s in _REGISTRY.values() if self._keep(s)]
        return tuple(s.name for s in (sorted(chosen, key=self._order) if self._order else chosen))

    def __getitem__(self, index: Any) -> Any:
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, (tuple, list, MethodNames)) else other)

    def __hash__(self) -> int:
        return hash(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


METHODS = MethodNames(doc="every registered method")
BASELINES = MethodNames(lambda s: s.baseline,
                        "methods that learn nothing: the floor every comparison is measured against")
# Trained by stochastic gradient descent: their weights move with the training seed and with the machine's
# floating-point kernels, so a statement about them must hold over several seeds (anomaly.study.seeds).
TRAINED = MethodNames(lambda s: s.trained, "methods trained by gradient descent (verdicts must hold over seeds)")
EXPORTABLE = MethodNames(lambda s: s.exportable, "methods whose forward `anomaly export` writes to ONNX")
CROSSFITS = MethodNames(lambda s: s.crossfits, "methods calibrated by cross-fitting by default")
REPORT_METHODS = MethodNames(doc="the report's methods, baselines first (the floor is read before what must beat it)",
                             order=lambda s: not s.baseline)


def methods_help() -> str:
    """One line per method for the CLI's help: ``name: summary`` (+ what it can do)."""
    def tags(s: MethodSpec) -> str:
        capabilities = (("baseline", s.baseline), ("cross-fits", s.crossfits), ("exportable", s.exportable))
        found = [t for t, on in capabilities if on]
        return f" [{', '.join(found)}]" if found else ""

    return "; ".join(f"{s.name}: {s.summary}{tags(s)}" for s in specs())


def get_detector_class(method: str) -> type:
    """The detector class of ``method``; unknown names raise ``ValueError`` listing the registered ones."""
    return method_spec(method).detector
