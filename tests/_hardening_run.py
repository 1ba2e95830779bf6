"""Run every callback on the frozen world model, for a test that calls this script in a subprocess.

    python tests/_hardening_run.py OUT --strategy ddp --devices 2 --init MODEL.pt [--fails-on-rank 1]

The subprocess is what lets a test time out a hang, and the ``ddp`` launcher needs a script to start per rank.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _hardening import FailsOnRank, run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--init", type=Path)
    parser.add_argument("--fails-on-rank", type=int, default=None)
    args = parser.parse_args()
    extra = [] if args.fails_on_rank is None else [FailsOnRank(args.fails_on_rank, max_failures=1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(
            args.out,
            strategy=args.strategy,
            devices=args.devices,
            epochs=args.epochs,
            init=args.init,
            extra=extra,
        )


if __name__ == "__main__":
    main()
