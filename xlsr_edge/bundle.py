"""bundle.json schema, file hashes and compatibility checks: the only module both halves share.

The bundle folder is the contract: everything that needs torch writes it, everything on the device reads it.
A bundle is untrusted input (copied between machines): `read_manifest` validates every field it returns, and
every file bundle.json names is opened through `bundle_path`, which never leaves the bundle folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# the path rule and typed field reads live in bundle_fields; check_relative/plain_relative are imported from here
from xlsr_edge.bundle_fields import _SHA256, check_relative, plain_relative  # noqa: F401
from xlsr_edge.bundle_fields import Fields as _Fields
from xlsr_edge.bundle_fields import fail as _fail
from xlsr_edge.constants import BUNDLE_JSON, MODEL_ONNX, SCHEMA_VERSION
from xlsr_edge.errors import BundleError

_HASH_CHUNK = 1 << 22
_MAX_MANIFEST_BYTES = 64 << 20  # bundle.json is a few KB; refuse to read a huge file into memory
_MAX_SYMLINK_HOPS = 40
_MAX_SAMPLES = 1 << 24  # frame stride / receptive field: beyond this the conv stack is nonsense
FILES_KEY = 'a "files" key'  # the field name in messages about paths listed in `files`


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# -- paths inside the bundle ------------------------------------------------------------------------------------


def _inside(root: Path, rel: str) -> bool:
    """Follow `rel` from `root` one component at a time, symlinks included, without ever looking outside root.

    A symlink whose target (read with readlink, not followed) leaves root makes the answer False before the
    target is touched; so does a loop of links.
    """
    root_s = str(root)
    todo = rel.split("/")
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not done:
                return False
            done.pop()
            continue
        done.append(part)
        p = os.path.join(root_s, *done)
        if not os.path.islink(p):  # lstat, inside root: a missing part is fine ("missing" later)
            continue
        hops += 1
        if hops > _MAX_SYMLINK_HOPS:
            return False
        target = os.readlink(p)
        done.pop()
        if os.path.isabs(target):
            target = os.path.normpath(target)
            if target != root_s and not target.startswith(root_s.rstrip("/") + "/"):
                return False
            done = []
            target = os.path.relpath(target, root_s)
        todo = target.split("/") + todo
    return True


def bundle_path(folder: Path, rel: object, *, field: str = "files") -> Path:
    """`folder / rel` for a path bundle.json names, refused (BundleError) unless it stays inside the folder.

    Checked before anything is opened or stat'ed outside the bundle: the name lexically, then every symlink on
    the way (a link that leads outside is refused whether or not its target exists).
    """
    rel = check_relative(rel, field)
    root = Path(folder).resolve()
    if not _inside(root, rel):
        subject = field if '"' in field else f'"{field}"'
        raise BundleError(
            f"{BUNDLE_JSON}: {subject} names {json.dumps(rel, ensure_ascii=False)}, a symlink that leads "
            "outside the bundle; copy the file into the bundle instead"
        )
    return root / rel


# -- validation of bundle.json ---------------------------------------------------------------------------------


def _vocabulary(f: _Fields) -> tuple[list[str], int, str, str | None]:
    """vocab, blank_id, word_delimiter, unk_token of the bundle or of one language of a multi-language bundle."""
    vocab = f.strings("vocab")
    blank_id = f.integer("blank_id", 0, len(vocab) - 1)
    delimiter = f.string("word_delimiter")
    if not delimiter:
        f.fail("word_delimiter", "a non-empty string", delimiter)
    return vocab, blank_id, delimiter, f.string("unk_token", None, null=True)


# -- the manifest -------------------------------------------------------------------------------------------------


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
    # Optional (issue 15; absent in older bundles): padding of each conv_kernel/conv_stride stage (add_adapter
    # layers are padded convolutions; zeros when absent), the transformers model_type, and the ids of placeholder
    # vocabulary entries (a head wider than the tokenizer): never emitted as text.
    conv_padding: list[int] | None = None
    model_type: str = "wav2vec2"
    spare_ids: list[int] = field(default_factory=list)

    @property
    def paddings(self) -> list[int]:
        return list(self.conv_padding) if self.conv_padding else [0] * len(self.conv_kernel)

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
        for k, s, p in zip(self.conv_kernel, self.conv_stride, self.paddings):
            n = (n + 2 * p - k) // s + 1
            if n <= 0:
                return 0
        return n

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if not any(self.paddings):  # written only when it matters: older readers see the same bundle.json
            d.pop("conv_padding")
        if not self.spare_ids:
            d.pop("spare_ids")
        d["frame_stride_samples"] = self.frame_stride_samples
        d["receptive_field_samples"] = self.receptive_field_samples
        return d

    @classmethod
    def from_json(cls, d: Any, source: str = BUNDLE_JSON) -> ModelInfo:
        """Validate and read the model fields (BundleError naming the field, the expected type and the value)."""
        f = _Fields(d, source)
        vocab, blank_id, delimiter, unk = _vocabulary(f)
        kernel = f.integers("conv_kernel", 1, 4096)
        stride = f.integers("conv_stride", 1, 4096)
        if len(kernel) != len(stride):
            raise BundleError(
                f'{source}: "conv_kernel" and "conv_stride" must have the same length, '
                f"found {len(kernel)} and {len(stride)}"
            )
        info = cls(
            vocab=vocab,
            blank_id=blank_id,
            word_delimiter=delimiter,
            unk_token=unk,
            sample_rate=f.integer("sample_rate", 1000, 1_000_000),
            do_normalize=f.boolean("do_normalize"),
            feat_extract_norm=f.string("feat_extract_norm", choices=("group", "layer")),
            conv_kernel=kernel,
            conv_stride=stride,
            uses_attention_mask=f.boolean("uses_attention_mask"),
            model_type=f.string("model_type", "wav2vec2"),
        )
        if f.raw("conv_padding", None) is not None:
            info.conv_padding = f.integers("conv_padding", 0, 4096)
            if len(info.conv_padding) != len(kernel):
                raise BundleError(
                    f'{source}: "conv_padding" must have one entry per "conv_kernel" stage, '
                    f"found {len(info.conv_padding)} and {len(kernel)}"
                )
        if f.raw("spare_ids", None) is not None:
            spare = f.raw("spare_ids")
            if not isinstance(spare, list) or len(spare) >= len(vocab):
                f.fail("spare_ids", f"a list of fewer than {len(vocab)} token ids", spare)
            for i, n in enumerate(spare):
                if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < len(vocab) or n == blank_id:
                    _fail(
                        source, f"spare_ids[{i}]", f"a token id other than the blank, below {len(vocab)}", n
                    )
            info.spare_ids = list(spare)
        span = max(info.receptive_field_samples, info.frame_stride_samples)
        if span > _MAX_SAMPLES:
            raise BundleError(
                f'{source}: "conv_kernel" and "conv_stride" give frames of {span} samples, '
                f"more than {_MAX_SAMPLES}; re-export the bundle"
            )
        return info


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
    # `xlsr-edge optimize`'s choice and measurements (issue 26; absent in other bundles): xlsr_edge.runtime.tuned
    runtime: dict[str, Any] | None = None

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
            **({"runtime": self.runtime} if self.runtime is not None else {}),
        }

    def paths(self) -> dict[str, str]:
        """Every file bundle.json names outside `files`, by field: the graph, heads, language ID, engine."""
        out = {"graph": self.graph}
        if self.extra.get("kind") == "multi":
            for lang, entry in self.extra["languages"].items():
                out[f"extra.languages.{lang}.head"] = entry["head"]
            if self.extra.get("lid") is not None:
                out["extra.lid.file"] = self.extra["lid"]["file"]
        if self.extra.get("engine") is not None:
            out["extra.engine.file"] = self.extra["engine"]["file"]
        return out

    @classmethod
    def from_json(cls, d: Any, source: str = BUNDLE_JSON) -> BundleManifest:
        """Validate and read bundle.json: a BundleError names the first bad field, its expected type and the value."""
        f = _Fields(d, source)
        version = f.integer("schema_version", 1, 1 << 31)
        if version > SCHEMA_VERSION:
            raise BundleError(
                f"bundle schema_version {version} is newer than this xlsr-edge understands ({SCHEMA_VERSION}); "
                "upgrade xlsr-edge on this device"
            )
        model = ModelInfo.from_json(d, source)
        files = f.obj("files", {}, what="an object of path -> sha256")
        for rel, digest in files.items():
            check_relative(rel, FILES_KEY, source)
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                _fail(source, f"files.{rel}", "a sha256 (64 lowercase hex digits)", digest)
        manifest = cls(
            model=model,
            precision=f.string("precision", "fp32"),
            opset=f.integer("opset", 1, 1000, 17),
            graph=f.path("graph", MODEL_ONNX),
            schema_version=version,
            source=f.obj("source", {}),
            versions=f.obj("versions", {}),
            files=files,
            parity=f.obj("parity", None, null=True),
            extra=f.obj("extra", {}),
            runtime=f.obj("runtime", None, null=True),
        )
        _check_extra(_Fields(manifest.extra, source, "extra."))
        if manifest.runtime is not None:
            _check_runtime(_Fields(manifest.runtime, source, "runtime."))
        return manifest


def _check_extra(extra: _Fields) -> None:
    """The parts of `extra` the runtime reads: multi-language heads and language ID, the TensorRT sidecar."""
    kind = extra.string("kind", None, null=True)
    if kind == "multi":
        languages = extra.sub("languages")
        if not languages.data:
            extra.fail("languages", "a non-empty object of language -> head", languages.data)
        for lang in languages.data:
            entry = languages.sub(lang)
            _vocabulary(entry)
            entry.path("head")
        if extra.obj("adapters", None, null=True) is not None:  # MMS: per-language adapters in the heads
            adapters = extra.sub("adapters")
            lid_lang = adapters.string("lid")
            if lid_lang not in languages.data:
                adapters.fail("lid", "one of the bundle's languages", lid_lang)
        if extra.obj("lid", None, null=True) is not None:
            lid = extra.sub("lid")
            lid.path("file")
            lid.string("policy", "all", choices=("all", "unknown"))
            lid.number("threshold", 0, 1, 0.5)
    extra.obj("precision_report", None, null=True)  # only displayed (inspect)
    if extra.obj("engine", None, null=True) is not None:
        engine = extra.sub("engine")
        engine.path("file")
        engine.sha256("sha256")
        profile = engine.sub("profile", {})
        shapes = profile.sub("shapes", {})
        for key in ("min", "opt", "max"):
            v = shapes.raw(key, None)
            ok = isinstance(v, list) and len(v) == 2
            if v is not None and not (
                ok and all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 1 << 40 for n in v)
            ):
                shapes.fail(key, "[batch, samples]: two positive integers", v)


RUNTIME_BACKENDS = ("onnxruntime", "openvino", "tensorrt")
RUNTIME_HINTS = ("f32", "bf16", "f16", "auto")


def _check_runtime(r: _Fields) -> None:
    """`runtime` (`xlsr-edge optimize`): what the runtime reads by default (backend, OpenVINO hint, threads, the
    instruction sets it was measured on); the candidates are only displayed (inspect), so only their shape."""
    r.string("backend", choices=RUNTIME_BACKENDS)
    r.string("precision_hint", None, choices=RUNTIME_HINTS, null=True)
    if r.raw("threads", None) is not None:
        r.integer("threads", 1, 1 << 16)
    machine = r.sub("machine", {})
    machine.string("cpu", "?")
    machine.string("arch", "?")
    isa = machine.sub("instruction_sets", {})
    for name in isa.data:
        isa.boolean(name)
    candidates = r.raw("candidates", [])
    if not isinstance(candidates, list):
        r.fail("candidates", "a list of objects", candidates)
    for i, c in enumerate(candidates):
        if not isinstance(c, dict):
            _fail(r.source, f"{r.name('candidates')}[{i}]", "an object", c)


def _read_json_file(path: Path) -> Any:
    try:
        if path.stat().st_size > _MAX_MANIFEST_BYTES:
            raise BundleError(f"{path} is larger than {_MAX_MANIFEST_BYTES >> 20} MB: not a bundle.json")
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise BundleError(f"cannot read {path}: JSON nested too deeply") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, over-long integer literals
        raise BundleError(f"cannot read {path}: {exc}") from exc


def hash_files(folder: Path) -> dict[str, str]:
    """sha256 of every file in the bundle except bundle.json itself, by relative posix path.

    Symlinks are hashed only when they stay inside the folder; one that leads outside is refused.
    """
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.name == BUNDLE_JSON or p.name.startswith("."):
            continue
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():  # rglob does not descend into symlinked folders: only p itself can be a link
            p = bundle_path(folder, rel, field=FILES_KEY)
        if p.is_file():
            out[rel] = sha256_file(p)
    return out


def write_manifest(folder: Path, manifest: BundleManifest) -> Path:
    """Hash every file and write bundle.json atomically (temp file + rename: readers never see half of it)."""
    manifest.files = hash_files(folder)
    path = Path(folder) / BUNDLE_JSON
    tmp = path.with_name(f".{BUNDLE_JSON}.tmp")
    tmp.unlink(missing_ok=True)  # never write through a symlink left in the folder
    try:
        tmp.write_text(json.dumps(manifest.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as exc:  # a full disk: write() names no file; the writer's error line should name this one
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    os.replace(tmp, path)
    return path


def read_manifest(folder: Path) -> BundleManifest:
    """Read and validate bundle.json (every field, every path it names) and refuse bundles from a newer schema."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"bundle folder not found: {folder}")
    path = folder / BUNDLE_JSON
    if not _inside(folder.resolve(), BUNDLE_JSON):
        raise BundleError(f"{path} is a symlink that leads outside the bundle; copy the file into the bundle")
    if not path.is_file():
        raise BundleError(f"{folder} has no {BUNDLE_JSON}: is it a bundle written by export-xlsr?")
    return BundleManifest.from_json(_read_json_file(path), str(folder / BUNDLE_JSON))


