"""One module per side: how each frontend (or none) is driven with the same requests.

Every side returns a :class:`PointOutcome` per point, holding the load tester's own
``LevelResult`` so all four are summarised by the same code (``loadtest.stats``).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.cpu import CpuUsage
from bench.plan import Point
from loadtest.results import LevelResult

__all__ = ["PointOutcome"]


@dataclass(frozen=True)
class PointOutcome:
    workload: str
    concurrency: int
    level: LevelResult | None
    error: str | None = None
    warmup_only: bool = False
    cpu: CpuUsage | None = None
    pass_index: int = 0

    @staticmethod
    def of(
        point: Point, level: LevelResult | None, error: str | None = None, cpu: CpuUsage | None = None
    ) -> PointOutcome:
        return PointOutcome(point.workload, point.concurrency, level, error, point.warmup_only, cpu, point.pass_index)
