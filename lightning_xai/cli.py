"""The ``lightning-xai`` command: offline HTML reviews of runs.

::

    lightning-xai report RUN_DIR [-o report.html]        # default: RUN_DIR/xai/report.html
    lightning-xai compare RUN_A RUN_B [-o compare.html]  # default: ./compare.html

``RUN_DIR`` is the directory a training run wrote its explanations to (it holds ``xai/records.jsonl``):
the trainer's ``log_dir`` (e.g. ``lightning_logs/version_0``) or its ``default_root_dir``. The pages
are single self-contained HTML files (see :mod:`lightning_xai.report`): open them in any browser,
no server and no network needed.

Exit codes: 0 on success, 2 for usage errors (including a run without records).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning_xai import __version__
from lightning_xai.report import (
    DEFAULT_MAX_MEDIA_BYTES,
    RecordsNotFoundError,
    build_report,
    compare,
    load_run,
)
from lightning_xai.runs import MixedRunsError

__all__ = ["build_parser", "main"]

PROG = "lightning-xai"
USAGE_ERROR = 2


def _megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of megabytes, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 MB, got {text}")
    return value


#: subcommands run by :class:`lightning_xai.lightning_cli.XAICLI` (``lightning-xai fit --config ...``)
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightning-xai`` (subcommands ``report`` and ``compare``; ``fit``, ``validate``,
    ``test`` and ``predict`` go to :class:`~lightning_xai.lightning_cli.XAICLI`).

    Example:
        >>> build_parser().parse_args(["report", "runs/quickstart"]).command
        'report'
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Review lightning-xai explanation records offline as one self-contained HTML page; "
        "'lightning-xai fit --config ...' trains with the callback presets (LightningCLI).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    media_help = (
        f"media files larger than this are not embedded (default {DEFAULT_MAX_MEDIA_BYTES / 1e6:g}); "
        "the page notes each one left out"
    )

    rep = sub.add_parser(
        "report",
        help="write an HTML report of one run",
        description="Write one self-contained HTML page reviewing a run's explanation records "
        "(RUN_DIR/xai/records.jsonl and RUN_DIR/xai/media/).",
    )
    rep.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding xai/records.jsonl")
    rep.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="HTML file to write (default: RUN_DIR/xai/report.html)",
    )
    rep.add_argument("--title", default=None, help="page title")
    rep.add_argument(
        "--run", default=None, metavar="ID", help="the run to show when the records file holds several"
    )
    rep.add_argument(
        "--max-media-mb", type=_megabytes, default=DEFAULT_MAX_MEDIA_BYTES / 1e6, help=media_help
    )

    cmp = sub.add_parser(
        "compare",
        help="write an HTML page comparing two runs side by side",
        description="Write one self-contained HTML page showing two runs' explanations side by side, "
        "per method and epoch (RUN_A left, RUN_B right).",
    )
    cmp.add_argument("run_a", metavar="RUN_A", help="first run directory (left column)")
    cmp.add_argument("run_b", metavar="RUN_B", help="second run directory (right column)")
    cmp.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("compare.html"),
        help="HTML file to write (default: compare.html)",
    )
    cmp.add_argument("--title", default=None, help="page title")
    cmp.add_argument(
        "--max-media-mb", type=_megabytes, default=DEFAULT_MAX_MEDIA_BYTES / 1e6, help=media_help
    )
    return parser


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lightning-xai``; returns the exit code (0 ok, 2 usage error) instead of exiting.

    Example:
        >>> main(["report", "runs/quickstart", "-o", "/tmp/report.html"])  # doctest: +SKIP
        wrote /tmp/report.html (9 records, 6 methods, 0 errors, 0 alerts; 4.7 MB)
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:  # a training run: LightningCLI with the callback overlay
        from lightning_xai.lightning_cli import main as lightning_main

        try:
            lightning_main(argv)
        except SystemExit as exc:  # jsonargparse exits on --help and usage errors
            return int(exc.code) if isinstance(exc.code, int) else USAGE_ERROR
        return 0
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help, --version and usage errors; callers get the code
        return int(exc.code) if isinstance(exc.code, int) else USAGE_ERROR
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(
            f"{PROG}: error: choose a command: report, compare, or fit/validate/test/predict", file=sys.stderr
        )
        return USAGE_ERROR
    max_bytes = int(args.max_media_mb * 1e6)
    try:
        if args.command == "report":
            run = load_run(args.run_dir, run_id=args.run)
            out = build_report(run, args.output, title=args.title, max_media_bytes=max_bytes)
            counts = ", ".join(
                (
                    _n(len(run.records), "record"),
                    _n(len(run.methods), "method"),
                    _n(len(run.errors), "error"),
                    _n(len(run.alerts()), "alert"),
                )
            )
            print(f"wrote {out} ({counts}; {_size(out)})")
        else:
            out = compare(args.run_a, args.run_b, args.output, title=args.title, max_media_bytes=max_bytes)
            print(f"wrote {out} (comparing {args.run_a} with {args.run_b}; {_size(out)})")
    except (RecordsNotFoundError, MixedRunsError) as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as exc:  # e.g. an output directory that cannot be written
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
