r"""MkDocs hook: render every formula to MathML when the site is built.

``pymdownx.arithmatex`` (generic mode) wraps the formulas of the pages, and of the docstrings
that mkdocstrings renders, in ``<span class="arithmatex">\(...\)</span>`` and
``<div class="arithmatex">\[...\]</div>``.  This hook replaces each wrapper by the MathML that
``latex2mathml`` makes of it, so the pages need no script and no network to show their maths
(browsers render MathML natively).  Formulas in headings reach the table of contents as plain
``\(...\)`` text; those are converted too.
"""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

_WRAPPED = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.DOTALL)
_INLINE = re.compile(r"\\\((.+?)\\\)", re.DOTALL)
_DELIMITERS = {"\\(": ("\\)", "inline"), "\\[": ("\\]", "block")}


def to_mathml(tex: str, display: str = "inline") -> str:
    """MathML for one TeX formula; ``display`` is ``"inline"`` or ``"block"``."""
    # latex2mathml writes \sim as the identifier "~"; it is the relation "distributed as", U+223C.
    return convert(tex.strip(), display=display).replace("<mi>&#x0007E;</mi>", "<mo>&#x0223C;</mo>")


def _replace_wrapped(match: re.Match) -> str:
    body = html.unescape(match.group(2)).strip()
    end, display = _DELIMITERS.get(body[:2], (None, None))
    if end is None or not body.endswith(end):
        raise ValueError(f"mathml hook: unexpected arithmatex content {body[:60]!r}")
    return to_mathml(body[2:-2], display)


def render_math(page_html: str) -> str:
    """Replace every arithmatex wrapper in ``page_html`` by MathML."""
    return _WRAPPED.sub(_replace_wrapped, page_html)


def _render_toc(items) -> None:
    for item in items:
        item.title = _INLINE.sub(lambda m: to_mathml(html.unescape(m.group(1))), item.title)
        _render_toc(item.children)


def on_page_content(html_text: str, page, config, files) -> str:
    _render_toc(page.toc)
    return render_math(html_text)
