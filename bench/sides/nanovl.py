"""(b) nanovl over gRPC, driven by nanovl's own load tester (``loadtest.run_load_test_async``)."""

from __future__ import annotations

from collections.abc import Sequence

from bench.plan import Point, with_target
from bench.sides import PointOutcome
from loadtest.runner import run_load_test_async
from service.errors import NanovlError

__all__ = ["measure_nanovl"]


async def measure_nanovl(points: Sequence[Point], target: str) -> list[PointOutcome]:
    """One load-test run per point: its warm-up (one request per kind), then the level.
    The load tester prepares the very prompts :mod:`bench.plan` replicated for the others."""
    out = []
    for p in points:
        try:
            result = await run_load_test_async(with_target(p, target))
        except NanovlError as e:
            out.append(PointOutcome.of(p, None, f"{e.code.name}: {e}"))
            continue
        out.append(PointOutcome.of(p, result.levels[0]))
    return out
