"""How often each point is measured: ``min_passes`` interleaved passes for every point,
then extra passes for the points whose fastest passes still disagree (see
:class:`bench.config.PassPolicy`).

The same schedule runs for every side (inside the in-process child, and in the benchmark
process for the servers), so every side gets the same rule and the same extra-pass budget.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from bench.config import PassPolicy
from bench.plan import Point
from bench.sides import PointOutcome

__all__ = ["MeasurePoint", "is_settled", "run_schedule", "spread"]

MeasurePoint = Callable[[Point], Awaitable[PointOutcome]]


def _ok_rates(outcomes: Sequence[PointOutcome]) -> list[float]:
    """Throughput (output tokens/s) of the error-free passes, fastest first."""
    rates = [
        o.level.overall.output_tokens_per_s
        for o in outcomes
        if o.level is not None and o.error is None and not o.level.overall.failed
    ]
    return sorted(rates, reverse=True)


def spread(rates: Sequence[float]) -> float | None:
    """How far the second-fastest pass is below the fastest, as a fraction of the fastest
    (None with fewer than two passes)."""
    ordered = sorted(rates, reverse=True)
    if len(ordered) < 2 or ordered[0] <= 0:
        return None
    return (ordered[0] - ordered[1]) / ordered[0]


def is_settled(outcomes: Sequence[PointOutcome], policy: PassPolicy) -> bool:
    """The two fastest error-free passes agree within ``policy.agree_within``; a point
    measured only once (``max_passes`` 1) counts as settled."""
    if policy.max_passes == 1:
        return True
    s = spread(_ok_rates(outcomes))
    return s is not None and s <= policy.agree_within


async def run_schedule(
    points: Sequence[Point],
    measure: MeasurePoint,
    policy: PassPolicy,
    *,
    clock: Callable[[], float] = time.perf_counter,
    log: Callable[[str], None] = lambda _msg: None,
) -> list[PointOutcome]:
    """Measure ``points`` (as :func:`bench.plan.build_points` lays them out: per workload
    a warm-up point, then every level for pass 0, 1, ... ``max_passes - 1``) by the policy:
    warm-up, ``min_passes`` interleaved passes, then one more pass of every unsettled level
    per round while ``max_passes`` and the extra-pass budget allow. Returns every outcome
    (warm-ups included), in the order measured."""
    out: list[PointOutcome] = []
    extra_spent = 0.0
    workloads = list(dict.fromkeys(p.workload for p in points))
    for w in workloads:
        mine = [p for p in points if p.workload == w]
        for p in mine:
            if p.warmup_only:
                out.append(await measure(p))
        by_level: dict[int, list[Point]] = {}
        for p in mine:
            if not p.warmup_only:
                by_level.setdefault(p.concurrency, []).append(p)
        for ps in by_level.values():
            ps.sort(key=lambda p: p.pass_index)
        done: dict[int, list[PointOutcome]] = {c: [] for c in by_level}
        for k in range(policy.min_passes):
            for c, ps in by_level.items():
                if k < len(ps):
                    o = await measure(ps[k])
                    done[c].append(o)
                    out.append(o)
        while True:
            todo = [
                c
                for c, ps in by_level.items()
                if not is_settled(done[c], policy) and len(done[c]) < min(policy.max_passes, len(ps))
            ]
            if not todo:
                break
            if extra_spent >= policy.extra_budget_s:
                log(f"{w}: extra-pass budget ({policy.extra_budget_s:.0f} s) spent; unsettled: c={todo}")
                break
            for c in todo:
                t0 = clock()
                o = await measure(by_level[c][len(done[c])])
                extra_spent += clock() - t0
                done[c].append(o)
                out.append(o)
    return out
