"""The troubleshooting table of bad inputs (docs/troubleshooting.md) is true and complete.

True: every row raises, with the message shown. Complete: every ``raise MisconfigurationException`` that a
callback's ``__init__`` can reach is reached by some row, and every argument that ``__init__`` range-checks
(``check_int`` / ``check_interval``) has a row of its own, so a new check without a row fails here.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_xai import callbacks
from lightning_xai.callbacks.base import XAICallback

TABLE_PAGE = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"
CALLBACK_DIR = Path(callbacks.__file__).resolve().parent
#: what a row's values may name besides literals (tensors of a wrong shape, objects of a wrong type)
_NAMES = {"torch": torch, "__builtins__": builtins}


def _rows() -> list[tuple[str, str, str]]:
    text = TABLE_PAGE.read_text()
    block = text.split("<!-- bad-input-table:start -->")[1].split("<!-- bad-input-table:end -->")[0]
    rows = []
    for line in block.strip().splitlines()[2:]:  # header and rule
        cls, arg, message = (c.strip() for c in line.strip().strip("|").split(" | ", 2))
        rows.append((cls.strip("`"), arg.strip("`"), message))
    return rows


def _kwargs(arg: str) -> dict[str, Any]:
    """The keyword arguments of a row, in order: the bad one first, then any it needs to be reached."""
    call = ast.parse(f"f({arg})", mode="eval").body
    assert isinstance(call, ast.Call) and not call.args
    out = {}
    for k in call.keywords:
        try:
            out[k.arg] = ast.literal_eval(k.value)
        except ValueError:
            out[k.arg] = eval(compile(ast.Expression(k.value), "<row>", "eval"), dict(_NAMES))
    return out


ROWS = _rows()
PUBLIC = sorted(n for n in callbacks.__all__ if n.endswith(("Callback", "Monitor")) and n != "XAICallback")


def test_the_table_covers_every_callback_with_at_least_20_rows() -> None:
    assert len(ROWS) >= 20
    assert {cls for cls, _, _ in ROWS} == set(PUBLIC)
    assert len({(cls, arg) for cls, arg, _ in ROWS}) == len(ROWS), "a row is listed twice"


def _names_value(text: str, value: Any) -> bool:
    """Whether ``text`` names ``value``: its repr or text, its type as a word ("got int" for an object of a
    wrong type), its shape (for tensors), or one of its keys (for a mapping with a bad entry)."""
    if isinstance(value, dict):
        return any(repr(k) in text for k in value)
    if isinstance(value, torch.Tensor) and str(list(value.shape)) in text:
        return True
    type_named = re.search(rf"\b{type(value).__name__}\b", text) is not None
    return repr(value) in text or str(value) in text or type_named


@pytest.mark.parametrize(("cls", "arg", "message"), ROWS, ids=[f"{c}-{a}" for c, a, _ in ROWS])
def test_bad_input_raises_the_documented_message(cls: str, arg: str, message: str) -> None:
    kwargs = _kwargs(arg)
    with pytest.raises(MisconfigurationException) as info:
        getattr(callbacks, cls)(**kwargs)
    text = str(info.value)
    shown = message.removesuffix(" ...")
    assert text.startswith(shown), (text, shown)
    # the message names what was wrong: the argument (or, for an entry of a mapping, what the entry is:
    # "Concept 'striped'" for concepts) and its value (or the offending key of a mapping); a missing argument
    # (None) is named by its name alone
    name, value = next(iter(kwargs.items()))
    entry = isinstance(value, dict) and name.removesuffix("s").lower() in text.lower()
    assert name in text or entry or (isinstance(value, str) and repr(value) in text), (text, name)
    if value is not None:
        assert _names_value(text, value), (text, value)
    if re.search(r"choose", text):  # a fixed set of choices is listed
        assert "[" in text or "'first'" in text


# ---------------------------------------------------------------------------------------------- completeness
def _functions(tree: ast.AST) -> Iterator[tuple[str, ast.FunctionDef]]:
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            yield f"{cls.name}.{fn.name}", fn


def _is_misconfiguration(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Raise)
        and isinstance(node.exc, ast.Call)
        and getattr(node.exc.func, "id", None) == "MisconfigurationException"
    )


def _raise_sites() -> set[tuple[str, int, int, str]]:
    """Every ``raise MisconfigurationException`` in a callback's ``__init__`` or in the ``_check`` helpers it
    calls: (file, first line, last line, function). ``setup`` raises about the model and data, and is not in
    the table."""
    sites = set()
    for path in sorted(CALLBACK_DIR.glob("*.py")):
        for qualname, fn in _functions(ast.parse(path.read_text())):
            name = qualname.rsplit(".", 1)[1]
            if name == "__init__" or name.startswith("_check"):
                sites |= {
                    (str(path), n.lineno, n.end_lineno or n.lineno, qualname)
                    for n in ast.walk(fn)
                    if _is_misconfiguration(n)
                }
    return sites


def _lines_run_by_the_rows() -> set[tuple[str, int]]:
    seen: set[tuple[str, int]] = set()
    prefix = str(CALLBACK_DIR)

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        if not frame.f_code.co_filename.startswith(prefix):
            return None
        if event == "line":
            seen.add((frame.f_code.co_filename, frame.f_lineno))
        return trace

    for cls, arg, _ in ROWS:
        kwargs = _kwargs(arg)
        previous = sys.gettrace()
        sys.settrace(trace)
        try:
            getattr(callbacks, cls)(**kwargs)
        except MisconfigurationException:
            pass
        finally:
            sys.settrace(previous)
    return seen


def test_every_misconfiguration_raised_in_init_has_a_row() -> None:
    sites = _raise_sites()
    assert len(sites) >= 30  # the scan found the callbacks' checks
    seen = _lines_run_by_the_rows()
    # a statement over several lines may report any of them as the line it runs
    missing = sorted(
        f"{Path(f).name}:{first} ({fn})"
        for f, first, last, fn in sites
        if not any((f, line) in seen for line in range(first, last + 1))
    )
    assert not missing, f"raises no row of the troubleshooting table reaches: {missing}"


def _range_checked(cls: type, cores: bool = True) -> set[str]:
    """Arguments that ``cls.__init__`` passes to ``check_int`` / ``check_interval``, by name, including those
    checked in a loop over ``(name, value, low)`` tuples, and (``cores``) those of its own parameters that the
    lightning-xai core classes it constructs there check (a callback builds its core from its arguments)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls.__init__)))
    loops: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        tuples = isinstance(node, ast.For) and isinstance(node.target, ast.Tuple)
        if tuples and isinstance(node.iter, ast.Tuple):
            first = node.target.elts[0]
            if isinstance(first, ast.Name):
                loops[first.id] = {
                    e.elts[0].value
                    for e in node.iter.elts
                    if isinstance(e, ast.Tuple) and isinstance(e.elts[0], ast.Constant)
                }
    names: set[str] = set()
    scope = vars(sys.modules[cls.__module__])
    params = set(inspect.signature(cls.__init__).parameters)
    for node in ast.walk(tree):
        called = (
            getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if isinstance(node, ast.Call)
            else None
        )
        if called in {"check_int", "check_interval"}:
            arg = node.args[0]
            if isinstance(arg, ast.Constant):
                names.add(arg.value)
            elif isinstance(arg, ast.Name):
                names |= loops.get(arg.id, set())
        core = scope.get(called) if cores and isinstance(called, str) else None
        is_core = isinstance(core, type) and core.__module__.startswith("lightning_xai.")
        if is_core and "callbacks" not in core.__module__ and "__init__" in vars(core):
            names |= _range_checked(core, cores=False) & params
    return names


def test_every_range_checked_argument_has_a_row() -> None:
    first = [(cls, next(iter(_kwargs(arg)))) for cls, arg, _ in ROWS]
    shared = _range_checked(XAICallback)  # checked for every callback: a row of any callback will do
    missing = sorted(shared - {name for _, name in first})
    for cls in PUBLIC:
        own = _range_checked(getattr(callbacks, cls))
        missing += sorted(f"{cls}.{name}" for name in own - {name for c, name in first if c == cls})
    found = sum(len(_range_checked(getattr(callbacks, c))) for c in PUBLIC)
    assert len(shared) >= 3 and found >= 30  # the scan works
    assert not missing, f"range-checked arguments without a row in the troubleshooting table: {missing}"
