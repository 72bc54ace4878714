"""Where the benchmark's fit + evaluate jobs run: here, one after another, or as Ray tasks.

A job is one (category, method, seed) setting -- a :class:`~anomaly.config.RunConfig` -- and the
run folder it writes (:func:`anomaly.pipeline.fit_and_evaluate`). An executor runs a list of jobs and yields, in
the order given, each job with the 1-minute load average before and after it; the benchmark
reads the metrics from the run folders it names, so the table does not depend on the executor.

* :class:`LocalExecutor` runs them in turn, each in a fresh spawned process (its own peak RSS),
  or in this process (``isolate=False``).
* :class:`RayExecutor` submits every job at once as a Ray task requesting ``cpus_per_job`` CPUs
  (and a GPU where the cluster has one and the job's device allows it); the cluster runs as many
  side by side as fit. Each task runs in a fresh worker process (``max_calls=1``, a peak RSS of
  its own) with torch's threads set to its CPUs. Run folders are written where the driver names
  them: a path every node sees (a shared mount). A fit swaps its folder into place only when
  complete (:mod:`anomaly.runs`), so a job killed with its node leaves no half run, and
  ``--resume`` skips the jobs whose run is already evaluated.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from anomaly.config import RunConfig
from anomaly.inference import set_torch_threads
from anomaly.pipeline import fit_and_evaluate
from anomaly.station.ray_cluster import RayUnavailableError, cluster_size, ray_session

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One fit + evaluate into ``run_dir``."""

    config: RunConfig
    run_dir: Path


@dataclass(frozen=True)
class JobResult:
    job: Job
    load_before: float
    load_after: float


def run_job(config: RunConfig, run_dir: str, threads: int | None = None) -> None:
    """A job in a process of its own (spawned, or a Ray worker): logging on, torch's intra-op ``threads``, then
    :func:`~anomaly.pipeline.fit_and_evaluate`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if threads is not None:
        set_torch_threads(threads)
    fit_and_evaluate(config, run_dir)


class LocalExecutor:
    """The jobs one after another on this machine; each in a fresh spawned process unless ``isolate=False``."""

    def __init__(self, isolate: bool = True) -> None:
        self.isolate = isolate

    def run(self, jobs: Sequence[Job]) -> Iterator[JobResult]:
        for job in jobs:
            before = os.getloadavg()[0]
            logger.info("benchmark: %s / %s -> %s (load %.1f)", job.config.category, job.config.method, job.run_dir,
                        before)
            if self.isolate:
                process = multiprocessing.get_context("spawn").Process(target=run_job,
                                                                       args=(job.config, str(job.run_dir)))
                process.start()
                process.join()
                if process.exitcode != 0:
                    raise RuntimeError(f"benchmark run {job.config.category}/{job.config.method} failed (exit code "
                                       f"{process.exitcode}); see the log above and {job.run_dir}")
            else:
                fit_and_evaluate(job.config, str(job.run_dir))
            yield JobResult(job, before, os.getloadavg()[0])


class RayExecutor:
    """The jobs as Ray tasks on the cluster at ``address`` (default: a local Ray for the call).

    Args:
        cpus_per_job: CPUs each task requests and torch threads it uses (default 1).
    """

    def __init__(self, address: str | None = None, cpus_per_job: int = 1) -> None:
        if cpus_per_job < 1:
            raise ValueError(f"cpus_per_job must be >= 1, got {cpus_per_job}")
        self.address, self.cpus_per_job = address, cpus_per_job

    def run(self, jobs: Sequence[Job]) -> Iterator[JobResult]:
        if not jobs:
            return
        with ray_session(self.address) as ray:
            cpus, gpus = cluster_size(ray)
            if cpus < self.cpus_per_job:
                raise RayUnavailableError(f"no node of the Ray cluster ({cpus:g} CPUs) can run a job of "
                                          f"{self.cpus_per_job} CPUs")
            task = ray.remote(max_calls=1, max_retries=0)(run_job)
            before = os.getloadavg()[0]
            refs = []
            for job in jobs:
                use_gpu = gpus >= 1 and job.config.device != "cpu"
                config = job.config.replace(data=str(Path(job.config.data).resolve()))  # a worker's cwd is not ours
                refs.append(task.options(num_cpus=self.cpus_per_job, num_gpus=1 if use_gpu else 0).remote(
                    config, str(job.run_dir.resolve()), self.cpus_per_job))
            logger.info("benchmark: %d job(s) submitted to Ray (%g CPUs, %g GPUs)", len(refs), cpus, gpus)
            for job, ref in zip(jobs, refs):
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as err:
                    last = [line for line in str(err).splitlines() if line.strip()][-1:] or [type(err).__name__]
                    raise RuntimeError(f"benchmark run {job.config.category}/{job.config.method} failed on Ray: "
                                       f"{last[0].strip()}; see {job.run_dir}") from None
                yield JobResult(job, before, os.getloadavg()[0])
