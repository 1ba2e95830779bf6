"""Griffe extension for the API reference: reads the package's reST-flavoured Google docstrings as Markdown.

The docstrings are written for ``help()`` and doctests: Sphinx roles (``:class:`~pkg.Name```) and
``Example:`` sections of ``>>>`` lines. mkdocstrings renders Markdown, so roles become code spans (the short
name with ``~``, the full path without) and ``Example:`` becomes griffe's ``Examples:`` section, whose
``>>>`` lines render as code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
# "a, b, c: shared description" in an Args section: griffe reads one name per entry
_GROUPED = re.compile(r"^([ \t]+)(\**\w+)((?:,\s+\**\w+)+): ", re.MULTILINE)


def _role(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def _grouped(match: re.Match[str]) -> str:
    others = ", ".join(f"`{n.strip()}`" for n in match.group(3).split(",") if n.strip())
    return f"{match.group(1)}{match.group(2)}: (and {others}) "


def to_markdown(text: str) -> str:
    r"""``text`` with Sphinx roles as code spans, ``Example:`` headers as ``Examples:`` and grouped parameter
    entries (``a, b: ...``) as one entry for the first name that names the others.

    Example:
        >>> to_markdown("See :class:`~a.b.Name` and :func:`a.f`.")
        'See `Name` and `a.f`.'
        >>> to_markdown("Args:\n    width, height: the size.")
        'Args:\n    width: (and `height`) the size.'
        >>> to_markdown("Args:\n    a, b,\n        c: the three.")
        'Args:\n    a: (and `b`, `c`) the three.'
    """
    return _GROUPED.sub(_grouped, _EXAMPLE.sub(r"\1Examples:", _ROLE.sub(_role, text)))


class SphinxDocstrings(griffe.Extension):
    """Rewrites every docstring with :func:`to_markdown` as griffe loads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
