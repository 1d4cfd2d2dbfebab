"""The closed loop and per-request timing shared by the sides the load tester cannot drive.

Same definitions as ``loadtest`` (see ``loadtest.results``): TTFT is send → first response
carrying a token; a response carrying ``k`` tokens ``gap`` after the previous one adds
``k`` ITL samples of ``gap / k``; records carry absolute ``perf_counter`` times and
``loadtest.stats.level_result`` turns them into the same statistics nanovl's side gets.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from bench.cpu import CpuMeter, own_meter
from bench.plan import Point
from bench.sides import PointOutcome
from loadtest.config import LoadLevel
from loadtest.results import LevelResult, RequestRecord
from loadtest.stats import level_result
from loadtest.workload import PreparedRequest

__all__ = ["StreamClock", "WarmupFailed", "point_measurer", "run_closed_loop"]

T = TypeVar("T")


class StreamClock:
    """Timestamps of one streamed response."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.tokens = 0
        self.deltas = 0
        self.itl: list[float] = []

    def tokens_arrived(self, k: int) -> None:
        if k <= 0:
            return
        now = time.perf_counter()
        self.deltas += 1
        self.tokens += k
        if self.first is None:
            self.first = now
        else:
            assert self.last is not None
            self.itl.extend([(now - self.last) / k] * k)
        self.last = now

    def record(
        self, index: int, kind: str, *, prompt_tokens: int, error: tuple[str, str] | None = None
    ) -> RequestRecord:
        end = time.perf_counter()
        ok = error is None
        return RequestRecord(
            index=index,
            kind=kind,
            start_s=self.start,
            scheduled_s=self.start,
            latency_s=end - self.start,
            ttft_s=self.first - self.start if ok and self.first is not None else None,
            output_tokens=self.tokens if ok else 0,
            prompt_tokens=prompt_tokens if ok else 0,
            deltas=self.deltas if ok else 0,
            error_code=error[0] if error else None,
            error_message=error[1] if error else None,
            itl_s=tuple(self.itl) if ok else (),
        )


class WarmupFailed(RuntimeError):
    pass


Send = Callable[[T, int], Awaitable[RequestRecord]]


class _Items(Generic[T]):
    """Hands out (index, item) in order; workers share it (no await between take and index)."""

    def __init__(self, items: Sequence[T]) -> None:
        self._items = items
        self._next = 0

    def take(self) -> tuple[int, T] | None:
        if self._next >= len(self._items):
            return None
        i = self._next
        self._next += 1
        return i, self._items[i]


async def run_closed_loop(
    send: Send[T],
    warmup: Sequence[T],
    measured: Sequence[T],
    *,
    concurrency: int,
    kinds: Sequence[str],
    meter: CpuMeter | None = None,
) -> LevelResult:
    """Warm-up requests one by one (not measured), then ``measured`` with ``concurrency``
    requests in flight; the level's statistics with this process's CPU time. ``meter``
    runs over the measured requests only."""
    for j, item in enumerate(warmup):
        rec = await send(item, -1 - j)
        if not rec.ok:
            raise WarmupFailed(f"warm-up request failed, nothing was measured: {rec.error_code}: {rec.error_message}")
    items = _Items(measured)
    records: list[RequestRecord] = []

    async def worker() -> None:
        while (taken := items.take()) is not None:
            records.append(await send(taken[1], taken[0]))

    if meter is not None:
        meter.start()
    cpu0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu_s = time.process_time() - cpu0
    if meter is not None:
        meter.stop()
    return level_result(LoadLevel("concurrency", concurrency), records, kinds=kinds, cpu_s=cpu_s)


def point_measurer(
    send: Send[T],
    convert: Callable[[PreparedRequest], T],
    server_pid: int | None,
) -> Callable[[Point], Awaitable[PointOutcome]]:
    """A function measuring one point through ``run_closed_loop``: ``convert`` turns the
    plan's requests into the side's own form before timing; CPU is metered for the server
    (``server_pid``) and this process, or for this process alone when it is the engine's
    frontend (None)."""

    async def measure(p: Point) -> PointOutcome:
        warm = [convert(r) for r in p.warmup]
        measured = [convert(r) for r in p.measured]
        meter = own_meter() if server_pid is None else CpuMeter(server_pid, os.getpid())
        try:
            level = await run_closed_loop(
                send, warm, measured, concurrency=p.concurrency, kinds=p.config.mix.kinds, meter=meter
            )
        except WarmupFailed as e:
            return PointOutcome.of(p, None, str(e))
        return PointOutcome.of(p, level, cpu=meter.usage)

    return measure
