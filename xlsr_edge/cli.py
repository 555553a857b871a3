"""Command lines: assemble the parser from xlsr_edge.commands, map errors to exit codes.

Library code never imports this module; each subcommand lives in its own module under xlsr_edge.commands.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import sys
from collections.abc import Sequence

from xlsr_edge import __version__
from xlsr_edge.commands import COMMAND_MODULES
from xlsr_edge.constants import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USER_ERROR
from xlsr_edge.errors import XlsrEdgeError


def run(args: argparse.Namespace) -> int:
    """Call the subcommand's handler. User errors (XlsrEdgeError, invalid option values) -> one `error:` line
    and exit 2, no traceback; a closed stdout (`| head`) ends quietly."""
    try:
        code = args.fn(args)
        sys.stdout.flush()
        return code
    except (XlsrEdgeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        # the reader went away: point stdout at devnull so the interpreter's final flush does not fail too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _has_default(action: argparse.Action) -> bool:
    return not (action.default is None or action.default is False or action.default is argparse.SUPPRESS)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every option's default, also where it has no help text (argparse's formatter skips those);
    None and False, which say nothing, are left out."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not _has_default(action) or "default" in text:
            return text
        return super()._get_help_string(action)

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and _has_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


class Parser(argparse.ArgumentParser):
    """ArgumentParser with HelpFormatter; add_subparsers hands the class on to every subcommand."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="xlsr-edge", description="Export, run and measure xlsr-edge bundles.")
    ap.add_argument("--version", action="version", version=f"xlsr-edge {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return ap


def export_parser() -> argparse.ArgumentParser:
    """`export-xlsr`: the `xlsr-edge export` subcommand as a program of its own."""
    from xlsr_edge.commands import export

    ap = Parser(prog="export-xlsr", description=export.DESCRIPTION)
    export.add_arguments(ap)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def export_main(argv: Sequence[str] | None = None) -> int:
    return run(export_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
