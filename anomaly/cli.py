"""Command-line interface: ``anomaly <command> ...`` (also ``python -m anomaly``).

Thin by design: every command parses argv and calls :mod:`anomaly.pipeline` (or the
service, export and loadtest modules, imported only by the commands that use them). Unknown options, methods and parameters fail with a clear message.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from anomaly.cli_args import folds, image_side, positive_int, rate
from anomaly.cli_data import add_check_data_command, add_data_arguments, check_before_fit
from anomaly.cli_service import add_service_commands
from anomaly.inference import RUNTIME_HELP, RUNTIMES, iter_predictions, load_run, runtime_scorer
from anomaly.models import METHODS
from anomaly.models.registry import methods_help
from anomaly.thresholds import DEFAULT_ESTIMATOR, DEFAULT_PIXEL_FPR, DEFAULT_TARGET_FRR, ESTIMATORS

logger = logging.getLogger("anomaly")
ENGINES = ("local", "ray")


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict; values parsed as JSON when they can be (numbers, bools, lists)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            params[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            params[key.replace("-", "_")] = value
    return params


def _model_params(args: argparse.Namespace) -> dict[str, Any]:
    params = _parse_set(args.set)
    for name in ("image_size", "epochs", "backbone", "weights"):
        value = getattr(args, name, None)
        if value is not None:
            params[name] = value
    return params


def cmd_synth(args: argparse.Namespace) -> None:
    from anomaly.synthetic import generate_dataset

    out = generate_dataset(Path(args.out), seed=args.seed, image_size=args.image_size, n_train=args.n_train,
                           n_test_good=args.n_test_good, n_per_defect=args.n_per_defect,
                           categories=args.categories.split(","))
    print(out)


def cmd_fit(args: argparse.Namespace) -> None:
    from anomaly.config import RunConfig
    from anomaly.pipeline import fit_run

    settings = {key: getattr(args, key) for key in RunConfig.field_names() if key != "params"}
    config = RunConfig.from_dict({**settings, "params": _model_params(args)})
    check = check_before_fit(config, allow_duplicates=args.allow_duplicates)
    run_dir = fit_run(config, args.run_dir, data_check=check)
    print(run_dir)


def cmd_threshold(args: argparse.Namespace) -> None:
    from anomaly.pipeline import rethreshold_run
    from anomaly.runs import read_predictions

    result = rethreshold_run(args.run_dir, args.target_frr, estimator=args.estimator, pixel_fpr=args.pixel_fpr)
    keys = ("target_frr", "frr", "frr_ci", "recall", "recall_ci", "escape_rate", "oracle_recall_at_frr", "regions")
    summary = {"threshold": result["threshold"],
               "metrics": None if result["metrics"] is None else {k: result["metrics"].get(k) for k in keys}}
    if args.compare:
        summary["compare"] = _compare(args.run_dir, args.target_frr, read_predictions)
    print(json.dumps(summary, indent=2))


def _compare(run_dir: str, target_frr: float, load_predictions: Callable) -> dict[str, list[dict]]:
    """Realised rates of every estimator, and of conformal from random subsets of the scores (an evaluated run)."""
    from anomaly.calibration import read_calibration
    from anomaly.rates import compare_estimators, small_n_cost

    if not (Path(run_dir) / "predictions.npz").is_file():
        raise ValueError(f"--compare needs test predictions: run `anomaly evaluate --run-dir {run_dir}` first")
    out = load_predictions(run_dir)
    calibration = read_calibration(run_dir).scores
    return {"estimators": compare_estimators(calibration, out["labels"], out["image_scores"], target_frr),
            "conformal_with_fewer_scores": small_n_cost(calibration, out["labels"], out["image_scores"], target_frr)}


def cmd_evaluate(args: argparse.Namespace) -> None:
    from anomaly.pipeline import evaluate_run

    metrics = evaluate_run(args.run_dir, device=args.device, data=args.data, runtime=args.runtime)
    print(json.dumps({k: v for k, v in metrics.items() if k != "per_defect_type"}, indent=2))


def cmd_predict(args: argparse.Namespace) -> None:
    from anomaly.station.inspection import inspect_paths, list_images

    inputs = _predict_inputs(args)
    paths = list_images(inputs)  # up front: a missing input or a FIFO is refused before the run loads
    run = load_run(args.run_dir, device="cpu" if args.engine == "ray" else args.device)
    if args.engine == "ray":
        from anomaly.station.distributed import inspect_paths_ray

        print(json.dumps(inspect_paths_ray(
            run, paths, args.csv, args.parquet, heatmap_dir=args.heatmaps, batch_size=args.batch_size,
            runtime=args.runtime, threads=args.threads, actors=args.actors, address=args.address, device=args.device)))
        return
    if args.csv:
        summary = inspect_paths(run, paths, args.csv, heatmap_dir=args.heatmaps, batch_size=args.batch_size,
                                runtime=args.runtime, threads=args.threads)
        print(json.dumps(summary))
        return
    scorer = runtime_scorer(run, args.runtime, args.threads)
    for record in iter_predictions(run, paths, heatmap_dir=args.heatmap_dir, scorer=scorer):
        print(json.dumps(record.json_record(), allow_nan=False), flush=True)  # a non-finite score was refused: always valid JSON


def _predict_inputs(args: argparse.Namespace) -> list[str]:
    """The images and folders named, then the manifest's paths; refuses options of the other mode or engine."""
    from anomaly.station.manifest import read_manifest

    if (args.heatmaps and not (args.csv or args.parquet)) or ((args.csv or args.parquet) and args.heatmap_dir):
        raise ValueError("--heatmaps OUT goes with --csv; --heatmap-dir with the JSON lines (no --csv)")
    ray_only = [name for name in ("parquet", "address", "actors") if getattr(args, name) is not None]
    if args.engine == "local" and ray_only:
        raise ValueError(f"--{ray_only[0]} goes with --engine ray")
    if args.engine == "ray" and not (args.csv or args.parquet):
        raise ValueError("--engine ray writes rows: give --csv FILE and/or --parquet FOLDER")
    inputs = [*args.images, *(read_manifest(args.manifest) if args.manifest else [])]
    if not inputs:
        raise ValueError("nothing to inspect: name image files or folders, or give --manifest FILE")
    return inputs


