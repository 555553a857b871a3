"""`xlsr-edge add-language`: add a language head (trained on the bundle's backbone) to a multi-language bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from xlsr_edge.constants import EXIT_OK


def _add_language(args: argparse.Namespace) -> int:
    from xlsr_edge.commands.export import require_export_extra

    require_export_extra()
    from xlsr_edge.export import ExportOptions
    from xlsr_edge.export.multi import add_language

    manifest = add_language(
        args.bundle,
        args.language,
        args.checkpoint,
        args.lid_data,
        ExportOptions(overwrite=True, verify=not args.no_verify),
    )
    print(f"{args.bundle}: languages {', '.join(manifest.extra['languages'])}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommand."""
    p = sub.add_parser(
        "add-language", help="add a language head (trained on the bundle's backbone) to a bundle"
    )
    p.add_argument("bundle", type=Path, help="a multi-language bundle (export-xlsr --multi)")
    p.add_argument(
        "checkpoint", type=Path, help="the new language's checkpoint, trained on the bundle's backbone"
    )
    p.add_argument("--language", required=True, help="its language code (the name --language selects)")
    p.add_argument(
        "--lid-data", type=Path, default=None, help="speech of the new language, to retrain language ID"
    )
    p.add_argument("--no-verify", action="store_true")
    p.set_defaults(fn=_add_language)
