"""Which asyncio event loop nanovl's processes run on.

uvloop by default where it is installed (every Linux install of nanovl has it): the
server's event loop does the per-message work of every stream — gRPC's completion
callbacks, vLLM's output handler, each ``Delta`` write — and on uvloop that costs less
CPU, which on a small machine is CPU the engine gets back. vLLM's own servers
(``vllm serve``, ``vllm serve --grpc``) run on uvloop for the same reason. The benchmark
measured it (docs/benchmarks.md). ``asyncio`` stays available for debugging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

__all__ = ["EVENT_LOOPS", "EventLoop", "resolve", "run"]

T = TypeVar("T")
EventLoop = Literal["auto", "uvloop", "asyncio"]
EVENT_LOOPS: tuple[EventLoop, ...] = ("auto", "uvloop", "asyncio")


def resolve(choice: EventLoop = "auto") -> Literal["uvloop", "asyncio"]:
    """The loop ``run`` will use: ``auto`` is uvloop when importable, else asyncio."""
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise RuntimeError("--event-loop uvloop: uvloop is not installed (pip install uvloop)") from None
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T], *, loop: EventLoop = "auto") -> T:
    """``asyncio.run(main)`` on the chosen loop."""
    if resolve(loop) == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
