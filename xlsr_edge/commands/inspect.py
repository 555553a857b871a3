"""`xlsr-edge inspect`: print a bundle's manifest and verify every file hash (exit 2 on a mismatch).

bundle.json is validated on read (xlsr_edge.bundle); the free-form parts shown here (parity reports, sources,
the precision report) are rendered defensively, so a hand-edited bundle gives an `error:` line, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from xlsr_edge.constants import EXIT_OK, EXIT_USER_ERROR

_LABEL = 13  # label column width (the value starts at column 15)


def _line(label: str, text: str) -> None:
    print(f"{label:<{_LABEL}} {text}")


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, int | float) and not isinstance(v, bool) else "?"


def _parity(p: Any, compared: str) -> str:
    """One parity report (`vs_pytorch` figures) as text; `compared` names the graphs the figures belong to."""
    if not isinstance(p, dict) or not p:
        return "none"
    if "skipped" in p:
        return f"skipped ({p['skipped']})"
    verdict = "passed" if p.get("passed") is True else "FAILED"
    v = p.get("vs_pytorch")
    if not isinstance(v, dict):
        return f"{verdict} ({compared})"
    return (
        f"{verdict} ({compared}): max |diff| {_num(v.get('max_abs_diff'), '.2e')}, "
        f"argmax agreement {_num(v.get('argmax_agreement'), '.4f')}, "
        f"transcripts equal {v.get('transcripts_equal', '?')}"
    )


def _source(s: Any) -> str:
    if not isinstance(s, dict):
        return "unknown"
    return f"{s.get('path')} sha256 {str(s.get('sha256'))[:16]}…"


def _languages(manifest) -> None:
    """Per language of a multi-language bundle: vocabulary, head, parity of head on the backbone, source."""
    langs = manifest.extra["languages"]
    parity = manifest.parity if isinstance(manifest.parity, dict) else {}
    per_lang = parity.get("languages") if isinstance(parity.get("languages"), dict) else {}
    _line("languages", f"{len(langs)}: {', '.join(langs)} (one backbone {manifest.graph}, a CTC head each)")
    for lang, e in langs.items():
        _line(
            f"language {lang}",
            f"{len(e['vocab'])} tokens, blank id {e['blank_id']}, delimiter {e['word_delimiter']!r}, "
            f"head {e['head']}",
        )
        report = parity if "skipped" in parity else per_lang.get(lang)
        _line("  parity", _parity(report, f"{lang} head on the backbone vs PyTorch"))
        source = e.get("source") or (manifest.source.get(lang) if isinstance(manifest.source, dict) else None)
        _line("  source", _source(source))
    lid = manifest.extra.get("lid")
    if isinstance(lid, dict):
        acc = lid.get("holdout_accuracy")
        _line(
            "language ID",
            f"{lid['file']}: policy {lid.get('policy', 'all')}, threshold {_num(lid.get('threshold', 0.5), '.4f')}"
            + (f" ({lid['threshold_source']})" if isinstance(lid.get("threshold_source"), str) else "")
            + (f", held-out accuracy {_num(acc, '.3f')}" if acc is not None else ""),
        )
    else:
        _line("language ID", "none (pass --language)" if len(langs) > 1 else "none (one language)")


def _precision_report(report: Any) -> list[str]:
    from xlsr_edge.errors import BundleError
    from xlsr_edge.precision.convert import format_report

    try:
        return format_report(report)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise BundleError(
            f'bundle.json: "extra.precision_report" is malformed ({type(exc).__name__}: {exc}); re-export the bundle'
        ) from exc


def _runtime(record: dict[str, Any]) -> list[str]:
    """bundle.json "runtime" (xlsr-edge optimize): the choice, where it was measured, every candidate; and whether
    this CPU differs from that one (the runtime then warns and suggests optimize again)."""
    from xlsr_edge.optimize.choose import table_lines
    from xlsr_edge.runtime.cpu import read_cpuinfo
    from xlsr_edge.runtime.tuned import TunedRuntime, mismatch

    tuned = TunedRuntime.from_record(record)
    measured = record.get("measured") if isinstance(record.get("measured"), dict) else {}
    have = [k for k, v in tuned.instruction_sets.items() if v]
    out = [
        f"{'runtime':<{_LABEL}} {tuned.chosen or '?'}: {tuned.describe()} (the default of transcribe, eval, "
        "stream, serve)",
        f"{'':<{_LABEL}} measured on {tuned.cpu} ({tuned.arch}; {', '.join(have) or 'no listed ISA'}), "
        f"{_num(measured.get('seconds'), 'g')} s of audio, batch 1, vs fp32 on onnxruntime side by side; "
        f"gate on {measured.get('dev', '?')}",
    ]
    why = mismatch(tuned, read_cpuinfo())
    if why:
        out.append(f"{'':<{_LABEL}} this CPU differs ({why}): run `xlsr-edge optimize` here")
    candidates = record.get("candidates") or []
    out += [f"{'':<{_LABEL}} {line}" for line in table_lines(candidates)]
    return out


def _inspect(args: argparse.Namespace) -> int:
    from xlsr_edge.bundle import read_manifest, verify_files

    manifest = read_manifest(args.bundle)  # validates every field and every path it names
    checks = verify_files(args.bundle, manifest)  # never opens anything outside the bundle
    bad = [c for c in checks if c.status != "ok"]
    data = manifest.to_json()
    data["verification"] = {c.path: c.status for c in checks}
    report = manifest.extra.get("precision_report")
    report_lines = _precision_report(report) if report is not None else []  # refuse before printing
    runtime_lines = _runtime(manifest.runtime) if manifest.runtime is not None else []
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        m = manifest.model
        multi = manifest.extra.get("kind") == "multi"
        _line("bundle", str(args.bundle))
        _line(
            "schema", f"{manifest.schema_version}   precision {manifest.precision}   opset {manifest.opset}"
        )
        _line("model", m.model_type + (", MMS adapters per language" if "adapters" in manifest.extra else ""))
        if not multi:
            spare = f", {len(m.spare_ids)} placeholder entries (never written)" if m.spare_ids else ""
            _line(
                "vocabulary",
                f"{len(m.vocab)} tokens, blank id {m.blank_id}, delimiter {m.word_delimiter!r}{spare}",
            )
        _line(
            "audio",
            f"{m.sample_rate} Hz, do_normalize={m.do_normalize}, frame stride {m.frame_stride_samples}"
            f" samples, receptive field {m.receptive_field_samples}",
        )
        _line("padding", "attention_mask" if m.uses_attention_mask else "none: feed unpadded")
        if multi:
            _languages(manifest)
        else:
            _line("source", _source(manifest.source))
            compared = "fp32 graph vs PyTorch" + (
                f", before conversion to {manifest.precision}" if manifest.precision != "fp32" else ""
            )
            _line("parity", _parity(manifest.parity, compared))
        for line in report_lines:
            print(line)
        for line in runtime_lines:
            print(line)
        if manifest.extra.get("engine") is not None:
            _line("engine", json.dumps(manifest.extra["engine"], ensure_ascii=False))
        for c in checks:
            _line("file", f"{c.path}: {c.status}")
    if bad:
        print(
            "error: bundle verification failed: " + ", ".join(f"{c.path} {c.status}" for c in bad),
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommand."""
    p = sub.add_parser("inspect", help="print a bundle's manifest and verify every file hash")
    p.add_argument("bundle", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_inspect)
