"""Coreset subsampling of PatchCore's memory bank (Roth et al., CVPR 2022, Sec. 3.2).

Every sampler has ``run(features) -> indices``: given ``(N, D)`` patch features it returns the
indices of the ``min(N, max(minimum, int(N * ratio)))`` rows kept in the memory bank (at least 1).

:class:`GreedyCoresetSampler` is the reference implementation's ``ApproximateGreedyCoresetSampler``
(amazon-science/patchcore-inspection): features are randomly projected (Johnson-Lindenstrauss)
to ``projection_dim`` dims; each point's initial distance is its mean distance to
``num_starting_points`` random points; then, greedily, the point farthest from everything
selected so far is added (the 2-approximate k-center algorithm of Gonzalez, 1985).

The greedy loop is exact but *lazy*: the rows are cut into blocks, each remembering an upper
bound of its largest min-distance (min-distances only ever shrink) and how many selected
points it has already been compared with. Only the block holding the largest bound is brought
up to date, in one small matrix product against the points selected since its last update,
until the top block is fresh; its argmax is then the global argmax. The selection equals the
plain O(k N) loop's, but a step touches a few cache-resident blocks instead of all N rows,
which is what makes a 1 % coreset of ~500k patches affordable on a 2-core CPU.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def coreset_size(n: int, ratio: float, minimum: int = 1) -> int:
    """Number of rows kept from ``n`` at sampling ``ratio``: at least ``minimum`` (and 1), at most ``n``."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
    if minimum < 0:
        raise ValueError(f"coreset minimum size must be >= 0, got {minimum}")
    return min(n, max(1, minimum, int(n * ratio)))


class RandomSampler:
    """Uniform random subset (the baseline the PatchCore paper compares the greedy coreset with)."""

    def __init__(self, ratio: float, seed: int = 0, minimum: int = 1) -> None:
        coreset_size(1, ratio, minimum)  # validates the arguments
        self.ratio, self.seed, self.minimum = ratio, seed, minimum

    def run(self, features: torch.Tensor) -> torch.Tensor:
        """Args: features (N, D). Returns: (k,) int64 indices, sorted."""
        n = features.shape[0]
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randperm(n, generator=generator)[: coreset_size(n, self.ratio, self.minimum)].sort().values


class GreedyCoresetSampler:
    """Approximate greedy coreset (k-center) as in PatchCore's reference code; see the module docstring.

    Args:
        ratio: fraction of rows kept.
        minimum: keep at least this many rows (all of them when there are fewer).
        projection_dim: random-projection dimension for the distance computations (reference: 128);
            no projection when the features have at most this many dims.
        num_starting_points: random points whose mean distance initialises the greedy (reference: 10).
        seed: seeds the projection and the starting points.
        block_size: rows per lazily-updated block.
    """

    def __init__(self, ratio: float, projection_dim: int = 128, num_starting_points: int = 10,
                 seed: int = 0, block_size: int = 4096, minimum: int = 1) -> None:
        coreset_size(1, ratio, minimum)
        self.ratio, self.projection_dim, self.minimum = ratio, projection_dim, minimum
        self.num_starting_points, self.seed, self.block_size = num_starting_points, seed, block_size

    def run(self, features: torch.Tensor) -> torch.Tensor:
        """Args: features (N, D). Returns: (k,) int64 indices in selection order."""
        return self.select(features, coreset_size(features.shape[0], self.ratio, self.minimum))

    def select(self, features: torch.Tensor, k: int) -> torch.Tensor:
        """The greedy's first ``k`` picks among ``features`` (N, D): (min(k, N),) int64 indices."""
        n = features.shape[0]
        if k >= n:
            return torch.arange(n)
        generator = torch.Generator().manual_seed(self.seed)
        x = features.float()
        if x.shape[1] > self.projection_dim:
            projection = torch.randn(x.shape[1], self.projection_dim, generator=generator).to(x.device)
            x = x @ (projection / self.projection_dim**0.5)  # (N, d')
        sq = (x * x).sum(1)  # (N,)
        starts = torch.randint(n, (min(self.num_starting_points, n),), generator=generator).to(x.device)
        min_d2 = squared_distances(x, sq, x[starts], sq[starts]).sqrt().mean(1).square()  # (N,)
        with torch_threads(1):  # tiny sequential ops: OpenMP fork/join would cost more than it saves
            return lazy_greedy(x, sq, min_d2, k, self.block_size)


def squared_distances(a: torch.Tensor, a_sq: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ``(Na, Nb)`` from rows and their squared norms."""
    return torch.addmm(a_sq[:, None], a, b.T, alpha=-2.0).add_(b_sq[None, :]).clamp_(min=0.0)


def lazy_greedy(x: torch.Tensor, sq: torch.Tensor, min_d2: torch.Tensor, k: int, block_size: int,
                max_pending: int = 1024) -> torch.Tensor:
    """Farthest-point selection of ``k`` rows of ``x`` (N, d), starting from distances ``min_d2`` (N,).

    ``min_d2`` is updated in place; selected rows get ``-inf`` so they are never picked twice.

    Returns:
        (k,) int64 indices in selection order, identical to the plain greedy loop's.
    """
    n = x.shape[0]
    starts = list(range(0, n, block_size))
    bound = torch.stack([min_d2[s:s + block_size].max() for s in starts])  # (n_blocks,) upper bounds
    applied = [0] * len(starts)  # selected points each block has been compared with
    rows = torch.cat([x, x.new_ones(n, 1)], dim=1)  # (N, d + 1): [x, 1]
    centres = x.new_empty(k, x.shape[1] + 1)  # [-2 c, |c|^2]: rows @ centres.T = |c|^2 - 2 x.c
    selected = torch.empty(k, dtype=torch.long)
    for step in tqdm(range(k), desc="coreset", leave=False, mininterval=1.0):
        while True:
            b = int(torch.argmax(bound))
            if applied[b] == step:
                break
            lo, hi = starts[b], min(starts[b] + block_size, n)
            block = min_d2[lo:hi]
            for c0 in range(applied[b], step, max_pending):
                c1 = min(c0 + max_pending, step)
                partial = (centres[c0:c1] @ rows[lo:hi].T).amin(0)  # (hi - lo,)
                torch.minimum(block, partial.float().add_(sq[lo:hi]).clamp_(min=0.0), out=block)
            bound[b], applied[b] = block.max(), step
        i = starts[b] + int(torch.argmax(min_d2[starts[b]:starts[b] + block_size]))
        selected[step] = i
        centres[step, :-1], centres[step, -1] = -2.0 * x[i], sq[i]
        min_d2[i] = float("-inf")
    return selected


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, restoring the previous count afterwards.

    Loops of many small ops (the greedy steps, batched LAPACK calls on 100 x 100 matrices) are
    far faster on one thread: each op's OpenMP fork/join costs more than the op, and much more
    when other processes share the cores.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
