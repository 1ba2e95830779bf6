"""Escaping and formatting helpers shared by the report's pages and views."""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["e", "fmt", "html_table", "is_number", "num", "plural", "pretty", "short", "slug", "tree_html"]


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _slug(text: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_") or "x"


def _num(value: Any) -> float | None:
    """A finite float, or ``None`` for anything that is not a finite number."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


def _int(value: Any) -> int:
    v = _num(value)
    return int(v) if v is not None and v > 0 else 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    """Short text for a table cell or a number."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
        return text if len(text) <= 240 else text[:237] + "..."
    return str(value)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: max(1, n - 1)] + "…"


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=1, ensure_ascii=False, allow_nan=True, default=str)


def _tree_html(node: Any, counter: list[int], depth: int = 0) -> str:
    """A nested list for a ``{"name", "tokens", "edge", "children"}`` tree (bounded in size)."""
    if not isinstance(node, Mapping) or counter[0] > 400 or depth > 12:
        return ""
    counter[0] += 1
    facts = []
    if node.get("tokens") is not None:
        facts.append(f"{_fmt(node.get('tokens'))} tokens")
    if _num(node.get("edge")) is not None:
        facts.append(f"edge {_fmt(node.get('edge'))}")
    if node.get("routed"):
        facts.append("routed")
    kids = [c for c in node.get("children") or [] if isinstance(c, Mapping)]
    inner = "".join(_tree_html(c, counter, depth + 1) for c in kids)
    fact = f' <span class="muted">{_e(", ".join(facts))}</span>' if facts else ""
    return (
        f"<li><code>{_e(node.get('name', '?'))}</code>{fact}"
        + (f'<ul class="tree">{inner}</ul>' if inner else "")
        + "</li>"
    )


def _html_table(
    columns: Sequence[Any],
    rows: Sequence[Sequence[Any]],
    attrs: Mapping[str, str] | None = None,
    row_class: Sequence[str] | None = None,
) -> str:
    extra = "".join(f' {k}="{_e(v)}"' for k, v in (attrs or {}).items())
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        cls = row_class[i] if row_class and i < len(row_class) and row_class[i] else ""
        cells = "".join(
            f'<td class="num">{_e(_fmt(v))}</td>' if _is_number(v) else f"<td>{_e(_fmt(v))}</td>" for v in row
        )
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return f"<table{extra}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# the names the views use
e, slug, num, fmt, plural, short, pretty, tree_html, html_table, is_number = (
    _e,
    _slug,
    _num,
    _fmt,
    _plural,
    _short,
    _pretty,
    _tree_html,
    _html_table,
    _is_number,
)
