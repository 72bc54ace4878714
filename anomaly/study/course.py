"""The notebooks as a course: each lesson's header and recap, the glossary, and the build's run-time record.

- :data:`LESSONS`: per notebook (source stem), what a student will learn, what they need first, the
  glossary terms it uses and a closing recap; :func:`register` adds one (notebook 06 and later).
- :func:`header` renders a lesson's header as markdown, with the run time measured at the last build
  and the machine it ran on, read from the build's own record (:data:`TIMINGS_FILE`, written by
  ``anomaly report``); :func:`recap` renders the closing summary; :func:`glossary_markdown` the glossary
  (the same text as ``docs/course.md``; a test keeps them equal).
- :func:`write_timings` writes that record; :func:`stamp_run_times` puts the fresh measurement into the
  headers of the notebooks just executed (papermill runs a header before its notebook has a run time).

Lessons and glossary are words only: every number a header shows is read from the timings record.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

TIMINGS_FILE = "timings.json"
DEFAULT_BUILD_RECORD = f"reports/{TIMINGS_FILE}"
_RUN_TIME = re.compile(r"<!--run-time-->.*?<!--/run-time-->", re.DOTALL)


@dataclass(frozen=True)
class Lesson:
    """One notebook as a lesson: its title, goals, prerequisites, glossary terms and closing recap."""

    title: str
    learn: tuple[str, ...]
    needs: tuple[str, ...]
    terms: tuple[str, ...]
    recap: tuple[str, ...]


GLOSSARY: dict[str, str] = {
    "FRR": "false-reject rate: the share of GOOD parts a threshold rejects. The line's cost of caution; the "
           "threshold is set for a target FRR (alpha) from good images only.",
    "recall": "the share of DEFECTIVE parts a threshold catches (1 - recall escape to the customer). It needs "
              "defective images to measure, so it is only ever measured on the test set.",
    "precision": "the share of flagged parts that are really defective. It depends on how common defects are "
                 "on the line; with no part flagged it is undefined.",
    "AUROC": "area under the ROC curve = the probability that a random defective image scores above a random "
             "good one (Mann-Whitney); 0.5 is chance, 1 is perfect; no threshold needed.",
    "PRO / AUPRO": "per-region overlap: at a pixel threshold, the mean over ground-truth defect regions of the "
                   "share of each region flagged, so a small scratch counts as much as a large dent. AUPRO is the "
                   "area under PRO against the pixel false-positive rate up to a limit (0.3 or 0.05), divided by "
                   "that limit.",
    "coreset": "PatchCore's thinned memory bank: a subset of the good patch features chosen greedily (k-centre: "
               "each new point is the one farthest from all chosen so far) so that every kind of good patch "
               "stays close to some bank feature.",
    "Mahalanobis distance": "PaDiM's score: the distance of a patch feature from the mean of the good features at "
                            "its position, measured in units of their covariance.",
    "conformal threshold": "the k-th smallest of n good calibration scores with k = ceil((n + 1)(1 - alpha)); "
                           "with exchangeable good scores it rejects at most a share alpha of good parts on "
                           "average. When k > n the target cannot be reached with n scores.",
    "cross-fitting": "scoring every good training image with a model fitted WITHOUT it (split into folds, fit on "
                     "the others), so the calibration scores are out-of-sample while the deployed model still "
                     "sees every image.",
    "calibration scores": "out-of-sample scores of good images (cross-fitted, or a held-out validation split) "
                          "that the threshold is set from; never test images.",
    "bootstrap interval": "the range (2.5th-97.5th percentile) of a metric over resamples of the test images "
                          "drawn with replacement; it covers which test images were drawn, not training randomness.",
    "paired margin": "metric(A) - metric(B) on the same resamples of the same test images; a difference is called "
                     "real only when its interval excludes 0.",
    "seed spread": "the mean and range of a trained model's metric over several training seeds: what training "
                   "randomness (and the machine's floating point) moves. A verdict is real only if it holds for "
                   "every seed.",
    "Wilson interval": "a 95 % interval for a proportion k of n (a rate) that stays inside [0, 1] and is sensible "
                       "at 0 of n.",
}

LESSONS: dict[str, Lesson] = {
    "01_data_exploration": Lesson(
        "Data exploration",
        ("how the MVTec AD layout separates good training images from the test set",
         "how small the defects are, and why that makes an image score hard",
         "why the part's pose decides which methods can work",
         "the two floors every result is read against: the defect rate and flagging every part"),
        ("Python and numpy; nothing about anomaly detection",),
        ("FRR", "recall", "precision", "AUROC", "calibration scores"),
        ("Detectors learn from good images only; the test split is for measuring.",
         "Defects here cover a small share of the image: the image score must react to few pixels.",
         "Where good images vary by pose, a per-position comparison cannot describe 'normal'.",
         "Next: 02 fits a detector and sets its threshold from good images.")),
    "02_training": Lesson(
        "Training a detector and setting its threshold",
        ("how the autoencoder, PaDiM and PatchCore turn good images into a map and a score",
         "the Mahalanobis distance, the greedy k-centre coreset and PatchCore's Eq. 7, each in ten lines of numpy",
         "how a threshold is set from good images only: cross-fitting and the conformal rank"),
        ("notebook 01", "a Gaussian's mean and covariance; nearest neighbours"),
        ("Mahalanobis distance", "coreset", "conformal threshold", "cross-fitting", "calibration scores"),
        ("Every method is fitted on good images only; the threshold comes from out-of-sample good scores.",
         "The conformal rank says how many good scores a target false-reject rate needs.",
         "PatchCore's image score is its worst patch's distance, slightly lowered by Eq. 7; its map is smoothed.",
         "Next: 03 measures the run on the test set.")),
    "03_evaluation": Lesson(
        "Evaluation: ranking, localisation and the operating point",
        ("what AUROC, pixel AUROC and PRO/AUPRO measure, with PRO computed by hand on a toy mask",
         "why every number carries an interval, and which decimals it leaves meaningful",
         "what a threshold does on a line: false rejects, escapes, and precision at a stated defect rate"),
        ("notebook 02 for the same method",),
        ("AUROC", "PRO / AUPRO", "FRR", "recall", "precision", "Wilson interval", "bootstrap interval",
         "conformal threshold"),
        ("AUROC ranks without a threshold; recall and FRR need one, and it comes from good images only.",
         "A rate from a few dozen parts is a range (Wilson), and so is the precision it implies.",
         "Move the threshold with the slider (JupyterLab) or `anomaly threshold` to trade false rejects for escapes.",
         "Next: 04 looks at the heatmaps behind these numbers.")),
    "04_heatmap_gallery": Lesson(
        "Heatmaps: where the model looks",
        ("how to read a heatmap against its colour range and the threshold",
         "why a flagged part can show no outlined region (the map is smoothed, the score is not)",
         "what the misses and the false alarms have in common"),
        ("notebooks 02 and 03",),
        ("calibration scores", "recall", "FRR"),
        ("A heatmap's colours only mean something against a fixed range from good images.",
         "The threshold applies to the image score; the map's peak can stay below it.",
         "Next: 05 compares the methods with paired intervals and over training seeds.")),
    "05_method_comparison": Lesson(
        "Comparing methods fairly",
        ("how paired-bootstrap margins decide whether one method beats another",
         "why a trained model's verdict must hold across training seeds",
         "how detection depends on defect size, and how results grow with the number of good images"),
        ("notebooks 02-04 for every method",),
        ("paired margin", "bootstrap interval", "seed spread", "AUROC", "PRO / AUPRO"),
        ("A difference is real only when its paired interval excludes 0 -- and, for a trained model, for every seed.",
         "Compare methods at their stated input sizes: speed and fine detail depend on them.",
         "The no-learning baseline and the flag-every-part F1 are the floors every result must clear.")),
    "06_own_parts": Lesson(
        "Your own parts: from a folder of photos to a calibrated station",
        ("how to hand the project a plain folder of good photos (and a few defective ones, if you have them)",
         "why the data is checked before any fit: duplicates across training and test, unreadable files, masks "
         "that do not match, too few good photos for the false-reject rate",
         "how many good parts a day the calibrated threshold sends to re-inspection, and how to move it without "
         "refitting",
         "the commands that put the run on the line"),
        ("nothing but the package; notebooks 02 and 03 explain the detectors and the operating point in depth",),
        ("FRR", "recall", "conformal threshold", "cross-fitting", "calibration scores", "Wilson interval"),
        ("The data check runs before every fit; a copy across training and test would inflate every number.",
         "With good photos only the run is calibrated but unmeasured: recall needs defective photos.",
         "The conformal threshold's expected false-reject rate is (n + 1 - k)/(n + 1), at most the target.",
         "`anomaly threshold` moves the operating point from the stored calibration scores; no refit.")),
}


def register(stem: str, lesson: Lesson) -> None:
    """Add (or replace) the lesson of notebook ``stem`` (e.g. ``"06_your_own_parts"``)."""
    for term in lesson.terms:
        if term not in GLOSSARY:
            raise ValueError(f"lesson {stem}: term {term!r} is not in the glossary; add it to course.GLOSSARY")
    LESSONS[stem] = lesson


def lesson_for(name: str) -> tuple[str, Lesson]:
    """The lesson of an executed or source notebook name (``03_evaluation_padim`` -> ``03_evaluation``)."""
    hits = [stem for stem in LESSONS if name == stem or name.startswith(f"{stem}_")]
    if not hits:
        raise ValueError(f"no lesson for notebook {name!r}; known: {', '.join(LESSONS)}")
    stem = max(hits, key=len)
    return stem, LESSONS[stem]


def header(name: str, build_record: str | Path = DEFAULT_BUILD_RECORD) -> str:
    """Markdown header of notebook ``name``: goals, prerequisites, run time at the last build, terms used."""
    _, lesson = lesson_for(name)
    record = read_timings(build_record)
    lines = ["**What you will learn**", *[f"- {g}" for g in lesson.learn], "",
             "**What you need first**", *[f"- {n}" for n in lesson.needs], "",
             f"**Run time** <!--run-time-->{run_time_text(name, record, build_record)}<!--/run-time-->", "",
             "**Terms used** (see the glossary in notebook 01 or `docs/course.md`): "
             + ", ".join(lesson.terms) + "."]
    return "\n".join(lines)


def recap(name: str) -> str:
    """Markdown closing summary of notebook ``name`` (what to take away, what comes next)."""
    _, lesson = lesson_for(name)
    return "\n".join(["**What you learned**", *[f"- {r}" for r in lesson.recap]])


def glossary_markdown(terms: Sequence[str] | None = None) -> str:
    """The glossary (or the named ``terms``) as a markdown list."""
    chosen = list(GLOSSARY) if terms is None else list(terms)
    return "\n".join(f"- **{term}**: {GLOSSARY[term]}" for term in chosen)


# -- the build's run-time record -----------------------------------------------------------------
def machine() -> dict[str, Any]:
    """The machine a build runs on: CPU model, cores, Python / torch versions, load average now."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "system": platform.system(),
            "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def write_timings(out_dir: str | Path, seconds: Mapping[str, float], start: dict[str, Any]) -> dict[str, Any]:
    """Write ``out_dir/timings.json``: seconds per executed notebook, the machine, the load at start and end."""
    end = machine()
    record = {"built": time.strftime("%Y-%m-%d"), "machine": {k: v for k, v in start.items() if k != "load_average"},
              "load_average_start": start.get("load_average"), "load_average_end": end.get("load_average"),
              "seconds": {k: round(float(v), 1) for k, v in seconds.items()},
              "total_seconds": round(float(sum(seconds.values())), 1)}
    Path(out_dir, TIMINGS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def read_timings(path: str | Path) -> dict[str, Any] | None:
    """The timings record at ``path`` (a file or the report folder holding it); None when absent or unreadable."""
    path = Path(path)
    path = path / TIMINGS_FILE if path.is_dir() else path
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("seconds"), dict) else None


