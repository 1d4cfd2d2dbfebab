"""Byte sizes, defined once: the binary units, parsing ``4GiB``-style sizes and printing
sizes in the unit that suits them."""

from __future__ import annotations

import math
import re

from nanovl.errors import InvalidArgument

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": TiB,
}


def parse_bytes(text: str) -> int:
    """``"4GiB"`` → 4294967296; also ``512MiB``, ``2GB`` (decimal), ``1048576`` (bytes).

    Raises ``InvalidArgument`` for anything else (negative, NaN, unknown unit)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise InvalidArgument(f"not a byte size: {text!r} (e.g. 4GiB, 512MiB, 2GB)")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(value):
        raise InvalidArgument(f"not a byte size: {text!r}")
    return int(value)


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it at least 1: ``1.50 GiB``,
    ``87.4 MiB``, ``3.0 KiB``, ``12 B`` (negative values keep their sign)."""
    sign, n = ("-" if n < 0 else ""), abs(n)
    if n >= GiB:
        return f"{sign}{n / GiB:.2f} GiB"
    if n >= MiB:
        return f"{sign}{n / MiB:.1f} MiB"
    if n >= KiB:
        return f"{sign}{n / KiB:.1f} KiB"
    return f"{sign}{int(n)} B"
