"""LightningCLI for lightning-xai's callbacks: the presets in ``callbacks/*.yaml`` plus a ``callback_args`` overlay.

``lightning-xai fit`` (also ``validate``, ``test``, ``predict``) runs :class:`XAICLI` on your own model and data::

    lightning-xai fit --config callbacks/all.yaml --config my_overlay.yaml \\
        --model.class_path my_project.Classifier --data.class_path my_project.Data

and ``XAICLI(MyModel, MyData)`` is the same CLI in a script of yours. See the LightningCLI presets section of
the docs (docs/setups.md).
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Sequence
from typing import Any, Optional

from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lightning_xai.callbacks as xai_callbacks

__all__ = ["XAICLI", "apply_callback_args", "configurable_callbacks", "main"]


def configurable_callbacks() -> dict[str, type[Callback]]:
    """The callback classes ``callback_args`` has a section for: every one :mod:`lightning_xai.callbacks` exports.

    Example:
        >>> "LogicRulesCallback" in configurable_callbacks()
        True
    """
    found = {}
    for name in xai_callbacks.__all__:
        cls = getattr(xai_callbacks, name)
        if isinstance(cls, type) and issubclass(cls, Callback) and cls is not xai_callbacks.XAICallback:
            found[name] = cls
    return found


def _init_arguments(cls: type) -> list[tuple[str, Any]]:
    """``(name, type hint)`` of every named ``__init__`` argument of ``cls``, including those its ``**kwargs``
    forward to a base class (as jsonargparse resolves them)."""
    out: dict[str, Any] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        try:
            hints = typing.get_type_hints(klass.__init__)
        except Exception:  # noqa: BLE001 - an unresolvable annotation: accept any value, the class checks it
            hints = {}
        params = inspect.signature(klass.__init__).parameters.values()
        for p in params:
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                out.setdefault(p.name, hints.get(p.name, Any))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return list(out.items())


class XAICLI(LightningCLI):
    """``LightningCLI`` with a ``callback_args`` section for lightning-xai's callbacks.

    ``callback_args.<Class>.<argument>`` (``<Class>`` a callback of :mod:`lightning_xai.callbacks`) sets that
    argument on every callback of that class in ``trainer.callbacks``, over the preset's value; classes the
    preset does not use are skipped, so one overlay serves every preset. It is applied after parsing and
    before anything is instantiated, so its values are built by jsonargparse like the preset's own (``class_path``
    builds objects), they merge key by key across configs and flags, and the config saved with the run shows
    the callbacks as they ran. A ``null`` there keeps the preset's value.

    Use it as your own CLI (``XAICLI(MyModel, MyData)``) or through ``lightning-xai fit --config ...`` with
    ``--model.class_path`` and ``--data.class_path``.

    Example:
        >>> cli = XAICLI(args=["--config", "callbacks/logic_rules.yaml", "--model.class_path",
        ...     "lightning_xai.world.TinyCNN", "--data.class_path", "lightning_xai.world.WorldDataModule"],
        ...     run=False)  # doctest: +SKIP
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name, cls in configurable_callbacks().items():
            group = parser.add_argument_group(
                f"callback_args.{name}",
                f"Arguments set on every {name} in trainer.callbacks (null: keep the preset's value).",
            )
            for arg, hint in _init_arguments(cls):
                # Optional: None marks "not given", so configs and flags merge key by key
                # (typing.Optional, not "hint | None": on Python 3.10 ``Any | None`` is a TypeError)
                arg_type = Optional[hint]  # noqa: UP045
                group.add_argument(f"--callback_args.{name}.{arg}", type=arg_type, default=None)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        overrides: dict[str, dict[str, Any]] = {}
        for name in configurable_callbacks():
            section = config.get(f"callback_args.{name}")
            # vars(): the arguments themselves (items() would flatten a class_path value into its leaves)
            given = {k: v for k, v in vars(section).items() if v is not None} if section is not None else {}
            if given:
                overrides[name] = given
            for key in given:
                # applied once: the saved config (and instantiate_classes) must not see them again
                config[f"callback_args.{name}.{key}"] = None
        callbacks = config.get("trainer.callbacks")
        if isinstance(callbacks, Namespace):  # one callback given without a list
            callbacks = [callbacks]
        try:
            apply_callback_args(callbacks or [], overrides)
        except (ValueError, TypeError) as exc:
            self.parser.error(str(exc))  # a usage error like any other bad argument, not a traceback


def _resolve_class(key: str) -> type:
    """The callback class a key names: a class path or a name in :mod:`lightning_xai.callbacks`."""
    module, _, name = key.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module or "lightning_xai.callbacks"), name)
    except (ImportError, AttributeError):
        raise ValueError(
            f"callback_args: {key!r} is not a callback class; use a class path or one of "
            f"{sorted(configurable_callbacks())}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Callback)):
        raise TypeError(f"callback_args: {key!r} is {cls!r}, not a Lightning Callback class")
    return cls


def apply_callback_args(callbacks: list[Any], overrides: dict[str, dict[str, Any]]) -> list[str]:
    """Set ``overrides[class][arg]`` in the ``init_args`` of every parsed callback spec of that class.

    A key names a class by class path or by its name in :mod:`lightning_xai.callbacks`; a callback matches
    when its class is that class or a subclass of it. Classes without a callback in the list are skipped
    (one overlay serves every preset), but unknown classes and arguments are errors.

    Args:
        callbacks: ``trainer.callbacks`` as parsed: ``Namespace(class_path=..., init_args=...)`` items
            (already built ``Callback`` objects are left alone).
        overrides: ``{class: {argument: value}}``.

    Returns:
        The class paths of the callbacks that were changed.

    Raises:
        ValueError: A key names no class, or an argument is not in its ``__init__`` signature.
        TypeError: A key names something that is not a Callback class.

    Example:
        >>> spec = Namespace(class_path="lightning_xai.callbacks.LogicRulesCallback", init_args=Namespace(seed=0))
        >>> apply_callback_args([spec], {"LogicRulesCallback": {"seed": 3}})
        ['lightning_xai.callbacks.LogicRulesCallback']
        >>> spec.init_args.seed
        3
    """
    changed: list[str] = []
    for key, args in overrides.items():
        target = _resolve_class(key)
        names = [name for name, _ in _init_arguments(target)]
        unknown = sorted(set(args) - set(names))
        if unknown:
            raise ValueError(
                f"callback_args: {target.__name__} has no arguments {unknown}; its arguments are {names}"
            )
        for spec in callbacks:
            if not isinstance(spec, Namespace) or "class_path" not in spec:
                continue
            if not issubclass(_resolve_class(spec.class_path), target):
                continue
            if spec.get("init_args") is None:
                spec.init_args = Namespace()
            for name, value in args.items():
                spec.init_args[name] = value
            changed.append(spec.class_path)
    return changed


def main(args: Sequence[str] | None = None, run: bool = True) -> XAICLI:
    """Run :class:`XAICLI` on ``args`` (``fit --config ...``; default ``sys.argv[1:]``) and return it.

    The model and data come from the configs or ``--model.class_path`` / ``--data.class_path`` (any
    ``LightningModule`` and ``LightningDataModule``).
    """
    return XAICLI(args=list(args) if args is not None else None, run=run, subclass_mode_model=True,
                  subclass_mode_data=True)  # fmt: skip
