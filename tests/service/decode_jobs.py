"""Jobs for tests/service/test_decode_workers.py, run inside decode workers: module-level
(a worker imports them by name) and importing next to nothing (a worker spawns fast)."""

from __future__ import annotations

import ctypes
import os
import time

from nanovl.errors import InvalidArgument


def segfault() -> None:
    ctypes.string_at(0)  # SIGSEGV, as a native decoder reading past a buffer


def abort() -> None:
    os.abort()  # SIGABRT, as a failed assertion in C


def sleep_then(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


def refuse(message: str) -> None:
    raise InvalidArgument(message)


def bug() -> None:
    raise KeyError("a bug in the decoder's Python code")


def pid() -> int:
    return os.getpid()
