"""Small speech clips shipped with the package (espeak-ng Turkish), used by the export parity gate by default."""

from __future__ import annotations

from pathlib import Path

CLIPS_DIR = Path(__file__).parent / "clips"
CLIPS_MANIFEST = CLIPS_DIR / "clips.jsonl"


def default_clips() -> list[Path]:
    return sorted(CLIPS_DIR.glob("*.flac"))
