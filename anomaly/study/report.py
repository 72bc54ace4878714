"""The report: run every notebook with papermill, export each to HTML, and write an index page.

``build_report`` executes ``notebooks/NN_name.ipynb`` in order -- the training and evaluation
notebooks once per method -- with parameters injected (papermill), writes ``OUT/NN_name[_method].ipynb``
and ``.html`` (nbconvert), and ``OUT/index.html``: the answer (generated from the numbers, with the no-learning baseline and the
bootstrap intervals), the comparison figure, example heatmaps per method, the table, then the links.
Unknown parameters are errors (papermill itself only warns); a failing cell fails the report.
The helpers the notebooks call live in :mod:`anomaly.study.run_results`, :mod:`anomaly.study.sweeps`,
:mod:`anomaly.study.exploration` and :mod:`anomaly.study.summaries`.
"""

from __future__ import annotations

import contextlib
import html
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import papermill

from anomaly import synthetic, viz

from anomaly.station import offline_html

from anomaly.study import course, evidence, exercises, pairwise, seeds
from anomaly.models.registry import REPORT_METHODS, method_spec
from anomaly.study.run_results import comparison_examples, load_results

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]  # the source checkout, when the package runs from one
PACKAGED_NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"  # where a wheel installs them (package data)
KERNEL = "python3"
METHODS = REPORT_METHODS  # every registered method, the no-learning baseline(s) first
PER_METHOD = ("02_training", "03_evaluation")  # executed once per method
# The kernels inherit these: no progress bars (or tqdm's "IProgress not found" warning) in the executed notebooks.
# QT_API: with ipywidgets installed, tqdm.auto would draw widget bars, which ignore TQDM_DISABLE; a set QT_API makes
# it pick the console bar (tqdm.autonotebook), which honours it. Nothing here uses Qt.
KERNEL_ENV = {"TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore:IProgress not found", "QT_API": "headless-report"}
# Defaults sized for 2 CPU cores: under 10 minutes for the synthetic report, under 20 for MVTec AD screw. Each
# method's own notebook parameters per profile (image size, epochs) are its spec's ``report``
# (anomaly.models.registry.MethodSpec): the autoencoder trains 30 (synthetic) or 50 (real) epochs instead of its
# default 100 -- about 2.5 s per epoch over 180 images at 128 px on an idle 2-core machine; notebook 02 shows whether
# its loss is still falling; real data otherwise uses the models' defaults (None = the method's own default). The
# data-efficiency sweep fits PatchCore per seed at every size; seed 0's full-set point reuses the run of notebook 02.
# The autoencoder is fitted with 3 training seeds (notebook 02's `seeds`): its verdicts must hold for each.
# The data-efficiency sweep runs 3 seeds (a band in notebook 05); on the synthetic data one subset size + the full
# set, so that `make report` (with the autoencoder's 3 seeds) stays under 10 minutes.
NOTEBOOK_PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "synthetic": {"01_data_exploration": {"image_size": 128},
                  "05_method_comparison": {"efficiency_methods": ["patchcore"], "image_size": 256,
                                           "efficiency_sizes": [25], "efficiency_seeds": 3}},
    "real": {"01_data_exploration": {"image_size": 256},
             "05_method_comparison": {"efficiency_methods": ["patchcore"], "image_size": None,
                                      "efficiency_sizes": [10, 25, 50, 100], "efficiency_seeds": 3}},
}


def profile_parameters(profile: str) -> dict[str, dict[str, Any]]:
    """The injected parameters of ``profile`` (``synthetic``/``real``): per notebook stem and per method (its spec)."""
    return {**NOTEBOOK_PROFILES[profile], **{m: dict(method_spec(m).report[profile]) for m in METHODS}}


