"""Offline HTML export: maths pre-rendered to MathML, no CDN scripts, checked in a headless browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from anomaly.station.offline_html import export_html, render_math, strip_cdn_scripts

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_render_math_converts_inline_and_display_but_not_code():
    out = render_math(r"cost $\hat x = g(f(x))$ and $$A=\frac{1}{2}$$ but `$HOME` and 5 $ or 6 $ stay")
    assert out.count("<math") == 2 and 'display="block"' in out
    assert "`$HOME`" in out and "5 $ or 6 $" in out and r"\hat" not in out


def test_strip_cdn_scripts():
    page = ('<script src="https://cdnjs.cloudflare.com/ajax/libs/require.js/2.1.10/require.min.js"></script>'
            '<script src="https://x/mathjax/2.7.7/latest.js?config=TeX"> </script>'
            '<script type="text/x-mathjax-config">init()</script><script>keep()</script>')
    assert strip_cdn_scripts(page) == "<script>keep()</script>"


def _visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style|math)\b.*?</\1>", " ", dom, flags=re.DOTALL | re.IGNORECASE)
    return re.sub(r"<[^>]+>", " ", dom)


@pytest.mark.slow
def test_exported_page_shows_no_latex_source_in_a_headless_browser(tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required on CI (apt-get install chromium)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    notebook = tmp_path / "02_training.ipynb"
    nbformat.write(nbformat.read(NOTEBOOKS / "02_training.ipynb", as_version=4), notebook)
    page = export_html(notebook)
    html = page.read_text()
    assert "cdnjs.cloudflare.com/ajax/libs/mathjax" not in html and "text/x-mathjax-config" not in html
    assert "require.min.js" not in html and "<math" in html
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "<math" in dom
    leftovers = re.findall(r"\$[^$\s][^$]{0,80}\$", _visible_text(dom))
    assert not [t for t in leftovers if "\\" in t or "_" in t or "^" in t], leftovers[:5]
