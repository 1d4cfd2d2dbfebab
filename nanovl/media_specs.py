"""Media item sizes as people type them, parsed once for every tool.

``640x480`` (an image), ``8x320x240`` (a video: frames x width x height; ``8x320x240@30``
sampled at 30 frames per second), ``30`` (audio seconds), each optionally followed by
``:COUNT`` (that many items). Used by
``nanovl profile`` (plan and dummy sizes) and ``nanovl loadtest`` (synthetic media sizes).
"""

from __future__ import annotations

import math
import re

from nanovl.errors import InvalidArgument

# Far beyond any real media, and within the API's uint32 fields.
MAX_DIM = (1 << 31) - 1


def parse_dims(text: str, dims: int, what: str) -> tuple[int, ...]:
    """``"640x480"`` → (640, 480): ``dims`` positive integers (at most ``MAX_DIM``) joined by ``x``.

    Raises ``InvalidArgument`` naming ``what`` (e.g. the flag) otherwise."""
    parts = text.strip().lower().split("x")
    values = tuple(int(p) for p in parts if re.fullmatch(r"[0-9]+", p.strip()))
    if len(values) != len(parts) or len(values) != dims or any(not 0 < v <= MAX_DIM for v in values):
        shape = "x".join(["N"] * dims)
        raise InvalidArgument(f"{what}: expected {dims} positive integers as {shape}, got {text!r}")
    return values


def _positive_number(text: str, what: str, unit: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"{what}: expected a positive number of {unit}, got {text!r}")
    return value


def parse_seconds(text: str, what: str) -> float:
    """``"30"`` or ``"2.5"`` → seconds, finite and > 0; ``InvalidArgument`` otherwise."""
    return _positive_number(text, what, "seconds")


def split_count(text: str, what: str) -> tuple[str, int]:
    """``"640x480:3"`` → ("640x480", 3); no ``:COUNT`` means one item."""
    size, sep, count = text.partition(":")
    if sep and not (re.fullmatch(r"[0-9]+", count) and int(count) <= MAX_DIM):
        raise InvalidArgument(f"{what}: bad count in {text!r}: use SIZE[:COUNT]")
    return size, int(count) if sep else 1


def parse_rate(text: str, what: str) -> float:
    """``"29.97"`` → frames per second, finite and > 0; ``InvalidArgument`` otherwise."""
    return _positive_number(text, what, "frames per second")


def split_rate(text: str, what: str) -> tuple[str, float | None]:
    """``"16x640x360@30"`` → ("16x640x360", 30.0); no ``@FPS`` means None."""
    size, sep, rate = text.partition("@")
    return size, parse_rate(rate, what) if sep else None
