"""Course scaffolding: lesson headers with the build's measured run time, recaps, the glossary (= docs/course.md)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from anomaly.study import course
from anomaly.study.report import notebook_dir

ROOT = Path(__file__).resolve().parents[1]


def test_every_notebook_has_a_lesson_header_try_this_and_recap():
    for path in sorted(notebook_dir().glob("[0-9][0-9]_*.ipynb")):
        stem, lesson = course.lesson_for(path.stem)
        source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
        assert "course.header(" in source and f'course.recap("{stem}")' in source, path.name
        assert source.count("*Try this:*") >= 2, path.name
        assert lesson.learn and lesson.needs and lesson.recap
        assert all(term in course.GLOSSARY for term in lesson.terms)


def test_header_reads_the_run_time_from_the_build_record(tmp_path):
    assert "not measured yet" in course.header("03_evaluation_padim", tmp_path / "timings.json")
    record = course.write_timings(tmp_path, {"03_evaluation_padim": 12.3, "03_evaluation_patchcore": 20.0,
                                             "05_method_comparison": 90.0}, course.machine())
    assert json.loads((tmp_path / course.TIMINGS_FILE).read_text()) == record
    text = course.header("03_evaluation_padim", tmp_path)
    assert "12 s at the last build" in text and f"{record['machine']['cores']} cores" in text
    assert "2.0 min for the whole report" in text and record["machine"]["cpu"] in text
    assert "What you will learn" in text and "What you need first" in text and "Terms used" in text
    assert "32 s at the last build" in course.header("03_evaluation", tmp_path)  # both methods' runs
    assert "did not run" in course.header("01_data_exploration", tmp_path)


def test_stamp_replaces_the_run_time_of_executed_headers(tmp_path):
    nb = new_notebook(cells=[new_code_cell("header", outputs=[new_output(
        "display_data", data={"text/markdown": course.header("04_heatmap_gallery", tmp_path)})])])
    nbformat.write(nb, tmp_path / "04_heatmap_gallery.ipynb")
    record = course.write_timings(tmp_path, {"04_heatmap_gallery": 7.0}, course.machine())
    assert course.stamp_run_times(tmp_path, ["04_heatmap_gallery", "missing"], record) == [
        tmp_path / "04_heatmap_gallery.ipynb"]
    text = nbformat.read(tmp_path / "04_heatmap_gallery.ipynb", as_version=4).cells[0].outputs[0].data["text/markdown"]
    assert "7 s at the last build" in text and "not measured" not in text


def test_register_a_lesson_for_a_new_notebook():
    lesson = course.Lesson("Your own parts", ("a",), ("b",), ("FRR",), ("c",))
    course.register("06_your_own_parts", lesson)
    try:
        assert course.lesson_for("06_your_own_parts")[1] is lesson
        assert "Your own parts" not in course.header("06_your_own_parts", "/nonexistent")  # title is the notebook's
    finally:
        course.LESSONS.pop("06_your_own_parts")
    with pytest.raises(ValueError, match="not in the glossary"):
        course.register("07_x", course.Lesson("x", (), (), ("no such term",), ()))
    with pytest.raises(ValueError, match="no lesson"):
        course.lesson_for("99_nothing")


def test_docs_course_holds_the_glossary_and_how_to_get_the_student_version():
    text = (ROOT / "docs" / "course.md").read_text()
    assert course.glossary_markdown() in text
    assert "make student" in text and "anomaly report --student" in text
    for term in ("FRR", "recall", "AUROC", "PRO / AUPRO", "coreset", "conformal threshold", "cross-fitting"):
        assert f"**{term}**" in text
    assert "docs/course.md" in (ROOT / "README.md").read_text()