@dataclass
class Job:
    """One notebook execution: ``source`` notebook, output ``stem``, injected ``parameters``."""

    source: Path
    stem: str
    parameters: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def build_report(out_dir: Path, data: str | Path | None = None, category: str = "screw_like",
                 synthetic_dir: Path = Path("data/synthetic"), runs_dir: Path = Path("weights/report"),
                 params: dict[str, Any] | None = None, notebooks: Sequence[str] | None = None) -> Path:
    """Execute the notebooks, export HTML, write ``out_dir/index.html`` and return its path.

    Args:
        data: MVTec AD root; ``None`` -> the synthetic data in ``synthetic_dir`` (generated if missing).
        params: notebook parameter overrides, applied to every notebook that has the parameter;
            a key no selected notebook has raises ``ValueError``.
        notebooks: prefixes (``"01"``) or names selecting a subset; ``None`` = all, in order.

    Raises:
        ValueError: unknown parameter or notebook. papermill.PapermillExecutionError: a cell failed
            (its message holds the cell's traceback; the failed notebook is kept in ``out_dir``).
    """
    profile = "synthetic" if data is None else "real"
    if data is None:
        data = _ensure_synthetic(Path(synthetic_dir), category)
    elif not Path(data).is_dir():
        raise FileNotFoundError(f"data root {data} does not exist")
    with _environment(KERNEL_ENV), _quiet("papermill", "traitlets"):  # per-cell chatter, nbconvert alt-text notes
        jobs = plan_jobs(select_notebooks(notebooks), _rel(data), category, _rel(runs_dir), profile, dict(params or {}),
                         build_record=_rel(Path(out_dir) / course.TIMINGS_FILE))
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        start = course.machine()
        run_jobs(jobs, out_dir, export=False)
        record = course.write_timings(out_dir, {j.stem: j.seconds for j in jobs}, start)
        course.stamp_run_times(out_dir, [j.stem for j in jobs], record)  # headers ran before their run time existed
        for job in jobs:
            export_html(out_dir / f"{job.stem}.ipynb")
    source = "the built-in synthetic data set" if profile == "synthetic" else "user-supplied data"
    return write_index(out_dir, Path(runs_dir), jobs, f"Data: {_rel(data)}, category {category} ({source}).")


def run_jobs(jobs: Sequence[Job], out_dir: Path, export: bool = True) -> None:
    """Execute each job with papermill (cwd = the source checkout, else the current directory), export HTML
    (unless ``export`` is False: :func:`build_report` exports after stamping the run times)."""
    for i, job in enumerate(jobs, 1):
        logger.info("[%d/%d] %s ...", i, len(jobs), job.stem)
        start = time.perf_counter()
        target = out_dir / f"{job.stem}.ipynb"
        try:
            papermill.execute_notebook(str(job.source), str(target), parameters=job.parameters, kernel_name=KERNEL,
                                       language="python", cwd=str(source_checkout() or Path.cwd()), progress_bar=False,
                                       store_widget_state=False)  # a widget's state would pull its JS from a CDN
        except papermill.PapermillExecutionError:
            logger.error("[%d/%d] %s FAILED after %.1f s; executed copy: %s", i, len(jobs), job.stem,
                         time.perf_counter() - start, target)
            raise
        if export:
            export_html(target)
        job.seconds = time.perf_counter() - start
        logger.info("[%d/%d] %s done in %.1f s", i, len(jobs), job.stem, job.seconds)


def write_student_version(out_dir: Path, notebooks: Sequence[str] | None = None) -> list[Path]:
    """The student version of the notebooks in ``out_dir``: exercise solutions blank, no outputs, nothing run."""
    return exercises.write_student_version(select_notebooks(notebooks), out_dir)


def source_checkout() -> Path | None:
    """The repository root when the package runs from a source checkout (notebooks run there), else None."""
    return REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "notebooks").is_dir() else None


def notebook_dir() -> Path:
    """The notebook sources: ``notebooks/`` of the source checkout, else the copy installed with the package.

    Raises:
        FileNotFoundError: neither holds a ``NN_name.ipynb`` notebook (the message names both places).
    """
    checkout = source_checkout()
    candidates = ([checkout / "notebooks"] if checkout else []) + [PACKAGED_NOTEBOOKS]
    for folder in candidates:
        if any(folder.glob("[0-9][0-9]_*.ipynb")):
            return folder
    raise FileNotFoundError(f"no report notebooks (NN_name.ipynb) in {' or '.join(map(str, candidates))}: "
                            f"reinstall the package (`pip install anomaly`) or run from a source checkout")


