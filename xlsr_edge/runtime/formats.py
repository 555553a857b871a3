"""Transcript response formats of the OpenAI audio API: json, text, verbose_json, srt, vtt.

A CTC transcript has word times but no sentences, so segments (what subtitles and verbose_json's
`segments` show) are cut from the words: at a pause of `SEGMENT_GAP_SECONDS` or more, or when a segment would
grow past `SEGMENT_MAX_SECONDS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
GRANULARITIES = ("word", "segment")
SEGMENT_GAP_SECONDS = 0.5
SEGMENT_MAX_SECONDS = 10.0
MEDIA_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


@dataclass(frozen=True)
class Segment:
    id: int
    start: float
    end: float
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "start": self.start, "end": self.end, "text": self.text}


def segments(
    text: str,
    words: Sequence[dict[str, Any]],
    duration: float,
    *,
    max_gap: float = SEGMENT_GAP_SECONDS,
    max_seconds: float = SEGMENT_MAX_SECONDS,
) -> list[Segment]:
    """Words ({"word", "start", "end"}) grouped into segments; a text without word times is one segment."""
    if not words:
        return [Segment(0, 0.0, round(duration, 3), text)] if text.strip() else []
    groups: list[list[dict[str, Any]]] = [[words[0]]]
    for w in words[1:]:
        current = groups[-1]
        if w["start"] - current[-1]["end"] >= max_gap or w["end"] - current[0]["start"] > max_seconds:
            groups.append([w])
        else:
            current.append(w)
    return [
        Segment(i, g[0]["start"], g[-1]["end"], " ".join(w["word"] for w in g)) for i, g in enumerate(groups)
    ]


def _timestamp(seconds: float, decimal: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def srt(parts: Sequence[Segment]) -> str:
    return "".join(
        f"{i + 1}\n{_timestamp(p.start, ',')} --> {_timestamp(p.end, ',')}\n{p.text}\n\n"
        for i, p in enumerate(parts)
    )


def vtt(parts: Sequence[Segment]) -> str:
    return "WEBVTT\n\n" + "".join(
        f"{_timestamp(p.start, '.')} --> {_timestamp(p.end, '.')}\n{p.text}\n\n" for p in parts
    )


def render(
    response_format: str,
    *,
    text: str,
    words: Sequence[dict[str, Any]],
    duration: float,
    language: str,
    granularities: Sequence[str] = (),
) -> str | dict[str, Any]:
    """The body of a transcription response: a dict for the JSON formats, a string otherwise."""
    if response_format == "json":
        return {"text": text}
    if response_format == "text":
        return text + "\n"
    parts = segments(text, words, duration)
    if response_format == "srt":
        return srt(parts)
    if response_format == "vtt":
        return vtt(parts)
    if response_format != "verbose_json":
        raise ValueError(f"unknown response format {response_format!r}")
    out: dict[str, Any] = {
        "task": "transcribe",
        "language": language,
        "duration": round(duration, 3),
        "text": text,
    }
    if "segment" in granularities or not granularities:  # OpenAI's default granularity is the segment
        out["segments"] = [p.to_json() for p in parts]
    if "word" in granularities:
        out["words"] = [{"word": w["word"], "start": w["start"], "end": w["end"]} for w in words]
    return out
