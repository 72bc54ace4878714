"""HTML export that reads offline: formulas pre-rendered to MathML, no CDN scripts.

nbconvert's templates typeset ``$...$`` in the browser with MathJax (and load require.js) from a
CDN, so a report opened without internet shows raw LaTeX. :func:`export_html` instead converts
every ``$...$`` / ``$$...$$`` of the markdown cells (and of ``text/markdown`` outputs) to MathML
with the PyPI package ``latex2mathml`` before export -- browsers render MathML natively -- and
removes the MathJax and require.js ``<script>`` tags (and MathJax's inline configuration) from
the page. Code spans and fenced code blocks are left as they are.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path

import nbformat

logger = logging.getLogger(__name__)

_CODE = re.compile(r"(```.*?```|~~~.*?~~~|`[^`\n]*`)", re.DOTALL)  # fenced blocks and code spans: no maths inside
_DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.DOTALL)
_INLINE = re.compile(r"(?<![\\$])\$(?![\s$])([^$\n]+?)(?<![\s\\])\$(?!\$)")
_CDN_SCRIPTS = re.compile(
    r"<script[^>]*src=\"[^\"]*(?:mathjax|require)[^\"]*\"[^>]*>\s*</script>"
    r"|<script type=\"text/x-mathjax-config\">.*?</script>", re.DOTALL | re.IGNORECASE)


def latex_to_mathml(latex: str, display: bool = False) -> str:
    """One formula as a MathML element (``display="block"`` for ``$$...$$``)."""
    from latex2mathml.converter import convert

    return convert(latex.strip(), display="block" if display else "inline")


def render_math(markdown: str) -> str:
    """``markdown`` with ``$$...$$`` and ``$...$`` replaced by MathML (outside code); bad LaTeX is kept verbatim."""
    parts = _CODE.split(markdown)
    for i in range(0, len(parts), 2):  # even parts are outside code
        text = _DISPLAY.sub(lambda m: _convert(m, True), parts[i])
        parts[i] = _INLINE.sub(lambda m: _convert(m, False), text)
    return "".join(parts)


def _convert(match: re.Match, display: bool) -> str:
    try:
        return latex_to_mathml(match.group(1), display)
    except Exception as err:  # latex2mathml raises several types for unsupported commands
        logger.warning("kept %r as text: latex2mathml cannot convert it (%s)", match.group(0)[:60], err)
        return match.group(0)


_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def prerender_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` with the maths of markdown cells and markdown outputs rendered to MathML.

    Interactive widgets cannot run in a static page (their JavaScript would come from a CDN): their view
    and state are dropped and their plain-text form is kept.
    """
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = render_math(cell.source)
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            data.pop(_WIDGET_VIEW, None)
            if "text/markdown" in data:
                text = data["text/markdown"]
                data["text/markdown"] = render_math("".join(text) if isinstance(text, list) else text)
    return nb


def strip_cdn_scripts(page: str) -> str:
    """Remove the MathJax / require.js CDN script tags and MathJax's configuration script."""
    return _CDN_SCRIPTS.sub("", page)


def export_html(notebook: Path) -> Path:
    """Write ``notebook`` as self-contained offline HTML next to it (figures embedded, maths as MathML)."""
    from nbconvert import HTMLExporter

    nb = prerender_notebook(nbformat.read(notebook, as_version=4))
    body, _ = HTMLExporter().from_notebook_node(nb)
    target = Path(notebook).with_suffix(".html")
    target.write_text(strip_cdn_scripts(body), encoding="utf-8")
    return target
