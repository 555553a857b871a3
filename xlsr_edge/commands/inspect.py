"""`xlsr-edge inspect`: print a bundle's manifest and verify every file hash (exit 2 on a mismatch)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xlsr_edge.constants import EXIT_OK, EXIT_USER_ERROR


def _inspect(args: argparse.Namespace) -> int:
    from xlsr_edge.bundle import read_manifest, verify_files

    manifest = read_manifest(args.bundle)
    checks = verify_files(args.bundle, manifest)
    bad = [c for c in checks if c.status != "ok"]
    data = manifest.to_json()
    data["verification"] = {c.path: c.status for c in checks}
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        m = manifest.model
        print(f"bundle        {args.bundle}")
        print(
            f"schema        {manifest.schema_version}   precision {manifest.precision}   opset {manifest.opset}"
        )
        print(f"vocabulary    {len(m.vocab)} tokens, blank id {m.blank_id}, delimiter {m.word_delimiter!r}")
        print(
            f"audio         {m.sample_rate} Hz, do_normalize={m.do_normalize}, frame stride {m.frame_stride_samples}"
            f" samples, receptive field {m.receptive_field_samples}"
        )
        print(f"padding       {'attention_mask' if m.uses_attention_mask else 'none: feed unpadded'}")
        print(
            f"source        {manifest.source.get('path')} sha256 {str(manifest.source.get('sha256'))[:16]}…"
        )
        p = manifest.parity or {}
        if "vs_pytorch" in p:
            v = p["vs_pytorch"]
            print(
                f"parity        {'passed' if p.get('passed') else 'FAILED'}: max |diff| {v['max_abs_diff']:.2e}, "
                f"argmax agreement {v['argmax_agreement']:.4f}, transcripts equal {v['transcripts_equal']}"
            )
        else:
            print(f"parity        {p.get('skipped', 'none')}")
        if "precision_report" in manifest.extra:
            from xlsr_edge.precision.convert import format_report

            for line in format_report(manifest.extra["precision_report"]):
                print(line)
        for extra_key in ("engine",):
            if extra_key in manifest.extra:
                print(f"{extra_key:<13} {json.dumps(manifest.extra[extra_key], ensure_ascii=False)}")
        for c in checks:
            print(f"file          {c.path}: {c.status}")
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