def run_time_text(name: str, record: dict[str, Any] | None, where: str | Path = DEFAULT_BUILD_RECORD) -> str:
    """One sentence: how long notebook ``name`` took at the recorded build, on what machine, under what load."""
    if record is None:
        return f"not measured yet: no build record at `{where}` (`make report` writes one)."
    seconds = record["seconds"].get(name)
    if seconds is None:
        seconds = sum(v for k, v in record["seconds"].items() if k.startswith(f"{name}_"))  # per-method notebooks
        if not seconds:
            return f"not measured: the build of {record.get('built', '?')} did not run `{name}`."
    m, load = record.get("machine", {}), record.get("load_average_start") or [None]
    return (f"{seconds:.0f} s at the last build ({record.get('built', '?')}; {record['total_seconds'] / 60:.1f} min "
            f"for the whole report) on {m.get('cpu', 'an unrecorded CPU')}, {m.get('cores', '?')} cores, "
            f"1-minute load average {load[0]} when the build started.")


def stamp_run_times(out_dir: str | Path, names: Sequence[str], record: dict[str, Any]) -> list[Path]:
    """Replace the run-time sentence in the headers of executed notebooks ``out_dir/<name>.ipynb``.

    Returns:
        The notebooks changed.
    """
    import nbformat

    changed = []
    for name in names:
        path = Path(out_dir) / f"{name}.ipynb"
        if not path.is_file():
            continue
        nb = nbformat.read(path, as_version=4)
        text = f"<!--run-time-->{run_time_text(name, record, Path(out_dir) / TIMINGS_FILE)}<!--/run-time-->"
        hit = False
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                if "text/markdown" in data and _RUN_TIME.search(data["text/markdown"]):
                    data["text/markdown"] = _RUN_TIME.sub(lambda _: text, data["text/markdown"])
                    hit = True
        if hit:
            nbformat.write(nb, path)
            changed.append(path)
    return changed
