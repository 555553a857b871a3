"""One exception family. The CLIs print `error: <message>` and exit 2 for user errors (no traceback)."""

from __future__ import annotations

import importlib
from types import ModuleType


class XlsrEdgeError(Exception):
    """A user-facing error: bad input, bad checkpoint, failed gate. Message says what and how to fix."""


class CheckpointError(XlsrEdgeError):
    """The checkpoint folder is missing, incomplete or inconsistent."""


class BundleError(XlsrEdgeError):
    """The bundle is missing, modified, or from an incompatible schema."""


class ExportError(XlsrEdgeError):
    """Export or one of its verification gates failed."""


class AudioError(XlsrEdgeError):
    """An audio input cannot be read or is not usable speech."""


class ManifestError(XlsrEdgeError):
    """A manifest line is malformed or names missing audio."""


class OutputError(XlsrEdgeError):
    """Writing an output failed (a full disk, a read-only folder): the run failed, not its input, so the CLIs
    exit 1 (`exit_code`); the message names the path and the reason, and what was there before is intact."""

    exit_code = 1  # constants.EXIT_SOME_FAILED (errors imports nothing of the package)


class MissingDependencyError(XlsrEdgeError):
    """An optional dependency is not installed; the message names the extra that installs it."""

    def __init__(self, module: str, extra: str, hint: str = "") -> None:
        self.module = module
        self.extra = extra
        msg = f"the optional dependency '{module}' is not installed: pip install 'xlsr-edge[{extra}]'"
        super().__init__(msg + (f" ({hint})" if hint else ""))


def require(module: str, extra: str, hint: str = "") -> ModuleType:
    """Import an optional dependency lazily, or raise an error that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module, extra, hint) from exc