def select_notebooks(names: Sequence[str] | None) -> list[Path]:
    """Notebook sources in order; ``names`` are prefixes (``"03"``) or full stems."""
    available = sorted(notebook_dir().glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return available
    chosen = []
    for name in names:
        hits = [p for p in available if p.stem == name or p.stem.startswith(f"{name}_") or p.name == name]
        if not hits:
            raise ValueError(f"unknown notebook {name!r}; valid: {', '.join(p.stem for p in available)}")
        chosen += [p for p in hits if p not in chosen]
    return sorted(chosen)


def plan_jobs(sources: Sequence[Path], data: str, category: str, runs_dir: str, profile: str,
              overrides: dict[str, Any], build_record: str = course.DEFAULT_BUILD_RECORD) -> list[Job]:
    """Expand notebooks into jobs with their parameters; validates ``overrides`` against the notebooks.

    ``build_record``: the timings file the notebooks' headers read (``OUT/timings.json``).
    """
    defaults = profile_parameters(profile)
    run_dirs = {m: f"{runs_dir}/{m}" for m in METHODS}
    inspected = {p: papermill.inspect_notebook(str(p)) for p in sources}
    known = {p: set(params) for p, params in inspected.items()}
    unknown = sorted(set(overrides) - set().union(*known.values()))
    if unknown:
        valid = ", ".join(sorted(set().union(*known.values())))
        raise ValueError(f"unknown notebook parameter(s) {', '.join(map(repr, unknown))}; valid: {valid}")
    for params in inspected.values():
        for name, value in overrides.items():
            if name in params:
                check_parameter(params[name], value)
    jobs = []
    for source in sources:
        common = {"data": data, "category": category, "run_dirs": list(run_dirs.values()),
                  "run_dir": run_dirs["patchcore"], "autoencoder_run_dir": run_dirs["autoencoder"],
                  "efficiency_dir": f"{runs_dir}/efficiency", "own_run_dir": f"{runs_dir}/own_parts",
                  "example_dir": f"{runs_dir}/own_parts_photos", "build_record": build_record,
                  **defaults.get(source.stem, {})}
        variants = [(f"{source.stem}_{m}", {"method": m, "run_dir": run_dirs[m], **defaults[m]}) for m in METHODS] \
            if source.stem in PER_METHOD else [(source.stem, {})]
        for stem, extra in variants:
            merged = {**common, **extra, **overrides}
            jobs.append(Job(source, stem, {k: v for k, v in merged.items() if k in known[source]}))
    return jobs


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,), "dict": (dict,)}


def check_parameter(spec: dict[str, Any], value: Any) -> None:
    """Raise ValueError unless ``value`` has the type of the notebook parameter ``spec`` (papermill's inspection).

    The type is the one its help comment states (``int or None: ...``) or, without one, the type of
    its default; parameters whose default is None and whose help states no type are not checked.
    """
    help_text, inferred = spec.get("help") or "", spec.get("inferred_type_name") or ""
    stated = help_text.split(":", 1)[0].split(" or ") if ":" in help_text else []
    names = [t.strip() for t in stated if t.strip() in _TYPES or t.strip() == "None"] or [inferred.split("[")[0]]
    if not any(n in _TYPES for n in names):
        return
    if value is None and "None" in names:
        return
    if any(isinstance(value, _TYPES[n]) and not (isinstance(value, bool) and n != "bool") for n in names if n in _TYPES):
        return
    raise ValueError(f"notebook parameter {spec['name']}={value!r}: expected {' or '.join(names)}")


def export_html(notebook: Path) -> Path:
    """Write ``notebook`` as HTML next to it: figures embedded, maths pre-rendered to MathML (reads offline)."""
    return offline_html.export_html(notebook)


