"""The README is a guide and docs/ holds the study: every relative link resolves, no lab-notebook history."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


def test_slug_follows_github():
    assert slug("Which runtime: `--runtime auto`") == "which-runtime---runtime-auto"
    assert slug("Folder inspection: the CSV") == "folder-inspection-the-csv"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path):
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    assert not broken, f"{page.name}: {broken}"


def test_readme_is_a_guide():
    """About 200 lines: the question, the answer in one table, the two commands, your own images, links."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for needed in ("make report", "make test", "make test-fast", "anomaly check-data", "anomaly fit --method",
                   "anomaly serve", "docs/results.md", "docs/own-data.md", "flag every part", "(baseline)"):
        assert needed in text, needed
    linked = {Path(t.partition("#")[0]).name for t in links(ROOT / "README.md")}
    unlinked = {p.name for p in PAGES[1:]} - linked
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_history_of_who_measured_what_when(page: Path):
    """Numbers keep their command and machine load; not the stop, session or run folder they came from."""
    text = page.read_text()
    history = re.compile(r"this stop|previous stop|this session|earlier session|that day|issue \d+|"
                         r"weights/benchmark\d+|\b20\d\d-\d\d-\d\d\b", re.I)
    assert not history.findall(text), f"{page.name}: {sorted(set(history.findall(text)))}"
