"""(b) nanovl over gRPC, driven by nanovl's own load tester (``loadtest.run_load_test_async``)."""

from __future__ import annotations

import os

from bench.cpu import CpuMeter
from bench.passes import MeasurePoint
from bench.plan import Point, with_target
from bench.sides import PointOutcome
from loadtest.config import LoadLevel
from loadtest.results import LevelResult, RequestRecord
from loadtest.runner import run_load_test_async
from nanovl.errors import NanovlError

__all__ = ["MeterAroundLevel", "nanovl_measurer"]


class MeterAroundLevel:
    """A load-test progress listener that runs a CPU meter over the level (after the
    load tester's warm-up requests, like the other sides)."""

    def __init__(self, meter: CpuMeter) -> None:
        self.meter = meter

    def phase(self, text: str, total: int | None = None) -> None:
        pass

    def phase_advance(self) -> None:
        pass

    def level_started(self, level: LoadLevel, requests: int | None, duration_s: float | None) -> None:
        self.meter.start()

    def request_finished(self, record: RequestRecord) -> None:
        pass

    def level_finished(self, result: LevelResult) -> None:
        self.meter.stop()


def nanovl_measurer(target: str, server_pid: int, connections: int = 1) -> MeasurePoint:
    """A function measuring one point: one load-test run over ``connections`` channels
    (its warm-up, one request per kind, then the level). The load tester prepares the very
    prompts :mod:`bench.plan` replicated for the other sides."""

    async def measure(p: Point) -> PointOutcome:
        meter = CpuMeter(server_pid, os.getpid())
        try:
            result = await run_load_test_async(with_target(p, target, connections), progress=MeterAroundLevel(meter))
        except NanovlError as e:
            return PointOutcome.of(p, None, f"{e.code.name}: {e}")
        return PointOutcome.of(p, result.levels[0], cpu=meter.usage)

    return measure
