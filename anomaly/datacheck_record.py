"""The data check's record (``datacheck.json``), its problems (errors make ``fit`` refuse) and its summary.

:mod:`anomaly.datacheck` fills the record; every sentence here is built from it, so the CLI, the
run folder and notebook 06 say the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal, Sequence

from pydantic import BaseModel

SHOWN = 5  # files named per line
Role = Literal["train", "test"]


class ImageRecord(BaseModel):
    """One image file as the check saw it."""

    path: str
    role: Role  # train: fits (or calibrates) the model; test: only measures it
    defect_type: str
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    exif_rotated: bool = False
    sha256: str | None = None
    phash: str | None = None  # hex
    error: str | None = None


class DuplicateGroup(BaseModel):
    """Files that are the same picture: ``exact`` (same bytes) or ``near`` (re-encoded, resized, re-exposed)."""

    kind: Literal["exact", "near"]
    scope: Literal["within training", "within test", "across training and test"]
    train: list[str]
    test: list[str]
    max_distance: float  # largest 1 - r between linked members (0 for exact)


class CalibrationCheck(BaseModel):
    """Whether the good calibration scores can reach the target false-reject rate."""

    method: str
    kind: Literal["crossfit", "validation"]
    n_scores: int
    target_frr: float
    estimator: str
    rank: int | None  # 1-based rank of the threshold score; None: not reachable
    reachable: bool
    n_needed: int | None  # the fewest scores that reach the target
    smallest_reachable_frr: float | None  # conformal: 1 / (n + 1)


class Problem(BaseModel):
    severity: Literal["error", "warning"]
    code: str
    message: str
    files: list[str] = []


class DataCheck(BaseModel):
    """The ``datacheck.json`` record (:func:`anomaly.datacheck.check_data`); :func:`summary` renders it."""

    category: str
    layout: Literal["mvtec", "folders"]
    roots: dict[str, str | None]
    counts: dict[str, dict[str, int]]  # split -> defect type -> images
    has_masks: bool
    n_masks: int
    sizes: dict[str, int]  # "WxH" -> images
    orientations: dict[str, int]  # landscape / portrait / square, after EXIF rotation
    aspect_ratios: dict[str, int]  # "1.33" (long / short side) -> images
    modes: dict[str, int]
    exif_rotated: int
    unreadable: list[dict[str, str]]
    skipped: list[str]
    blank: list[str]
    duplicates: list[DuplicateGroup]
    images_without_mask: list[str]
    masks_without_image: list[str]
    held_out_good: list[str] | None  # good images drawn for the test (paths below the good folder)
    calibration: CalibrationCheck
    problems: list[Problem]
    n_images: int
    seconds: float

    def errors(self, allow_duplicates: bool = False) -> list[Problem]:
        """Problems that make ``fit`` refuse (cross-split duplicates only unless ``allow_duplicates``)."""
        return [p for p in self.problems if p.severity == "error" and not (allow_duplicates and p.code == "leakage")]

    def write(self, path: str | Path) -> Path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return Path(path)

    @classmethod
    def read(cls, path: str | Path) -> DataCheck:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))




def find_problems(check: DataCheck) -> list[Problem]:
    """Errors (unreadable files, duplicates across training and test, masks that do not match) and warnings."""
    problems = []

    def add(severity: str, code: str, message: str, files: Sequence[str] = ()) -> None:
        problems.append(Problem(severity=severity, code=code, message=message, files=list(files)))

    if check.unreadable:
        add("error", "unreadable", f"{len(check.unreadable)} file(s) cannot be read as images: "
            + "; ".join(f"{u['path']} ({u['error']})" for u in check.unreadable[:SHOWN]),
            [u["path"] for u in check.unreadable])
    for g in check.duplicates:
        pair = f"{names(g.train)} (training) and {names(g.test)} (test)" if g.scope.startswith("across") else \
            names(g.train + g.test)
        what = "identical files" if g.kind == "exact" else "near-duplicates (the same picture re-encoded, resized " \
                                                            "or re-exposed)"
        if g.scope.startswith("across"):
            add("error", "leakage", f"{what} across training and test: {pair}. A test image that the model "
                "has seen inflates every number measured on it: remove one of them", g.train + g.test)
        else:
            add("warning", "duplicates", f"{what} {g.scope}: {pair}", g.train + g.test)
    if check.has_masks and check.images_without_mask:
        add("error", "missing_masks", f"{len(check.images_without_mask)} defective image(s) without a mask: "
            f"{names(check.images_without_mask)}", check.images_without_mask)
    if check.masks_without_image:
        add("error", "orphan_masks", f"{len(check.masks_without_image)} mask(s) without an image: "
            f"{names(check.masks_without_image)}", check.masks_without_image)
    cal = check.calibration
    if not cal.reachable:
        add("warning", "too_few_good", f"{cal.n_scores} good calibration score(s) cannot reach the target "
            f"false-reject rate {cal.target_frr:g} with the {cal.estimator} threshold: it needs at least "
            f"{cal.n_needed}; the threshold falls back to the largest score (add good images, or aim at "
            f"{cal.smallest_reachable_frr or 0:.3g} or more)")
    _layout_warnings(check, add)
    return problems


def _layout_warnings(check: DataCheck, add: Callable[..., None]) -> None:
    if len(check.sizes) > 1:
        add("warning", "mixed_sizes", f"{len(check.sizes)} different image sizes ({_top(check.sizes)}): each is "
            f"letterboxed to the model's square input (aspect kept); parts shown at different scales look different "
            f"to the model")
    if len([k for k in check.orientations if k != "square"]) > 1:
        add("warning", "mixed_orientation", f"landscape and portrait images ({_top(check.orientations)})")
    colour = {m for m in check.modes if m in ("RGB", "RGBA", "P", "CMYK", "YCbCr")}
    if colour and len(check.modes) > len(colour):
        add("warning", "mixed_modes", f"grey and colour images ({_top(check.modes)}): all are read as 3 channels")
    if check.exif_rotated:
        add("warning", "exif_rotation", f"{check.exif_rotated} image(s) carry an EXIF rotation (phone photos)")
    if check.blank:
        add("warning", "blank", f"{len(check.blank)} blank image(s): {names(check.blank)}", check.blank)
    if check.skipped:
        add("warning", "skipped", f"{len(check.skipped)} file(s) skipped, not an image by their extension: "
            f"{names(check.skipped)}", check.skipped)
    n_defective = sum(n for t, n in check.counts.get("test", {}).items() if t != "good")
    if not n_defective:
        add("warning", "no_test", "no defective images: the run is calibrated on the good images but has no test "
            "evaluation (give --defective DIR to measure detection)")


def refusal(check: DataCheck, allow_duplicates: bool = False) -> str | None:
    """Why ``fit`` refuses this data, naming the files (``None``: it does not)."""
    errors = check.errors(allow_duplicates)
    if not errors:
        return None
    hint = "; --allow-duplicates fits anyway with duplicates across training and test" \
        if any(p.code == "leakage" for p in errors) else ""
    return (f"the data check found {len(errors)} problem(s); nothing was fitted:\n"
            + "\n".join(f"  - {p.message}" for p in errors)
            + f"\n(`anomaly check-data` with the same data options writes the full report{hint})")


def summary(check: DataCheck) -> str:
    """A readable, multi-line summary (markdown bullets) of the check."""
    c = check
    test = c.counts.get("test", {})
    defects = {t: n for t, n in test.items() if t != "good"}
    held = len(c.held_out_good or [])
    good_line = f"{c.counts.get('train', {}).get('good', 0)} good images"
    if held:
        good_line += f", of which {held} are held out for the test (a seeded draw, recorded in the run)"
    lines = [f"**Data check of `{c.category}`** ({c.layout} layout, {c.n_images} images, {c.seconds:.1f} s)", "",
             f"- training: {good_line}",
             f"- test: {test.get('good', 0) + held} good, {sum(defects.values())} defective"
             + (f" ({', '.join(f'{t} {n}' for t, n in defects.items())})" if defects else "")
             + (f"; {c.n_masks} masks" if c.has_masks else "; no masks (image-level metrics only)"),
             f"- sizes: {_top(c.sizes)}; aspect ratios: {_top(c.aspect_ratios)}; orientation: {_top(c.orientations)}; "
             f"modes: {_top(c.modes)}",
             f"- unreadable files: {len(c.unreadable)}; exact duplicate groups: "
             f"{sum(g.kind == 'exact' for g in c.duplicates)}; near-duplicate groups: "
             f"{sum(g.kind == 'near' for g in c.duplicates)}, of which across training and test: "
             f"{sum(g.scope.startswith('across') for g in c.duplicates)}",
             f"- calibration: {_calibration(c)}"]
    errors = [p for p in c.problems if p.severity == "error"]
    warnings = [p for p in c.problems if p.severity == "warning"]
    lines += ["", f"**{len(errors)} error(s)**" + (" -- `anomaly fit` refuses this data:" if errors else "")]
    lines += [f"- {p.message}" for p in errors]
    lines += ["", f"**{len(warnings)} warning(s)**" + (":" if warnings else "")]
    lines += [f"- {p.message}" for p in warnings]
    return "\n".join(lines) + "\n"


def _calibration(c: DataCheck) -> str:
    cal = c.calibration
    how = "cross-fitted scores of the good training images" if cal.kind == "crossfit" else \
        "scores of a validation split of the good training images"
    if cal.estimator == "conformal":
        rule = (f"the threshold is the k = ceil((n + 1)(1 - {cal.target_frr:g})) = "
                f"{'%d' % cal.rank if cal.rank else 'n + 1'}-th smallest score")
    else:
        rule = f"the {cal.estimator} threshold is the {cal.rank or 'n + 1'}-th smallest score"
    verdict = "reachable" if cal.reachable else "NOT reachable"
    return (f"n = {cal.n_scores} {how} ({cal.method}); at target false-reject rate {cal.target_frr:g}, {rule}: "
            f"{verdict} (needs n >= {cal.n_needed})")


def names(paths: Sequence[str]) -> str:
    """The first few paths, and how many more."""
    shown = ", ".join(paths[:SHOWN])
    return shown + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def _top(counts: dict[str, int], n: int = 4) -> str:
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{k} ({v})" for k, v in items[:n])
    return text + (f", {len(items) - n} more" if len(items) > n else "") if items else "none"