@dataclass(frozen=True)
class FileCheck:
    path: str
    status: str  # "ok" | "modified" | "missing" | "unlisted"


def verify_files(folder: Path, manifest: BundleManifest) -> list[FileCheck]:
    """Compare every listed file's sha256 with the manifest; also report files bundle.json does not list.

    Every listed path goes through `bundle_path` first (BundleError if it leads outside the folder); unlisted
    entries are reported by name without following symlinks.
    """
    folder = Path(folder)
    for name, rel in manifest.paths().items():
        bundle_path(folder, rel, field=name)
    checks = []
    for rel, digest in sorted(manifest.files.items()):
        p = bundle_path(folder, rel, field=FILES_KEY)
        if not p.is_file():
            checks.append(FileCheck(rel, "missing"))
        else:
            checks.append(FileCheck(rel, "ok" if sha256_file(p) == digest else "modified"))
    listed = set(manifest.files)
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.name == BUNDLE_JSON or p.name.startswith(".") or rel in listed:
            continue
        if p.is_symlink() or p.is_file():  # a symlink is reported, never followed
            checks.append(FileCheck(rel, "unlisted"))
    return checks


def load_bundle(folder: Path, verify: bool = True) -> BundleManifest:
    """Read the manifest and (by default) check every hash; raise BundleError naming what differs."""
    manifest = read_manifest(folder)
    for name, rel in manifest.paths().items():  # containment, also without verification
        bundle_path(folder, rel, field=name)
    if verify:
        bad = [c for c in verify_files(folder, manifest) if c.status in ("modified", "missing")]
        if bad:
            what = ", ".join(f"{c.path} ({c.status})" for c in bad)
            raise BundleError(f"bundle {folder} failed verification: {what}; re-export or copy it again")
    if manifest.graph not in manifest.files:
        raise BundleError(f"bundle {folder} does not list its graph {manifest.graph}")
    for name, rel in manifest.paths().items():  # an unlisted file would be loaded without a hash check
        if rel not in manifest.files:
            raise BundleError(
                f'bundle {folder} does not list the file "{name}" names ({rel}) with its sha256'
            )
    return manifest


def atomic_folder(target: Path, overwrite: bool = False) -> AbstractContextManager[Path]:
    """A bundle folder written atomically: `xlsr_edge.outputs.atomic_output` with the bundle kind (a temp folder
    swapped in at the end; --overwrite only replaces a bundle or an empty folder)."""
    from xlsr_edge.outputs import BUNDLE, atomic_output

    return atomic_output(target, BUNDLE, overwrite=overwrite)
