"""Typed reads of bundle.json's fields and the plain-relative-path rule: the part of xlsr_edge.bundle's validation
that does not know the schema (split from it to keep each module short; xlsr_edge.bundle re-exports the names).

Every failure is a BundleError naming the field, what it must be and what was found (in JSON spelling).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn

from xlsr_edge.constants import BUNDLE_JSON
from xlsr_edge.errors import BundleError

_SHA256 = re.compile(r"[0-9a-f]{64}")
_DRIVE = re.compile(r"[A-Za-z]:")


def plain_relative(rel: object) -> bool:
    """A plain relative posix path (`heads/tr.npz`): no absolute path, `..`, `.`, empty part, backslash or NUL.

    Purely lexical: nothing is looked up. Also used for the shard names of a checkpoint's index.
    """
    return (
        isinstance(rel, str)
        and 0 < len(rel) <= 1024
        and "\x00" not in rel
        and "\\" not in rel
        and not rel.startswith("/")
        and not _DRIVE.match(rel)
        and not any(p in ("", ".", "..") for p in rel.split("/"))
    )


def check_relative(rel: object, field: str, source: str = BUNDLE_JSON) -> str:
    """`rel` if it is a plain relative path, else BundleError naming the field (a refusal reveals nothing about
    the machine's files: nothing is looked up)."""
    if not plain_relative(rel):
        subject = field if '"' in field else f'"{field}"'
        raise BundleError(
            f"{source}: {subject} must be a plain relative path inside the bundle (no absolute path, "
            f'"..", backslash or NUL), found {describe(rel)}'
        )
    return rel


def describe(value: object) -> str:
    """What was found, for error messages: short, and the JSON spelling (null, true, a list of 3 items)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"the integer {value}" if abs(value) < 10**15 else f"a {len(str(abs(value)))}-digit integer"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"the number {value!r}"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return f"the string {text if len(text) <= 40 else text[:37] + '…'}"
    if isinstance(value, list):
        return f"a list of {len(value)} items" if value else "an empty list"
    if isinstance(value, dict):
        return "an object" if value else "an empty object"
    return type(value).__name__


def fail(source: str, name: str, expected: str, value: object) -> NoReturn:
    raise BundleError(f'{source}: "{name}" must be {expected}, found {describe(value)}')


class Fields:
    """Typed reads of one JSON object; each failure names the field, what it must be and what was found."""

    def __init__(self, data: object, source: str, prefix: str = "", what: str = "an object") -> None:
        if not isinstance(data, dict):
            if prefix:
                fail(source, prefix.rstrip("."), what, data)
            raise BundleError(
                f"{source} must hold a JSON object, found {describe(data)}; re-export the bundle"
            )
        self.data, self.source, self.prefix = data, source, prefix

    def name(self, key: str) -> str:
        return self.prefix + key

    def fail(self, key: str, expected: str, value: object) -> NoReturn:
        fail(self.source, self.name(key), expected, value)

    def raw(self, key: str, default: Any = ...) -> Any:
        if key in self.data:
            return self.data[key]
        if default is ...:
            raise BundleError(f'{self.source}: "{self.name(key)}" is missing; re-export the bundle')
        return default

    def integer(self, key: str, lo: int, hi: int, default: Any = ...) -> int:
        v = self.raw(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.fail(key, f"an integer between {lo} and {hi}", v)
        return v

    def number(self, key: str, lo: float, hi: float, default: Any = ...) -> float:
        v = self.raw(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:  # NaN fails too
            self.fail(key, f"a number between {lo:g} and {hi:g}", v)
        return float(v)

    def boolean(self, key: str, default: Any = ...) -> bool:
        v = self.raw(key, default)
        if not isinstance(v, bool):
            self.fail(key, "true or false", v)
        return v

    def string(
        self, key: str, default: Any = ..., *, choices: tuple[str, ...] = (), null: bool = False
    ) -> str:
        v = self.raw(key, default)
        if v is None and null:
            return v
        if not isinstance(v, str) or (choices and v not in choices):
            expected = " or ".join(json.dumps(c) for c in choices) if choices else "a string"
            self.fail(key, expected + (" or null" if null else ""), v)
        return v

    def path(self, key: str, default: Any = ...) -> str:
        return check_relative(self.raw(key, default), self.name(key), self.source)

    def sha256(self, key: str) -> str:
        v = self.raw(key)
        if not isinstance(v, str) or not _SHA256.fullmatch(v):
            self.fail(key, "a sha256 (64 lowercase hex digits)", v)
        return v

    def obj(
        self, key: str, default: Any = ..., *, null: bool = False, what: str = "an object"
    ) -> dict[str, Any] | None:
        v = self.raw(key, default)
        if v is None and null:
            return None
        if not isinstance(v, dict):
            self.fail(key, what + (" or null" if null else ""), v)
        return v

    def sub(self, key: str, default: Any = ...) -> Fields:
        return Fields(self.raw(key, default), self.source, f"{self.name(key)}.")

    def strings(self, key: str) -> list[str]:
        v = self.raw(key)
        if not isinstance(v, list) or not v or len(v) > 1_000_000:
            self.fail(key, "a non-empty list of strings", v)
        for i, t in enumerate(v):
            if not isinstance(t, str):
                fail(self.source, f"{self.name(key)}[{i}]", "a string", t)
        return list(v)

    def integers(self, key: str, lo: int, hi: int) -> list[int]:
        v = self.raw(key)
        if not isinstance(v, list) or not 1 <= len(v) <= 64:
            self.fail(key, f"a list of 1 to 64 integers between {lo} and {hi}", v)
        for i, n in enumerate(v):
            if isinstance(n, bool) or not isinstance(n, int) or not lo <= n <= hi:
                fail(self.source, f"{self.name(key)}[{i}]", f"an integer between {lo} and {hi}", n)
        return list(v)
