r"""Griffe extension: turn the docstrings' reStructuredText maths into arithmatex delimiters.

scoreflow's docstrings write maths as Sphinx does, ``:math:`\alpha``` inline and
``.. math:: ...`` (continued on more-indented lines) for displays, which Markdown would print
literally.  Before mkdocstrings renders a docstring, this extension rewrites them to ``\(...\)``
and ``\[...\]``, which ``pymdownx.arithmatex`` protects from Markdown and the ``mathml`` hook
turns into MathML.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":math:`([^`]+)`")
_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)$")


def rst_math_to_markdown(text: str) -> str:
    r"""``:math:`x``` becomes ``\(x\)``; a ``.. math::`` block (its first line and every more-indented
    line after it) becomes one ``\[...\]`` paragraph at the directive's indentation."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent, body = match["indent"], [match["first"].strip()] if match["first"].strip() else []
        i += 1
        if not body and i < len(lines) and not lines[i].strip():
            i += 1  # the block form: ".. math::", a blank line, then the indented formula
        while i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) > len(indent):
            body.append(lines[i].strip())
            i += 1
        out += [indent + "\\[" + " ".join(body) + "\\]"]
    return _ROLE.sub(lambda m: "\\(" + m.group(1) + "\\)", "\n".join(out))


class RSTMath(griffe.Extension):
    """Rewrite the RST maths of every docstring (see :func:`rst_math_to_markdown`)."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_math_to_markdown(obj.docstring.value)
