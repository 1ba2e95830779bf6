"""The README's troubleshooting table of bad inputs is true: every row raises, with the message shown."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.utilities.exceptions import MisconfigurationException

import lightning_xai.callbacks as callbacks

README = Path(__file__).resolve().parents[1] / "README.md"


def _rows() -> list[tuple[str, str, str]]:
    text = README.read_text()
    block = text.split("<!-- bad-input-table:start -->")[1].split("<!-- bad-input-table:end -->")[0]
    rows = []
    for line in block.strip().splitlines()[2:]:  # header and rule
        cls, arg, message = (c.strip() for c in line.strip().strip("|").split(" | ", 2))
        rows.append((cls.strip("`"), arg.strip("`"), message))
    return rows


def _kwargs(arg: str) -> dict[str, Any]:
    call = ast.parse(f"f({arg})", mode="eval").body
    assert isinstance(call, ast.Call) and not call.args
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords}


ROWS = _rows()


def test_the_table_covers_every_callback_with_at_least_20_rows() -> None:
    assert len(ROWS) >= 20
    public = {n for n in callbacks.__all__ if n.endswith(("Callback", "Monitor")) and n != "XAICallback"}
    assert {cls for cls, _, _ in ROWS} == public


@pytest.mark.parametrize(("cls", "arg", "message"), ROWS, ids=[f"{c}-{a}" for c, a, _ in ROWS])
def test_bad_input_raises_the_documented_message(cls: str, arg: str, message: str) -> None:
    kwargs = _kwargs(arg)
    with pytest.raises(MisconfigurationException) as info:
        getattr(callbacks, cls)(**kwargs)
    text = str(info.value)
    shown = message.removesuffix(" ...")
    assert text.startswith(shown), (text, shown)
    # the message names what was wrong: the argument and its value (or the offending key of a mapping)
    ((name, value),) = kwargs.items()
    assert name in text or (isinstance(value, str) and repr(value) in text)
    named = [repr(k) for k in value] if isinstance(value, dict) else [repr(value), str(value)]
    assert any(n in text for n in named), (text, named)
    if re.search(r"choose", text):  # a fixed set of choices is listed
        assert "[" in text or "'first'" in text
