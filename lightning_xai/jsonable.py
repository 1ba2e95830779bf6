"""Converting explanation payloads to plain JSON types (numpy, torch, paths, enums, dataclasses...)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import sys
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np

__all__ = ["to_jsonable"]


def _is_torch_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is imported already
    return torch is not None and isinstance(obj, torch.Tensor)


def _fmt_path(path: str) -> str:
    return path or "<root>"


_PLAIN = frozenset({type(None), bool, int, float, str})


def to_jsonable(obj: Any, path: str = "payload") -> Any:
    """Return ``obj`` as plain JSON types (dict with ``str`` keys, list, str, int, float, bool, None).

    Converted: numpy scalars and arrays, torch tensors (moved to CPU, detached), tuples and sets (to
    lists; sets sorted when possible), ``pathlib`` paths, enums (their value), dates (ISO strings),
    dataclass instances (a dict of their fields) and mappings whose keys are ``str``, ``int``,
    ``float``, ``bool`` or numpy scalars (keys become strings, as ``json`` would make them anyway).
    Non-finite floats stay floats (``NaN`` / ``Infinity`` in the JSON line, which Python reads back).

    Args:
        obj: the value to convert.
        path: name of ``obj`` used in error messages; nested keys are appended
            (``payload["scores"][2]``).

    Raises:
        TypeError: for anything else, naming the key path of the offending value, e.g.
            ``payload["model"] has type Linear, which cannot be stored in a record``.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):  # includes IntEnum/bool handled above
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, np.generic):
        return _numpy_scalar(obj, path)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "biuf":
            return obj.tolist()
        if obj.dtype.kind in "US":
            return obj.astype(str).tolist()
        if obj.dtype.kind == "O":
            return [to_jsonable(v, f"{path}[{i}]") for i, v in enumerate(obj.tolist())]
        raise TypeError(
            f"{_fmt_path(path)} is a numpy array of dtype {obj.dtype}, which cannot be stored in a record; "
            "convert it to a real-valued or string array first"
        )
    if _is_torch_tensor(obj):
        t = obj.detach().cpu()
        if t.is_complex():
            raise TypeError(
                f"{_fmt_path(path)} is a complex tensor, which cannot be stored in a record; "
                "store its real and imaginary parts separately"
            )
        if t.dtype.is_floating_point and t.dtype not in (
            sys.modules["torch"].float32,
            sys.modules["torch"].float64,
        ):
            t = t.float()  # bfloat16 / float16 have no numpy equivalent for every version
        return t.item() if t.dim() == 0 else t.tolist()
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            key = _json_key(k, path)
            out[key] = to_jsonable(v, f"{path}[{key!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        if all(type(v) in _PLAIN for v in obj):  # the common leaf: numbers and strings, nothing to convert
            return list(obj)
        return [to_jsonable(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        items = list(obj)
        try:
            items = sorted(items)
        except TypeError:
            items = sorted(items, key=repr)
        return [to_jsonable(v, f"{path}[{i}]") for i, v in enumerate(items)]
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value, path)
    if isinstance(obj, PurePath):
        return obj.as_posix()
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: to_jsonable(getattr(obj, f.name), f"{path}.{f.name}") for f in dataclasses.fields(obj)
        }
    raise TypeError(
        f"{_fmt_path(path)} has type {type(obj).__qualname__}, which cannot be stored in a record; "
        "payloads may hold only dicts, lists, str, int, float, bool, None, numpy or torch values "
        "(convert it, e.g. to a list or a str, before putting it in the payload)"
    )


def _numpy_scalar(obj: np.generic, path: str) -> Any:
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, (np.str_, np.bytes_)):
        return str(obj)
    raise TypeError(
        f"{_fmt_path(path)} is a numpy scalar of dtype {obj.dtype}, which cannot be stored in a record"
    )


def _json_key(key: Any, path: str) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (bool, int, float, np.integer, np.floating, np.bool_)):
        return str(to_jsonable(key, path))
    if isinstance(key, enum.Enum):
        return str(key.value)
    raise TypeError(
        f"{_fmt_path(path)} has a key {key!r} of type {type(key).__qualname__}; record payload keys must be "
        "str (or int/float/bool, which become strings)"
    )
