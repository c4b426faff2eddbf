"""The ``cbctqa`` command line.

One entry point with subcommands; each subcommand lives in its own module under
:mod:`flows.commands` and exposes ``register(subparsers)``, which adds its parser and sets
``handler`` (a function ``(args) -> int``). Heavy libraries are imported inside handlers so
``cbctqa --help`` stays fast.

Bad input (any :class:`qa_core.errors.CbctQaError`) exits with code 2 and one line on
stderr; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from qa_core.errors import CbctQaError
from qa_core.logs import configure_logging, redact

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "flows.commands.version",
    "flows.commands.synth",
    "flows.commands.inspect",
    "flows.commands.train",
    "flows.commands.score",
    "flows.commands.analyze",
    "flows.commands.validate",
    "flows.commands.xnat_server",
    "flows.commands.score_pending",
    "flows.commands.serve",
    "flows.commands.rescore",
    "flows.commands.demo",
    "flows.commands.dashboard",
    "flows.commands.doctor",
    "flows.commands.deploy",
    "flows.commands.config",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the full ``cbctqa`` parser from the registered command modules."""
    parser = argparse.ArgumentParser(
        prog="cbctqa",
        description="CBCT image-quality monitor for XNAT: Likert scores, Grad-CAM, Attribution Energy.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--log-level", default=None, help="logging level (default from CBCTQA_LOG_LEVEL or INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command not part of this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    configure_logging(args.log_level or "WARNING")
    try:
        return int(args.handler(args) or 0)
    except CbctQaError as exc:
        if args.debug:
            raise
        print(f"cbctqa {args.command}: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cbctqa: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
