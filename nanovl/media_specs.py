"""Media item sizes as people type them, parsed once for every tool.

``640x480`` (an image), ``8x320x240`` (a video: frames x width x height), ``30`` (audio
seconds), each optionally followed by ``:COUNT`` (that many items). Used by
``nanovl profile`` (plan and dummy sizes) and ``nanovl loadtest`` (synthetic media sizes).
"""

from __future__ import annotations

import math

from nanovl.errors import InvalidArgument


def parse_dims(text: str, dims: int, what: str) -> tuple[int, ...]:
    """``"640x480"`` → (640, 480): ``dims`` positive integers joined by ``x``.

    Raises ``InvalidArgument`` naming ``what`` (e.g. the flag) otherwise."""
    parts = text.strip().lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != dims or any(v <= 0 for v in values):
        shape = "x".join(["N"] * dims)
        raise InvalidArgument(f"{what}: expected {dims} positive integers as {shape}, got {text!r}")
    return values


def parse_seconds(text: str, what: str) -> float:
    """``"30"`` or ``"2.5"`` → seconds, finite and > 0; ``InvalidArgument`` otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"{what}: expected a positive number of seconds, got {text!r}")
    return value


def split_count(text: str, what: str) -> tuple[str, int]:
    """``"640x480:3"`` → ("640x480", 3); no ``:COUNT`` means one item."""
    size, sep, count = text.partition(":")
    if sep and not count.isdigit():
        raise InvalidArgument(f"{what}: bad count in {text!r}: use SIZE[:COUNT]")
    return size, int(count) if sep else 1
