"""A previous run's figures, for the report's before/after table.

``python -m bench.run --baseline docs/benchmarks/results.json`` reads the
``results.json`` a run wrote (this version's or an earlier one: only fields every version
has are read) before anything is measured, so the file may be the one this run
overwrites. Per side, workload and concurrency: the chosen pass's frontend CPU ms per
output token and throughput.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanovl.errors import InvalidArgument

__all__ = ["Baseline", "BaselinePoint", "load_baseline"]


@dataclass(frozen=True)
class BaselinePoint:
    side: str
    workload: str
    concurrency: int
    frontend_ms_per_token: float | None
    output_tokens_per_s: float | None


@dataclass(frozen=True)
class Baseline:
    source: str  # the file it came from
    started_at: str  # when that run started
    points: tuple[BaselinePoint, ...]

    def point(self, side: str, workload: str, concurrency: int) -> BaselinePoint | None:
        for p in self.points:
            if (p.side, p.workload, p.concurrency) == (side, workload, concurrency):
                return p
        return None


def _point(side: str, p: dict[str, Any]) -> BaselinePoint | None:
    level, cpu = p.get("level"), p.get("cpu")
    overall = (level or {}).get("overall") or {}
    tokens = overall.get("output_tokens") or 0
    if not overall.get("succeeded"):
        return None
    ms = cpu["frontend_s"] * 1000.0 / tokens if cpu and tokens else None
    return BaselinePoint(side, p["workload"], int(p["concurrency"]), ms, overall.get("output_tokens_per_s"))


def load_baseline(path: Path) -> Baseline:
    """The chosen pass of every point of every side in ``path`` (a ``results.json``).
    Raises ``InvalidArgument`` when the file is missing or not a benchmark's results."""
    try:
        data = json.loads(Path(path).read_text())
        points = []
        for side in data["sides"]:
            for p in side["points"]:
                if p.get("chosen", True) and (bp := _point(side["side"], p)) is not None:
                    points.append(bp)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InvalidArgument(f"--baseline {path}: not a readable bench results.json ({type(e).__name__}: {e})") from e
    return Baseline(str(path), str(data.get("started_at", "?")), tuple(points))
