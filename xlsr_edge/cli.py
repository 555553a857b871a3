"""Command lines: assemble the parser from xlsr_edge.commands, map errors to exit codes, show the library's log.

Library code never imports this module; each subcommand lives in its own module under xlsr_edge.commands.
The library logs through `logging.getLogger("xlsr_edge.<module>")` and configures nothing (faster-whisper's
way); while a command runs, this module puts one handler on the "xlsr_edge" logger that writes each message as
it is, one line on stderr (progress at INFO, `warning: ...` lines at WARNING). `--quiet` keeps warnings and
errors only, `--verbose` adds debug lines.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from xlsr_edge import __version__
from xlsr_edge.commands import COMMAND_MODULES
from xlsr_edge.constants import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_SOME_FAILED, EXIT_USER_ERROR
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
        return getattr(exc, "exit_code", EXIT_USER_ERROR)  # OutputError: the run failed (exit 1)
    except BrokenPipeError:
        # the reader went away: point stdout at devnull so the interpreter's final flush does not fail too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # a full disk or a read-only folder that no writer named: still one line, exit 1
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_SOME_FAILED
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


LOGGER = "xlsr_edge"


class StderrHandler(logging.Handler):
    """Each record's message alone, one line on the sys.stderr of the moment (looked up per record: tests and
    embedding tools swap sys.stderr)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


@contextmanager
def cli_logging(level: int = logging.INFO) -> Iterator[logging.Handler]:
    """While inside: the "xlsr_edge" logger at `level`, shown by one StderrHandler, not passed on to the root
    logger (a root handler some library installed would print every line twice). Restored afterwards."""
    logger = logging.getLogger(LOGGER)
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def add_verbosity_arguments(p: argparse.ArgumentParser, *, default: object = argparse.SUPPRESS) -> None:
    """--quiet / --verbose (before or after the subcommand: the subcommands' copies default to SUPPRESS, so
    they only set the value when given)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "-q",
        "--quiet",
        dest="log_level",
        action="store_const",
        const=logging.WARNING,
        default=default,
        help="print warnings and errors only, no progress lines",
    )
    group.add_argument(
        "-v",
        "--verbose",
        dest="log_level",
        action="store_const",
        const=logging.DEBUG,
        default=default,
        help="print debug lines too",
    )


def _subparsers(p: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share one parser
                yield child
                yield from _subparsers(child)


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

    def error(self, message: str):  # noqa: ANN201 (argparse's hook; never returns)
        """A bad option value (xlsr_edge.limits) is one `error:` line and exit 2, like other user errors."""
        from xlsr_edge.limits import option_error_line

        line = option_error_line(message)
        if line is None:
            super().error(message)
        self.exit(EXIT_USER_ERROR, f"error: {line}\n")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="xlsr-edge", description="Export, run and measure xlsr-edge bundles.")
    ap.add_argument("--version", action="version", version=f"xlsr-edge {__version__}")
    add_verbosity_arguments(ap, default=logging.INFO)
    sub = ap.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for child in _subparsers(ap):
        add_verbosity_arguments(child)
    return ap


def export_parser() -> argparse.ArgumentParser:
    """`export-xlsr`: the `xlsr-edge export` subcommand as a program of its own."""
    from xlsr_edge.commands import export

    ap = Parser(prog="export-xlsr", description=export.DESCRIPTION)
    export.add_arguments(ap)
    add_verbosity_arguments(ap, default=logging.INFO)
    return ap


def _run_logged(args: argparse.Namespace) -> int:
    with cli_logging(getattr(args, "log_level", logging.INFO)):
        return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    return _run_logged(build_parser().parse_args(argv))


def export_main(argv: Sequence[str] | None = None) -> int:
    return _run_logged(export_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