def write_index(out_dir: Path, runs_dir: Path, jobs: Sequence[Job], about: str) -> Path:
    """``index.html``: the answer paragraph, the comparison figure, example heatmaps per method, the rounded
    table with intervals and margins over the baseline, then every executed notebook (HTML + notebook links).

    Args:
        about: one line describing the data (shown under the title).
    """
    seconds = {j.stem: j.seconds for j in jobs}
    rows = "".join(
        f"<tr><td>{html.escape(nb.stem)}</td><td><a href='{html.escape(nb.with_suffix('.html').name)}'>HTML</a></td>"
        f"<td><a href='{html.escape(nb.name)}'>notebook</a></td>"
        f"<td>{'' if nb.stem not in seconds else f'{seconds[nb.stem]:.0f} s'}</td></tr>"
        for nb in sorted(out_dir.glob("[0-9][0-9]_*.ipynb")))
    run_dirs = [d for d in (Path(runs_dir) / m for m in METHODS) if (d / "predictions.npz").is_file()]
    lead = _evidence_html(run_dirs, out_dir) if run_dirs else "<p>No evaluated runs.</p>"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Anomaly detection report</title>"
            f"<style>body{{font-family:sans-serif;max-width:72em;margin:2em auto}}td,th{{padding:.2em .8em}}"
            f"img{{max-width:100%}}</style></head><body><h1>Anomaly detection report</h1>"
            f"<p>{html.escape(about)}</p>{lead}"
            f"<h2>Notebooks</h2><table><tr><th>notebook</th><th></th><th></th><th>run time</th></tr>{rows}</table>"
            f"<p>Total run time of this build: {sum(seconds.values()) / 60:.1f} min{_machine_note(out_dir)}.</p>"
            f"</body></html>\n")
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def _machine_note(out_dir: Path) -> str:
    """`` on <cpu>, <n> cores (load average a at the start, b at the end)`` from the build's timings record."""
    record = course.read_timings(out_dir)
    if record is None:
        return ""
    m, start, end = record.get("machine", {}), record.get("load_average_start"), record.get("load_average_end")
    return (f" on {html.escape(str(m.get('cpu')))}, {m.get('cores')} cores (1-minute load average "
            f"{start[0] if start else '?'} at the start, {end[0] if end else '?'} at the end)")


def _evidence_html(run_dirs: Sequence[Path], out_dir: Path) -> str:
    """The answer, the comparison figure, a row of example heatmaps per method and the table, as HTML."""
    results = [load_results(d) for d in run_dirs]
    trained = {r.method: [load_results(d) for d in seeds.seed_runs(r.run_dir)] for r in results}
    trained = {m: runs for m, runs in trained.items() if len(runs) > 1}
    resampler = pairwise.Resampler(results[0].predictions["labels"])
    margins = evidence.margins_over_baseline(results, seed_results=trained, resampler=resampler)
    pairs = pairwise.pairwise(results, trained, resampler)
    spreads = {m: seeds.spread(runs[0].run_dir) for m, runs in trained.items()}
    figures = out_dir / "figures"
    figures.mkdir(exist_ok=True)
    viz.comparison_figure({r.method: r.metrics for r in results}).savefig(figures / "comparison.png", dpi=90)
    viz.method_gallery(**comparison_examples(results, 4)).savefig(figures / "examples.png", dpi=70)
    table = evidence.comparison_table(results, margins, spreads).reset_index().to_html(index=False, border=0)
    pair_table = pairwise.pairwise_table(pairs).reset_index().to_html(index=False, border=0)
    return (f"<h2>The answer</h2><p>{_markdown_inline(evidence.answer_paragraph(results, margins, pairs))}</p>"
            f"<img src='figures/comparison.png' alt='test metrics per method with 95 % intervals'>"
            f"<h2>The same test images under each method</h2>"
            f"<img src='figures/examples.png' alt='example heatmaps, one column per method'>"
            f"<h2>Test metrics (95 % bootstrap intervals; margins over the no-learning baseline)</h2>{table}"
            f"<p>F1 at the calibrated threshold uses a threshold set from good training images only (out-of-sample calibration scores); F1-max (oracle) "
            f"picks its threshold with the test labels (an upper bound). 'flag every part' is the F1 of calling "
            f"every part defective. A margin is a real difference only when its interval excludes 0 -- for a "
            f"trained method, for every training seed.</p>"
            f"<h2>Learned methods against each other (paired, same test images)</h2>{pair_table}")


def _markdown_inline(text: str) -> str:
    """Escape ``text`` and render its **bold** and `code` spans."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _rel(path: str | Path) -> str:
    """``path`` relative to the source checkout when inside it (notebooks run there), else absolute."""
    resolved, root = Path(path).resolve(), source_checkout()
    return str(resolved.relative_to(root)) if root and resolved.is_relative_to(root) else str(resolved)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables (inherited by kernels started inside) and restore them afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Raise the named loggers to ERROR for the duration (our own progress lines stay at INFO)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.ERROR))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _ensure_synthetic(root: Path, category: str) -> Path:
    if not (root / category).is_dir():
        if category not in synthetic.ALL_CATEGORIES:
            raise ValueError(f"category {category!r} is not synthetic; choose one of "
                             f"{', '.join(synthetic.ALL_CATEGORIES)}")
        logger.info("generating the synthetic data set in %s", root)
        synthetic.generate_dataset(root, categories=(category,))
    return root


