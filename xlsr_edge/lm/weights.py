"""Tuned LM weights: the `<stem>.tuned.json` sidecar that `xlsr-edge lm tune` writes next to an LM.

It holds the alpha, beta and unknown-word offset that decoded a dev set best, with the LM's sha256. The decoders
never read it themselves: whoever builds BeamOptions from a user's request (Recognizer.from_bundle, the
commands) calls `with_tuned_weights`, which puts the sidecar's weights into `BeamOptions.tuned` while the LM file
still has that sha256. A sidecar that cannot be read, holds weights outside `WEIGHT_RANGES` (a garbled or
hand-edited file: alpha 1e308 garbles every transcript) or belongs to another version of the LM is ignored with
one `warning:` line, and pyctcdecode's defaults are used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from xlsr_edge.bundle import sha256_file
from xlsr_edge.decoders.lm_files import lm_sidecar
from xlsr_edge.decoders.options import WEIGHT_NAMES, BeamOptions, Weights, resolve_weights
from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.outputs import install_files, recover, scratch_folder

logger = logging.getLogger(__name__)

TUNED_SUFFIX = ".tuned.json"
TUNED_SCHEMA = 1
# What a sidecar may hold (and `lm tune` may try): pyctcdecode's defaults are 0.5, 1.5, -10; tuned values seen
# lie within 0-3, -2-4, -10-0. Far outside, the weights are a damaged file, not a tuning result.
WEIGHT_RANGES = {"alpha": (0.0, 10.0), "beta": (-20.0, 20.0), "unk_score_offset": (-100.0, 0.0)}
MAX_SIDECAR_BYTES = 1 << 20  # lm tune writes about 1 KB


def tuned_path_for(lm_path: str | os.PathLike) -> Path:
    """The tuned-weights sidecar of an LM: `lm.bin` -> `lm.tuned.json` (written by `xlsr-edge lm tune`)."""
    return lm_sidecar(lm_path, TUNED_SUFFIX)


def out_of_range(name: str, value: float) -> str | None:
    """Why a weight is not one a sidecar may hold (None when it is fine)."""
    low, high = WEIGHT_RANGES[name]
    if not math.isfinite(value) or not low <= value <= high:
        return f"{name} {value:g} is outside {low:g}..{high:g}"
    return None


def _parse(raw: bytes) -> dict[str, Any]:
    """The sidecar's JSON object with three finite weights in range; ValueError saying why not."""
    if len(raw) > MAX_SIDECAR_BYTES:
        raise ValueError(f"larger than {MAX_SIDECAR_BYTES // 1024} KB")
    try:
        data = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    for name in WEIGHT_NAMES:
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("alpha, beta and unk_score_offset must be numbers")
        try:
            number = float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise ValueError(f"{name} is out of range") from None
        if problem := out_of_range(name, number):
            raise ValueError(problem)
        data[name] = number
    return data


# (LM path, size, mtime, sidecar size, sidecar mtime) -> the weights or None: hashing a large LM once per
# process, and warning about a sidecar once.
_TUNED_CACHE: dict[tuple, Weights | None] = {}


def _stat_key(path: Path) -> tuple:
    try:
        st = path.stat()
    except OSError:
        return (None, None)
    return (st.st_size, st.st_mtime_ns)


def _warn(message: str) -> None:
    logger.warning("warning: %s", message)


def _read(lm: Path, sidecar: Path) -> Weights | None:
    if not sidecar.is_file() or not lm.is_file():  # a missing LM is the decoder's error to report
        return None
    try:
        with open(sidecar, "rb") as handle:
            data = _parse(handle.read(MAX_SIDECAR_BYTES + 1))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        _warn(f"ignoring {sidecar}: it cannot be used ({reason}); run `xlsr-edge lm tune` again")
        return None
    try:
        digest = sha256_file(lm)
    except OSError:
        return None  # unreadable LM: the decoder says so when it opens it
    if data.get("lm_sha256") != digest:
        _warn(
            f"ignoring the tuned weights in {sidecar}: they were tuned for another version of {lm.name} "
            "(its sha256 differs; was the LM rebuilt?); decoding with pyctcdecode's defaults. "
            "Run `xlsr-edge lm tune` again"
        )
        return None
    values = {name: data[name] for name in WEIGHT_NAMES}
    return Weights(**values, source=f"tuned ({sidecar.name})", from_sidecar=True)


def tuned_weights_for(lm_path: str | os.PathLike) -> Weights | None:
    """The weights in the LM's tuned sidecar (`tuned_path_for`) when it belongs to this LM file (its
    `lm_sha256` is the file's sha256). None when there is no sidecar; None and one warning when it belongs to
    another LM (rebuilt since `lm tune`), cannot be read, or holds weights outside WEIGHT_RANGES."""
    lm = Path(lm_path).absolute()
    sidecar = tuned_path_for(lm)
    key = (str(lm), *_stat_key(lm), *_stat_key(sidecar))
    if key not in _TUNED_CACHE:
        _TUNED_CACHE[key] = _read(lm, sidecar)
    return _TUNED_CACHE[key]


def with_tuned_weights(options: Any) -> Any:
    """BeamOptions with an LM and a weight left at None get the LM's tuned weights in `tuned` (when its
    sidecar matches); anything else (GreedyOptions, a Decoder, options already resolved) comes back as it is."""
    if not isinstance(options, BeamOptions) or options.lm_path is None or options.tuned is not None:
        return options
    if all(getattr(options, name) is not None for name in WEIGHT_NAMES):
        return options  # nothing left for the sidecar to fill: do not hash the LM
    tuned = tuned_weights_for(options.lm_path)
    if tuned is None:
        return options
    return dataclasses.replace(options, tuned=tuned)


def effective_weights(options: BeamOptions) -> Weights:
    """The weights a BeamDecoder built from `options` by Recognizer.from_bundle decodes with."""
    return resolve_weights(with_tuned_weights(options))


def check_sidecar_writable(lm_path: str | os.PathLike) -> Path:
    """Raise XlsrEdgeError now (before tuning) when the sidecar cannot be written: its path is a folder or
    something else that is not a file, or the LM's folder is not writable. Returns the sidecar's path."""
    target = tuned_path_for(lm_path)
    if target.exists() and not target.is_file():
        what = "a folder" if target.is_dir() else "not a regular file"
        raise XlsrEdgeError(
            f"cannot write the tuned weights to {target}: it is {what}; move it away, or pass --dry-run"
        )
    folder = target.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise XlsrEdgeError(
            f"cannot write the tuned weights to {target}: the folder {folder} is not writable "
            "(permissions or a read-only filesystem); copy the LM somewhere writable, or pass --dry-run"
        )
    return target


def write_tuned_weights(lm_path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write `tuned_path_for(lm_path)` (atomically: a temp file renamed into place) with `data` plus the LM's
    sha256 and the schema version. Returns the sidecar's path."""
    lm = Path(lm_path)
    target = check_sidecar_writable(lm)
    content = {"schema": TUNED_SCHEMA, "lm": lm.name, "lm_sha256": sha256_file(lm), **data}
    recover(target)
    try:
        with scratch_folder(target) as tmpdir:
            staged = tmpdir / "tuned.json"
            staged.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            install_files([(staged, target)])
    except OSError as exc:
        raise XlsrEdgeError(f"cannot write the tuned weights to {target}: {exc.strerror or exc}") from exc
    _TUNED_CACHE.clear()
    return target