def cmd_benchmark(args: argparse.Namespace) -> None:
    from anomaly.study.benchmark import run_benchmark

    executor = None
    if args.engine == "ray":
        from anomaly.study.executors import RayExecutor

        executor = RayExecutor(args.address, cpus_per_job=args.cpus_per_job)
    elif args.address:
        raise ValueError("--address goes with --engine ray")
    table = run_benchmark(args.data, args.categories.split(","), args.methods.split(","), Path(args.out),
                          device=args.device, seed=args.seed, params=_parse_set(args.set), resume=args.resume,
                          executor=executor)
    print(table)


def cmd_ablation(args: argparse.Namespace) -> None:
    from anomaly.study.ablation import run_ablation

    print(run_ablation(args.data, args.categories.split(","), Path(args.out),
                       args.variants.split(",") if args.variants else None, device=args.device))


def cmd_report(args: argparse.Namespace) -> None:
    from anomaly.study.report import build_report, write_student_version

    if args.student:
        for path in write_student_version(Path(args.out), args.notebooks.split(",") if args.notebooks else None):
            print(path)
        return
    index = build_report(Path(args.out), data=args.data, category=args.category,
                         synthetic_dir=Path(args.synthetic_dir), runs_dir=Path(args.runs_dir),
                         params=_parse_set(args.set), notebooks=args.notebooks.split(",") if args.notebooks else None)
    print(index)


