"""How the near-duplicate test of the data check was set, and what it catches: a command, not a claim.

    python -m anomaly.study.dupbench --data ../shared/datasets/mvtec_ad --categories screw,bottle

For each category it plants re-encoded copies of some of its images (JPEG at several qualities,
resized by several factors, colour or grey; written to a temporary folder, never kept) and prints,
with the thresholds of :mod:`anomaly.datacheck`:

- per kind of copy, the largest thumbnail distance (1 - r) and hash distance to its original, and
  whether every copy is found;
- over all pairs of DISTINCT images of the category, the smallest distances within ``train/good``,
  across training and test, and how many pairs the check calls near-duplicates (on MVTec AD these
  are distinct photos; a flagged pair may still be the same part photographed twice).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from anomaly import datacheck as DC
from anomaly.folders import index_layout
from anomaly.tables import markdown_table

SCALES = (0.25, 0.5, 0.75, 1.0, 1.5)
QUALITIES = (30, 50, 75, 95)
MODES = ("RGB", "L")


def plant_copies(paths: Sequence[Path], out: Path, per_kind: int = 2) -> list[tuple[int, Path, str]]:
    """Write ``per_kind`` copies of spread-out ``paths`` for every (scale, quality, mode): (original index, copy, kind)."""
    copies = []
    kinds = list(itertools.product(SCALES, QUALITIES, MODES))
    for k, (scale, quality, mode) in enumerate(kinds):
        for r in range(per_kind):
            i = (k * per_kind + r) * 7919 % len(paths)
            with Image.open(paths[i]) as img:
                copy = img.convert(mode)
            copy = copy.resize((max(1, round(copy.width * scale)), max(1, round(copy.height * scale))),
                               Image.Resampling.BICUBIC)
            target = out / f"copy_{k:03d}_{r}.jpg"
            copy.save(target, "JPEG", quality=quality)
            copies.append((i, target, f"x{scale:g} q{quality} {mode}"))
    return copies


def category_margins(root: str | Path, category: str) -> dict:
    """Distances of planted copies to their originals, and of distinct image pairs, for one MVTec AD category."""
    index = index_layout({"data": str(root), "category": category})
    originals = index.good + index.test_good + [p for p, _ in index.defective]
    n_train = len(index.good)
    with tempfile.TemporaryDirectory() as tmp:
        copies = plant_copies(originals, Path(tmp))
        paths = originals + [c for _, c, _ in copies]
        records, thumbs = DC.scan(paths, ["train"] * len(paths), ["good"] * len(paths))
    z = DC.unit_rows(thumbs.reshape(len(thumbs), -1))
    distance = 1.0 - z @ z.T  # (N, N)
    bits = np.array([DC._bits(r.phash) for r in records], dtype=bool)

    def hamming(i: int, j: int) -> int:
        return int(np.count_nonzero(bits[i] != bits[j]))

    def near(i: int, j: int) -> bool:
        return bool(distance[i, j] <= DC.NEAR_MAX_DISTANCE and hamming(i, j) <= DC.PHASH_MAX_BITS)

    kinds: dict[str, dict] = {}
    for j, (i, _, kind) in enumerate(copies, start=len(originals)):
        row = kinds.setdefault(kind, {"max_distance": 0.0, "max_bits": 0, "found": 0, "n": 0})
        row.update(max_distance=max(row["max_distance"], float(distance[i, j])),
                   max_bits=max(row["max_bits"], hamming(i, j)), found=row["found"] + near(i, j), n=row["n"] + 1)
    n = len(originals)
    within = [(i, j) for i, j in zip(*np.triu_indices(n_train, 1))]
    across = [(i, j) for i in range(n_train) for j in range(n_train, n)]
    return {"category": category, "n_images": n, "copies": kinds,
            "within_train_min": float(min(distance[i, j] for i, j in within)),
            "within_train_flagged": [(str(originals[i]), str(originals[j]), float(distance[i, j]))
                                     for i, j in within if near(i, j)],
            "across_min": float(min(distance[i, j] for i, j in across)),
            "across_flagged": sum(near(i, j) for i, j in across)}


def margins_markdown(results: Sequence[dict]) -> str:
    """The tables of docs/own-data.md: copies found (of those planted, colour and grey together) and the largest
    distance to the original, per scale and JPEG quality; then the distinct pairs."""
    lines = [f"Thresholds: 1 - r <= {DC.NEAR_MAX_DISTANCE:g} and phash distance <= {DC.PHASH_MAX_BITS} bits.", ""]
    for r in results:
        table = []
        for scale in SCALES:
            cells = []
            for q in QUALITIES:
                rows = [r["copies"][f"x{scale:g} q{q} {m}"] for m in MODES]
                cells.append(f"{sum(x['found'] for x in rows)}/{sum(x['n'] for x in rows)} "
                             f"({max(x['max_distance'] for x in rows):.1e})")
            table.append([f"x{scale:g}", *cells])
        lines += [markdown_table([f"{r['category']}: copies found (largest 1 - r)", *(f"JPEG q{q}" for q in QUALITIES)],
                                 table), ""]
    lines.append(markdown_table(["distinct images", *(r["category"] for r in results)], [
        ["images", *(r["n_images"] for r in results)],
        ["smallest 1 - r within train/good", *(f"{r['within_train_min']:.1e}" for r in results)],
        ["pairs within train/good called near-duplicates", *(len(r["within_train_flagged"]) for r in results)],
        ["smallest 1 - r across training and test", *(f"{r['across_min']:.1e}" for r in results)],
        ["pairs across training and test called near-duplicates", *(r["across_flagged"] for r in results)]],
        align="l" + "r" * len(results)))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="MVTec AD root")
    parser.add_argument("--categories", default="screw,bottle")
    args = parser.parse_args(argv)
    results = [category_margins(args.data, c) for c in args.categories.split(",")]
    print(margins_markdown(results))
    for r in results:
        for a, b, d in r["within_train_flagged"]:
            print(f"{r['category']}: flagged within train/good: {a} {b} (1 - r = {d:.1e})")


if __name__ == "__main__":
    main()
