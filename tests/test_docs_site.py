"""The built documentation site: every formula is MathML (no raw TeX, no script), links read as titles.

The site is built once (``mkdocs build --strict``, the ``docs`` extra); a headless Chromium, where
installed, then checks that the browser lays the MathML out as mathematics.
"""

import functools
import html
import http.server
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("latex2mathml") is None,
    reason="the docs extra (mkdocs, latex2mathml) is not installed: pip install -e '.[docs]'",
)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "mkdocs_hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)],
        cwd=ROOT,
        check=True,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    return out


def _text_outside_code(page: str) -> str:
    """The page's visible text with code, scripts and MathML removed."""
    page = re.sub(r"<(pre|code|script|style|math)\b.*?</\1>", " ", page, flags=re.DOTALL)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def test_rst_math_becomes_arithmatex_delimiters():
    rst_math = _load("rst_math")
    text = "Form :math:`dx = f\\,dt` on\n\n.. math:: x_t = \\alpha x_0\n          + \\sigma\\varepsilon,\n\nwith :math:`f`."
    assert rst_math.rst_math_to_markdown(text) == (
        "Form \\(dx = f\\,dt\\) on\n\n\\[x_t = \\alpha x_0 + \\sigma\\varepsilon,\\]\n\nwith \\(f\\)."
    )
    block = "Then\n\n  .. math::\n\n     a = b\n\n  after"
    assert rst_math.rst_math_to_markdown(block) == "Then\n\n  \\[a = b\\]\n\n  after"


def test_every_page_has_mathml_and_no_raw_tex(site):
    pages = sorted(site.glob("*/index.html"))
    assert {p.parent.name for p in pages} >= {"maths", "api", "convergence", "likelihood"}
    for page in pages:
        text = page.read_text(encoding="utf-8")
        visible = _text_outside_code(text)
        for raw in ("\\(", "\\[", ":math:", ".. math::"):
            assert raw not in visible, f"{page.parent.name}: raw {raw!r} near {visible[visible.find(raw) - 60:][:160]!r}"
        assert "mathjax" not in text.lower(), f"{page.parent.name} still loads MathJax"
    for name, least in (("maths", 30), ("api", 100)):
        assert (site / name / "index.html").read_text(encoding="utf-8").count("<math ") >= least, name


def test_link_texts_are_titles_not_file_names(site):
    for page in sorted(site.glob("*/index.html")):
        for target, label in re.findall(r'<a [^>]*href="([^"#]*)"[^>]*>([^<]*)</a>', page.read_text(encoding="utf-8")):
            assert not label.strip().endswith(".md"), f"{page.parent.name}: link to {target} reads {label!r}"


_HARNESS = """<!doctype html><meta charset="utf-8"><pre id="out">pending</pre>
<iframe id="page" src="PAGE" style="width:1200px;height:900px"></iframe>
<script>
document.getElementById("page").onload = () => {
  const doc = document.getElementById("page").contentDocument;
  const box = (e) => e.getBoundingClientRect();
  const fracs = [...doc.querySelectorAll("mfrac")].map((f) => box(f).height / box(f.firstElementChild).height);
  document.getElementById("out").textContent = JSON.stringify({
    maths: doc.querySelectorAll("math").length,
    empty: [...doc.querySelectorAll("math")].filter((m) => box(m).width === 0 || box(m).height === 0).length,
    tallest_fraction: Math.max(...fracs),
    raw_tex: (doc.body.innerText.match(/\\\\[(\\[]/g) || []).length,
  });
};
</script>"""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_chromium_lays_the_formulas_out_as_mathematics(site):
    (site / "harness.html").write_text(_HARNESS.replace("PAGE", "maths/"), encoding="utf-8")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *args: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dom = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", "--dump-dom",
             f"http://127.0.0.1:{server.server_address[1]}/harness.html"],
            capture_output=True, text=True, timeout=120, check=True,
            start_new_session=True,  # its own session: no signal chromium sends its process group reaches pytest
        ).stdout
    finally:
        server.shutdown()
    result = json.loads(html.unescape(re.search(r'<pre id="out">(.*?)</pre>', dom, re.DOTALL).group(1)))
    assert result["maths"] >= 30 and result["empty"] == 0 and result["raw_tex"] == 0, result
    # A fraction laid out as MathML stacks numerator over denominator: taller than its numerator.
    assert result["tallest_fraction"] > 1.5, result
