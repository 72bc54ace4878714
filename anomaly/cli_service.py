"""The service commands of ``anomaly``: serve, station, loadtest, export, latency.

:func:`add_service_commands` adds them to the parser of :mod:`anomaly.cli` (still the entry point,
``anomaly.cli:main``); each command imports the service, browser, export or load-test module only
when it runs (they import FastAPI, uvicorn, onnx or Playwright: not needed to start the CLI).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from anomaly.cli_args import image_side, port, positive_float, positive_int
from anomaly.decoding import require_regular_file
from anomaly.export import export_run
from anomaly.station.http_guards import allowed_hosts
from anomaly.inference import RUNTIME_HELP, RUNTIMES, load_run, set_torch_threads
from anomaly.memory import limit_allocator


def add_service_commands(sub: argparse._SubParsersAction) -> None:
    """``serve``, ``station``, ``loadtest``, ``export`` and ``latency``."""
    p = sub.add_parser("serve", help="serve a trained run over HTTP (FastAPI + uvicorn)")
    p.add_argument("--run-dir", required=True, help="run folder written by `anomaly fit`")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument("--allowed-hosts", default="",
                   help="comma-separated extra host names clients may use in the Host header (DNS-rebinding "
                        "guard; always allowed: 127.0.0.1, localhost and --host); '*' allows any")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES, help=RUNTIME_HELP)
    p.add_argument("--max-upload-mb", type=positive_float, default=20.0, help="largest request body; larger uploads get 413")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch / onnxruntime intra-op threads per request (concurrent requests use the other cores)")
    p.add_argument("--api-key-file", help="require the key in this file (X-API-Key header) on every endpoint but "
                                          "/health; default: $ANOMALY_API_KEY if set, else no key")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes, each loading the run once")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("station", help="screenshot of the inspection page on one image, in headless Chromium")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--image", required=True, help="the part to upload (use a synthetic one for committed figures)")
    p.add_argument("--out", default="docs/station.png")
    p.add_argument("--runtime", default="torch", choices=("torch", "onnx"))
    p.set_defaults(func=cmd_station)

    p = sub.add_parser("loadtest", help="load-test a running service on this machine (loopback only)")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--requests", type=positive_int, default=200)
    p.add_argument("--concurrency", type=positive_int, default=8)
    p.add_argument("--image", help="image file to send (default: a generated 256 px image)")
    p.add_argument("--timeout-s", type=float, default=300.0, help="stop after this many seconds")
    p.set_defaults(func=cmd_loadtest)

    p = sub.add_parser("export", help="export a run's detector (backbone + scoring) as one ONNX graph")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--format", default="onnx", choices=("onnx",))
    p.add_argument("--out", help="output file (default RUN_DIR/model.onnx)")
    p.add_argument("--int8", choices=("dynamic", "static"),
                   help="also write RUN_DIR/model.int8-MODE.onnx (backbone convolutions in int8; static: calibrated "
                        "on good training images) and compare it with the float graph on the test split")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("latency", help="per-image latency, PyTorch vs onnxruntime, batch 1 and 8")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--image-size", type=image_side, help="input side in px (default: the run's image size)")
    p.add_argument("--repeats", type=positive_int, default=20)
    p.add_argument("--threads", type=positive_int, help="intra-op threads for both runtimes (default: all cores)")
    p.set_defaults(func=cmd_latency)


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from anomaly.station.service import create_app
    from anomaly.station.web import api_key_from, settings_to_env

    set_torch_threads(args.threads)
    hosts = allowed_hosts(args.host, [h.strip() for h in args.allowed_hosts.split(",") if h.strip()])
    settings = dict(run_dir=str(Path(args.run_dir).resolve()), runtime=args.runtime, threads=args.threads,
                    max_upload_bytes=int(args.max_upload_mb * 2**20), allowed_hosts=hosts)
    api_key = api_key_from(args.api_key_file)  # checked here, so a bad key file exits 2 before any worker starts
    limit_allocator()  # this process, and (through MALLOC_* variables) the worker processes
    if args.workers == 1:
        app = create_app(**settings, api_key=api_key)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
        return
    os.environ.update(settings_to_env(**settings))  # inherited by the worker processes
    if api_key is not None:
        os.environ["ANOMALY_API_KEY"] = api_key
    uvicorn.run("anomaly.station.service:create_app_from_env", factory=True, workers=args.workers, host=args.host,
                port=args.port, log_level="info")


def cmd_station(args: argparse.Namespace) -> None:
    from anomaly.station.browser import screenshot_station

    print(json.dumps(screenshot_station(args.run_dir, args.image, args.out, runtime=args.runtime)))


def cmd_loadtest(args: argparse.Namespace) -> None:
    from anomaly.station.loadtest import run_loadtest

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    if args.image:
        require_regular_file(Path(args.image), f"--image {args.image}")  # a FIFO would block here
    image = Path(args.image).read_bytes() if args.image else None
    result = run_loadtest(args.url, n_requests=args.requests, concurrency=args.concurrency, image=image,
                          timeout_s=args.timeout_s)
    print(json.dumps(result, indent=2))


def cmd_export(args: argparse.Namespace) -> None:
    if args.int8:
        from anomaly.station.quantize import compare_int8

        print(json.dumps(compare_int8(args.run_dir, mode=args.int8), indent=2))
        return
    print(json.dumps(export_run(load_run(args.run_dir, device="cpu"), out=args.out), indent=2))


def cmd_latency(args: argparse.Namespace) -> None:
    from anomaly.station.loadtest import latency_markdown, measure_latency

    print(latency_markdown(measure_latency(args.run_dir, image_size=args.image_size, repeats=args.repeats,
                                           threads=args.threads)))
