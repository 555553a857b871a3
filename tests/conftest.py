"""Shared fixtures: tiny local checkpoints (no hub), exported bundles, espeak-ng speech."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from xlsr_edge.data import default_clips

ESPEAK = shutil.which("espeak-ng")


def espeak(text: str, path: Path, voice: str = "tr", speed: int = 150) -> Path:
    """Synthesize speech to a 16 kHz mono wav with espeak-ng (apt); skip the test if it is missing."""
    if ESPEAK is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    import soundfile as sf
    import soxr

    raw = path.with_suffix(".22k.wav")
    subprocess.run([ESPEAK, "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True)
    x, sr = sf.read(str(raw), dtype="float32")
    raw.unlink()
    sf.write(str(path), soxr.resample(x, sr, 16000), 16000)
    return path


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory) -> Path:
    """A few espeak-ng utterances of different lengths, plus the shipped clips."""
    d = tmp_path_factory.mktemp("speech")
    for i, text in enumerate(
        ["iyi günler", "çocuklar bahçede oynuyor", "öğretmen sınıfa girdi ve ders başladı"]
    ):
        espeak(text, d / f"es_{i}.wav")
    for clip in default_clips():
        shutil.copy(clip, d / clip.name)
    return d


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    from xlsr_edge.export.tiny import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "layer", feat_extract_norm="layer")


@pytest.fixture(scope="session")
def tiny_group_ckpt(tmp_path_factory) -> Path:
    from xlsr_edge.export.tiny import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "group", feat_extract_norm="group")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_ckpt, tmp_path_factory) -> Path:
    from xlsr_edge.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "layer"
    export_bundle(tiny_ckpt, out)
    return out


@pytest.fixture(scope="session")
def tiny_group_bundle(tiny_group_ckpt, tmp_path_factory) -> Path:
    from xlsr_edge.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "group"
    export_bundle(tiny_group_ckpt, out)
    return out


@pytest.fixture(scope="session")
def demo_fp32_bundle(tmp_path_factory) -> Path:
    """The shipped demo model (models/demo-tr) exported fp32 without the parity gate, read-only for its users
    (streams, the server): exported once per session."""
    pytest.importorskip("torch")
    from xlsr_edge.export import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("demo-fp32") / "demo-bundle"
    export_bundle(
        Path(__file__).resolve().parents[1] / "models" / "demo-tr", out, ExportOptions(verify=False)
    )
    return out


def read_bundle_json(bundle: Path) -> dict:
    return json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))


def speech_arrays(folder: Path, n: int = 3) -> list[np.ndarray]:
    from xlsr_edge.runtime.audio import load_audio

    files = sorted(folder.glob("*.wav"))[:n]
    return [load_audio(f, 16000) for f in files]
