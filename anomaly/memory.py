"""Process memory: glibc allocator settings that keep the peak down, and the peak RSS of this process.

Large image decodes free hundreds of MB at a time. glibc's default allocator then (a) raises its
mmap threshold to the size just freed, so the next large blocks come from the heap and are not given
back to the system, and (b) keeps one heap arena per thread (up to 8 per core), each holding on to
what its thread freed. Under concurrent uploads the resident size grows with the number of threads
and stays there after the load. :func:`limit_allocator` fixes the mmap threshold (large blocks are
mapped and returned on free) and caps the arenas at two; ``anomaly serve`` calls it before it
starts, and sets the same ``MALLOC_*`` variables for its worker processes. See
docs/robustness.md for the measurements.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
from typing import MutableMapping

logger = logging.getLogger(__name__)

MMAP_THRESHOLD = 4 * 2**20  # bytes: blocks this large are mmap-ed and returned to the system on free
ARENA_MAX = 2
KEEP_ENV = "ANOMALY_MALLOC"  # "keep": leave the allocator as it is
_M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
_M_ARENA_MAX = -8


def limit_allocator(env: MutableMapping[str, str] | None = None) -> bool:
    """Fix glibc's mmap threshold and cap its arenas in this process; set the ``MALLOC_*`` variables in
    ``env`` (default ``os.environ``) for processes started after, unless already set there (their
    values are then used). ``ANOMALY_MALLOC=keep`` in ``env`` leaves everything as it is.

    Returns:
        Whether this process's allocator was changed (False where ``mallopt`` does not exist: not glibc).
    """
    env = os.environ if env is None else env
    if env.get(KEEP_ENV) == "keep":  # e.g. jemalloc / tcmalloc preloaded, or to measure the defaults
        logger.info("%s=keep: the allocator keeps its settings", KEEP_ENV)
        return False
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
    env.setdefault("MALLOC_ARENA_MAX", str(ARENA_MAX))
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        logger.info("no glibc mallopt here: the allocator keeps its defaults")
        return False
    changed = bool(mallopt(_M_MMAP_THRESHOLD, int(env["MALLOC_MMAP_THRESHOLD_"])))
    changed &= bool(mallopt(_M_ARENA_MAX, int(env["MALLOC_ARENA_MAX"])))
    return changed


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
