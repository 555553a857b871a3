"""Utterance lists for calibration and evaluation. Imports numpy and the standard library only."""

from xlsr_edge.calibration.manifests import (
    AUDIO_EXTENSIONS,
    Utterance,
    fill_durations,
    from_audio_paths,
    manifest_digest,
    read_manifest,
    select_stratified,
    split_missing,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "Utterance",
    "fill_durations",
    "from_audio_paths",
    "manifest_digest",
    "read_manifest",
    "select_stratified",
    "split_missing",
]
