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

import os
from typing import Any

# Before lightning imports wandb: no run of this CLI reaches the network unless the user asks for it.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from lightning.pytorch.cli import LightningArgumentParser

from lightning_xai.lightning_cli import XAICLI, apply_callback_args, configurable_callbacks
from lightning_xai.world import TinyCNN, WorldDataModule

__all__ = ["WorldCLI", "apply_callback_args", "configurable_callbacks", "main"]

TRAINER_DEFAULTS: dict[str, Any] = {
    # the quickstart's length (>= 95% validation accuracy), not Lightning's 1000 epochs
    "max_epochs": 6,
    # 2400 scenes / 64 = 38 batches an epoch, fewer than Lightning's default logging interval of 50
    "log_every_n_steps": 10,
}


class WorldCLI(XAICLI):
    """:class:`~lightning_xai.lightning_cli.XAICLI` (presets plus ``callback_args``) with the world's model and
    data linked: ``data.num_classes`` and ``data.classes`` set the model's ``num_classes`` and ``classes`` (so
    ``--data.task shape`` gives a 3-class head with named classes).

    Example:
        >>> cli = WorldCLI(TinyCNN, WorldDataModule, run=False, args=["--data.task", "shape"])  # doctest: +SKIP
        >>> cli.model.hparams.num_classes  # doctest: +SKIP
        3
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.classes", "model.classes", apply_on="instantiate")


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
