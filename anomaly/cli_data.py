"""The data options of ``anomaly fit`` (MVTec AD or plain folders) and the ``anomaly check-data`` command.

:mod:`anomaly.cli` adds them to its parser; the check itself lives in :mod:`anomaly.datacheck`,
imported only when a command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from anomaly.models import METHODS

logger = logging.getLogger("anomaly")

DATA_HELP = ("the data: --data ROOT --category NAME (MVTec AD layout), or plain folders: --good DIR "
             "[--defective DIR [--masks DIR]] [--test-good DIR]")


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """``--data/--category`` or ``--good/--defective/--masks/--test-good/--test-fraction``."""
    g = p.add_argument_group("data", DATA_HELP)
    g.add_argument("--data", help="dataset root in MVTec AD layout (with --category)")
    g.add_argument("--category", help="category folder under --data; with --good, a name for the parts "
                                      "(default: the good folder's name)")
    g.add_argument("--good", help="folder of good images, searched recursively (any format, mixed sizes)")
    g.add_argument("--defective", help="folder of defective images; its sub-folders name the defect types")
    g.add_argument("--masks", help="folder of defect masks, matched by path and file stem (017.png or 017_mask.png)")
    g.add_argument("--test-good", help="folder of good test images (default: with --defective, --test-fraction of "
                                       "--good is held out by a seeded draw recorded in the run)")
    g.add_argument("--test-fraction", type=float, default=0.2,
                   help="share of --good held out for the test when there is no --test-good (default 0.2)")


def add_check_data_command(sub: argparse._SubParsersAction) -> None:
    """``anomaly check-data``."""
    p = sub.add_parser("check-data", help="check a data set before fitting: counts, sizes, unreadable files, "
                                          "duplicates and leakage, masks, calibration size",
                       description="Exit code 0: no errors; 1: errors that make `anomaly fit` refuse the data; "
                                   "2: bad arguments or missing folders.")
    add_data_arguments(p)
    p.add_argument("--method", default="patchcore", choices=METHODS,
                   help="the method to be fitted: it decides how many good calibration scores there will be")
    p.add_argument("--target-frr", type=float, default=None, help="false-reject rate to aim at (default 0.05)")
    p.add_argument("--estimator", default=None, help="threshold estimator (default conformal)")
    p.add_argument("--folds", type=int, help="cross-fitting folds, as for fit (0: a validation split)")
    p.add_argument("--val-fraction", type=float, help="as for fit")
    p.add_argument("--seed", type=int, default=0, help="seeds the held-out draw, as for fit")
    p.add_argument("--json", default="datacheck.json", help="where the JSON record goes (default ./datacheck.json)")
    p.add_argument("--workers", type=int, help="reader threads (default: every core, at most 8)")
    p.set_defaults(func=cmd_check_data)


def data_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The RunConfig data fields from parsed arguments."""
    return {k: getattr(args, k, None) for k in ("data", "category", "good", "defective", "masks", "test_good",
                                                  "test_fraction")}


def cmd_check_data(args: argparse.Namespace) -> None:
    from anomaly.config import RunConfig
    from anomaly.datacheck import check_data
    from anomaly.datacheck_record import summary

    settings = {"method": args.method, "target_frr": args.target_frr, "estimator": args.estimator,
                "folds": args.folds, "val_fraction": args.val_fraction, "seed": args.seed}
    config = RunConfig.from_dict({**data_settings(args), **settings})
    check = check_data(config, workers=args.workers)
    path = check.write(args.json)
    print(summary(check) + f"\nJSON record: {path}")
    if check.errors():
        sys.exit(1)


def check_before_fit(config: Any, allow_duplicates: bool = False) -> Any:
    """Run the data check of ``config``; log its summary; raise ValueError naming the files when it finds errors.

    Returns:
        The :class:`anomaly.datacheck.DataCheck` (``fit_run`` writes it into the run folder).
    """
    from anomaly.datacheck import check_data
    from anomaly.datacheck_record import refusal, summary

    check = check_data(config)
    for line in summary(check).splitlines():
        if line.strip():
            logger.info("%s", line)
    message = refusal(check, allow_duplicates)
    if message:
        raise ValueError(message)
    return check
