"""LightningCLI for the planted-concept world: train the tiny CNN with any callback preset.

The model is :class:`~lightning_xai.world.TinyCNN` and the data :class:`~lightning_xai.world.WorldDataModule`
(``shape_texture`` task, 2400 training scenes), so a preset from ``callbacks/`` is all a run needs::

    python examples/cli.py fit --config callbacks/all.yaml
    python examples/cli.py fit --config callbacks/logic_rules.yaml --data.n_train 600 --trainer.max_epochs 2

Three callbacks need inputs that a preset leaves ``null`` (they then warn, write an ``"error"`` record
naming the input and let training go on): TCAV concept sets (``ConceptAttributionCallback``), a generator
and a concept table (``ConceptPermutationCallback``) and a prompt generator (``DiffusionExplainerCallback``).
``examples/world.yaml`` gives them the world's, through this CLI's ``callback_args`` section::

    python examples/cli.py fit --config callbacks/all.yaml --config examples/world.yaml
    python examples/cli.py fit --config callbacks/concept_attribution.yaml --config examples/world.yaml

``callback_args.<Class>.<argument>`` (``<Class>`` one of :mod:`lightning_xai.callbacks`) sets that argument on
every callback of that class in ``trainer.callbacks``, over the preset's value; classes the preset does not
use are skipped, so one overlay serves every preset. Its values are typed like the callback's own arguments
(``class_path`` builds objects) and merge key by key across configs and the command line::

    python examples/cli.py fit --config callbacks/all.yaml --config examples/world.yaml \\
        --callback_args.DiffusionExplainerCallback.steps 50 --callback_args.SymbolicTreeCallback.every_n_epochs 2

A ``null`` there means "keep the preset's value" (to set an argument to ``null``, write it in the preset).

Other useful flags::

    python examples/cli.py fit --config callbacks/all.yaml --config examples/world.yaml --print_config
    python examples/cli.py fit --config callbacks/all.yaml --data.task shape --model.width 8
    python examples/cli.py fit --config callbacks/all.yaml --config examples/world.yaml \\
        --trainer.logger lightning.pytorch.loggers.WandbLogger --trainer.logger.init_args.project world

``--print_config`` shows ``callback_args`` as given; the ``config.yaml`` saved in a run's log dir shows them
applied to the callbacks (and ``callback_args`` emptied, so the saved config reproduces the run). W&B runs
offline unless ``WANDB_MODE`` is set. The records of a run are in ``<run dir>/xai/records.jsonl`` (the run
dir is the first logger's ``log_dir``, e.g. ``lightning_logs/version_0``); ``lightning-xai report <run dir>``
renders them.

From Python (tests do this)::

    cli = main(["fit", "--config", "callbacks/logic_rules.yaml", "--trainer.max_epochs", "1"])
    cli.trainer.state.finished
"""

from __future__ import annotations

import importlib
import inspect
import os
import typing
from typing import Any, Optional

# Before lightning imports wandb: no run of this CLI reaches the network unless the user asks for it.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lightning_xai.callbacks as xai_callbacks
from lightning_xai.world import TinyCNN, WorldDataModule

__all__ = ["WorldCLI", "apply_callback_args", "configurable_callbacks", "main"]

TRAINER_DEFAULTS: dict[str, Any] = {
    # the quickstart's length (>= 95% validation accuracy), not Lightning's 1000 epochs
    "max_epochs": 6,
    # 2400 scenes / 64 = 38 batches an epoch, fewer than Lightning's default logging interval of 50
    "log_every_n_steps": 10,
}


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


class WorldCLI(LightningCLI):
    """LightningCLI with the world's model and data linked, and a ``callback_args`` section.

    ``data.num_classes`` and ``data.classes`` are linked to the model's ``num_classes`` and ``classes``
    (so ``--data.task shape`` gives a 3-class head with named classes). ``callback_args.<Class>.<argument>``
    is applied to ``trainer.callbacks`` after parsing and before anything is instantiated, so its values are
    built by jsonargparse like the preset's own, and the config saved with the run shows the callbacks as
    they ran.

    Example:
        >>> cli = WorldCLI(TinyCNN, WorldDataModule, run=False, args=["--data.task", "shape"])  # doctest: +SKIP
        >>> cli.model.hparams.num_classes  # doctest: +SKIP
        3
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
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.classes", "model.classes", apply_on="instantiate")

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


def main(args: list[str] | dict[str, Any] | None = None, run: bool = True) -> WorldCLI:
    """Run the CLI on ``args`` (default: ``sys.argv[1:]``) and return it (``cli.trainer``, ``cli.model``).

    With ``run=False`` there is no subcommand: ``args`` are ``fit``'s options, and the trainer, model and
    data are built but not trained.

    Example:
        >>> cli = main(["fit", "--config", "callbacks/logic_rules.yaml", "--trainer.max_epochs", "1"])  # doctest: +SKIP
        >>> cli.trainer.state.finished  # doctest: +SKIP
        True
    """
    return WorldCLI(
        TinyCNN,
        WorldDataModule,
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
