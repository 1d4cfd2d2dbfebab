"""What every ``nanovl`` subcommand shares: the default target and the exit codes."""

from __future__ import annotations

import os

DEFAULT_TARGET = "127.0.0.1:50051"

# Exit codes of every subcommand.
EXIT_OK = 0
EXIT_FAILED = 1  # the RPC or the work failed (the server said no, requests failed)
EXIT_USAGE = 2  # the command could not run: bad arguments, bad files, operator errors


def default_target() -> str:
    """``$NANOVL_TARGET`` when set, else 127.0.0.1:50051 (read when the parser is built)."""
    return os.environ.get("NANOVL_TARGET") or DEFAULT_TARGET
