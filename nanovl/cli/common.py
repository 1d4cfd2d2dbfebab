"""What every ``nanovl`` subcommand shares: the default target, the exit codes, local
argument checks and how text from the server reaches a terminal."""

from __future__ import annotations

import argparse
import os
import unicodedata
from pathlib import Path

DEFAULT_TARGET = "127.0.0.1:50051"

# Exit codes of every subcommand.
EXIT_OK = 0
EXIT_FAILED = 1  # the RPC or the work failed (the server said no, requests failed)
EXIT_USAGE = 2  # the command could not run: bad arguments, bad files, operator errors


def default_target() -> str:
    """``$NANOVL_TARGET`` when set, else 127.0.0.1:50051 (read when the parser is built)."""
    return os.environ.get("NANOVL_TARGET") or DEFAULT_TARGET


def readable_file(value: str) -> Path:
    """argparse ``type=`` for an input file: a missing, unreadable or empty file is a usage
    error reported by the parser (exit 2) before anything connects or loads."""
    path = Path(value)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {value}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{value} is not a regular file")
    if size == 0:
        raise argparse.ArgumentTypeError(f"{value} is empty")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {value}: permission denied")
    return path


# Kept as they are: they lay text out rather than control the terminal.
_LAYOUT = frozenset("\n\t")


def escape_nonprintable(text: str) -> str:
    """``text`` safe for a terminal: control, format, line/paragraph separator, surrogate,
    private-use and unassigned characters become Python-style escapes (``\\x02``,
    ``\\u200b``); newlines, tabs and spaces stay. A model's output is untrusted: raw ESC or BEL bytes would drive the
    operator's terminal."""
    out = []
    for ch in text:
        if ch in _LAYOUT:
            out.append(ch)
            continue
        category = unicodedata.category(ch)
        if category[0] == "C" or category in ("Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)
