"""bundle.json schema, file hashes and compatibility checks: the only module both halves share.

The bundle folder is the contract: everything that needs torch writes it, everything on the device reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xlsr_edge.constants import BUNDLE_JSON, MODEL_ONNX, SCHEMA_VERSION
from xlsr_edge.errors import BundleError, XlsrEdgeError

_HASH_CHUNK = 1 << 22


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ModelInfo:
    """What the runtime needs to turn audio into text; read from the checkpoint at export time."""

    vocab: list[str]
    blank_id: int
    word_delimiter: str
    unk_token: str | None
    sample_rate: int
    do_normalize: bool
    feat_extract_norm: str
    conv_kernel: list[int]
    conv_stride: list[int]
    uses_attention_mask: bool

    @property
    def frame_stride_samples(self) -> int:
        stride = 1
        for s in self.conv_stride:
            stride *= s
        return stride

    @property
    def receptive_field_samples(self) -> int:
        # Walk back through the conv stack: r_{l-1} = (r_l - 1) * stride_l + kernel_l.
        field_ = 1
        for k, s in reversed(list(zip(self.conv_kernel, self.conv_stride))):
            field_ = (field_ - 1) * s + k
        return field_

    def frames_for(self, num_samples: int) -> int:
        """transformers' `_get_feat_extract_output_lengths`, clamped at 0 for inputs shorter than one frame."""
        n = int(num_samples)
        for k, s in zip(self.conv_kernel, self.conv_stride):
            n = (n - k) // s + 1
            if n <= 0:
                return 0
        return n

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["frame_stride_samples"] = self.frame_stride_samples
        d["receptive_field_samples"] = self.receptive_field_samples
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelInfo:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class BundleManifest:
    """Everything bundle.json holds. `files` maps relative path -> sha256."""

    model: ModelInfo
    precision: str = "fp32"
    opset: int = 17
    graph: str = MODEL_ONNX
    schema_version: int = SCHEMA_VERSION
    source: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "precision": self.precision,
            "opset": self.opset,
            "graph": self.graph,
            **self.model.to_json(),
            "source": self.source,
            "versions": self.versions,
            "files": self.files,
            "parity": self.parity,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BundleManifest:
        try:
            return cls(
                model=ModelInfo.from_json(d),
                precision=d.get("precision", "fp32"),
                opset=int(d.get("opset", 17)),
                graph=d.get("graph", MODEL_ONNX),
                schema_version=int(d["schema_version"]),
                source=d.get("source", {}),
                versions=d.get("versions", {}),
                files=d.get("files", {}),
                parity=d.get("parity"),
                extra=d.get("extra", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"bundle.json is malformed ({exc!r}); re-export the bundle") from exc


def hash_files(folder: Path) -> dict[str, str]:
    """sha256 of every file in the bundle except bundle.json itself, by relative posix path."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != BUNDLE_JSON and not p.name.startswith("."):
            out[p.relative_to(folder).as_posix()] = sha256_file(p)
    return out


def write_manifest(folder: Path, manifest: BundleManifest) -> Path:
    """Hash every file and write bundle.json atomically (temp file + rename: readers never see half of it)."""
    manifest.files = hash_files(folder)
    path = Path(folder) / BUNDLE_JSON
    tmp = path.with_name(f".{BUNDLE_JSON}.tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_manifest(folder: Path) -> BundleManifest:
    """Read bundle.json and refuse bundles from a newer schema."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"bundle folder not found: {folder}")
    path = folder / BUNDLE_JSON
    if not path.is_file():
        raise BundleError(f"{folder} has no {BUNDLE_JSON}: is it a bundle written by export-xlsr?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise BundleError(f"{path} has no integer schema_version")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"bundle schema_version {version} is newer than this xlsr-edge understands ({SCHEMA_VERSION}); "
            "upgrade xlsr-edge on this device"
        )
    return BundleManifest.from_json(data)


@dataclass(frozen=True)
class FileCheck:
    path: str
    status: str  # "ok" | "modified" | "missing" | "unlisted"


def verify_files(folder: Path, manifest: BundleManifest) -> list[FileCheck]:
    """Compare every listed file's sha256 with the manifest; also report files bundle.json does not list."""
    folder = Path(folder)
    checks = []
    for rel, digest in sorted(manifest.files.items()):
        p = folder / rel
        if not p.is_file():
            checks.append(FileCheck(rel, "missing"))
        else:
            checks.append(FileCheck(rel, "ok" if sha256_file(p) == digest else "modified"))
    listed = set(manifest.files)
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and p.name != BUNDLE_JSON and not p.name.startswith(".") and rel not in listed:
            checks.append(FileCheck(rel, "unlisted"))
    return checks


def load_bundle(folder: Path, verify: bool = True) -> BundleManifest:
    """Read the manifest and (by default) check every hash; raise BundleError naming what differs."""
    manifest = read_manifest(folder)
    if verify:
        bad = [c for c in verify_files(folder, manifest) if c.status in ("modified", "missing")]
        if bad:
            what = ", ".join(f"{c.path} ({c.status})" for c in bad)
            raise BundleError(f"bundle {folder} failed verification: {what}; re-export or copy it again")
    if manifest.graph not in manifest.files:
        raise BundleError(f"bundle {folder} does not list its graph {manifest.graph}")
    return manifest


@contextmanager
def atomic_folder(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder next to `target`; on success rename it into place, on failure remove it.

    A failed export therefore never leaves a half-written bundle behind.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise XlsrEdgeError(f"output {target} already exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; a bundle is meant to be copied and shared
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