def _add_decision(p: argparse.ArgumentParser, target_default: float | None, pixel_default: float | None) -> None:
    """``--target-frr`` (required when ``target_default`` is None), ``--estimator``, ``--pixel-fpr``."""
    p.add_argument("--target-frr", type=rate, default=target_default, required=target_default is None,
                   help=f"false-reject rate of good parts to aim at (fit default {DEFAULT_TARGET_FRR})")
    p.add_argument("--estimator", default=DEFAULT_ESTIMATOR, choices=ESTIMATORS,
                   help="threshold from the calibration scores (default conformal; see docs/operating-point.md)")
    p.add_argument("--pixel-fpr", type=rate, default=pixel_default,
                   help=f"per-pixel false-positive rate of the defect-region threshold (fit default {DEFAULT_PIXEL_FPR})")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomaly", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write the built-in synthetic MVTec-like dataset")
    p.add_argument("--out", required=True, help="output root (categories are written under it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=image_side, default=256)
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-test-good", type=int, default=40)
    p.add_argument("--n-per-defect", type=int, default=15)
    p.add_argument("--categories", default="screw_like,texture", help="comma-separated; also screw_aligned (pose fixed)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("fit", help="check the data, fit a detector on good images and write a run folder")
    p.add_argument("--method", required=True, choices=METHODS, help=methods_help())
    add_data_arguments(p)
    p.add_argument("--allow-duplicates", action="store_true",
                   help="fit even when the data check finds duplicates across training and test images")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--image-size", type=image_side, help="the model's input side (default: the method's)")
    p.add_argument("--epochs", type=positive_int, help="autoencoder only")
    p.add_argument("--backbone", help="padim/patchcore: efficientnet_lite0|lite1|lite2 or a timm name")
    p.add_argument("--weights", help="padim/patchcore: local state_dict for --backbone (never downloaded)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any detector parameter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float,
                   help="share of train/good held out when calibrating on a validation split (default 0.1; "
                        "0 with cross-fitting)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    _add_decision(p, target_default=DEFAULT_TARGET_FRR, pixel_default=DEFAULT_PIXEL_FPR)
    p.add_argument("--folds", type=folds, help="cross-fitting folds (default 5 for padim/patchcore; the "
                   "autoencoder uses a validation split; 0 forces one)")
    p.add_argument("--max-train", type=positive_int, help="use at most N training images (data-efficiency studies)")
    _add_common(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("evaluate", help="score the test split; write metrics.json")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--data", help="override the dataset root recorded in the run")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES, help=RUNTIME_HELP)
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("threshold", help="move the operating point: re-derive threshold.json (and metrics.json) "
                                         "from the stored calibration scores, without refitting")
    p.add_argument("--run-dir", required=True)
    _add_decision(p, target_default=None, pixel_default=None)
    p.add_argument("--compare", action="store_true",
                   help="realised test FRR/recall of every estimator, and of conformal from 10-160 of the scores")
    p.set_defaults(func=cmd_threshold)

    p = sub.add_parser("predict", help="score image files or folders; one JSON line per image, or a CSV (--csv)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--heatmap-dir", help="JSON mode: write a heatmap PNG per image here (default: none; never into "
                                         "the run folder unless asked)")
    p.add_argument("--csv", help="stream one row per image into this CSV (resumes: paths already in it are skipped)")
    p.add_argument("--heatmaps", metavar="OUT", help="--csv mode: write a heatmap PNG per image here (default: none)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="--csv mode: images scored together")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES, help=RUNTIME_HELP)
    p.add_argument("--threads", type=positive_int, help="intra-op threads (default: every core)")
    p.add_argument("--manifest", help="a .csv or .parquet file whose `path` column lists images (relative to its "
                                      "folder), inspected after FOLDER_OR_FILE")
    p.add_argument("--engine", default="local", choices=ENGINES,
                   help="local (default): this process; ray: decode in Ray tasks, score in Ray actors (docs/distributed.md)")
    p.add_argument("--parquet", metavar="FOLDER", help="--engine ray: also (or only) write the rows as Parquet parts here")
    p.add_argument("--address", help="--engine ray: join the cluster at HOST:PORT (default: start a local Ray)")
    p.add_argument("--actors", type=positive_int, help="--engine ray: scoring actors (default: one per CPU / --threads)")
    p.add_argument("images", nargs="*", metavar="FOLDER_OR_FILE", help="image files, or folders searched recursively")
    _add_common(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("benchmark", help="fit + evaluate every (category, method) pair")
    p.add_argument("--data", required=True)
    p.add_argument("--categories", required=True, help="comma-separated")
    p.add_argument("--methods", default="autoencoder,padim,patchcore", help="comma-separated")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="override a detector parameter for one method, e.g. autoencoder.epochs=20")
    p.add_argument("--resume", action="store_true",
                   help="reuse pairs whose run folder is complete and has metrics.json of its own model")
    p.add_argument("--engine", default="local", choices=ENGINES,
                   help="local (default): one pair after another here; ray: every pair as a Ray task (--out must be "
                        "a path every node sees)")
    p.add_argument("--address", help="--engine ray: join the cluster at HOST:PORT (default: start a local Ray)")
    p.add_argument("--cpus-per-job", type=positive_int, default=1,
                   help="--engine ray: CPUs (and torch threads) each fit + evaluate task requests")
    _add_common(p)
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("ablation", help="PatchCore variants, one change at a time, against the defaults")
    p.add_argument("--data", required=True)
    p.add_argument("--categories", required=True, help="comma-separated")
    p.add_argument("--out", required=True, help="OUT/ablation.md, OUT/ablation.json; finished variants are reused")
    p.add_argument("--variants", help="comma-separated subset of anomaly.study.ablation.VARIANTS (default: all)")
    _add_common(p)
    p.set_defaults(func=cmd_ablation)

    p = sub.add_parser("report", help="run every notebook with papermill into executed notebooks + HTML")
    p.add_argument("--out", default="reports", help="where executed notebooks, HTML and index.html go")
    p.add_argument("--data", help="MVTec AD root (default: the built-in synthetic data)")
    p.add_argument("--category", default="screw_like")
    p.add_argument("--synthetic-dir", default="data/synthetic", help="generated here when --data is not given")
    p.add_argument("--runs-dir", default="weights/report", help="run folders written by the notebooks")
    p.add_argument("--notebooks", help="comma-separated subset, e.g. 01,03 (default: all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="notebook parameter override (unknown names are an error)")
    p.add_argument("--student", action="store_true",
                   help="write the student version instead: the notebooks with exercise solutions blank and no "
                        "outputs, into --out (nothing is run)")
    p.set_defaults(func=cmd_report)

    add_check_data_command(sub)
    add_service_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with _sigterm_as_interrupt():
            args.func(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        parser.exit(2, f"anomaly {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"anomaly {args.command}: interrupted\n")
    return 0


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does), so an interrupted fit removes its staging folder."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
