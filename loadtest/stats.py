"""Turning request records into statistics (definitions in :mod:`loadtest.results`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from loadtest.config import LoadLevel
from loadtest.results import (
    ClientHealth,
    ErrorCount,
    GroupStats,
    LatencySummary,
    LevelResult,
    RequestRecord,
    TargetStats,
)

__all__ = ["PERCENTILES", "count_errors", "group_stats", "level_result", "percentile", "summarize"]

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (linear interpolation between order statistics, numpy's
    default, as vLLM's ``bench serve`` reports); None without samples."""
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarize(values: Sequence[float]) -> LatencySummary:
    if len(values) == 0:
        return LatencySummary(0, None, None, None, None, None, None)
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = (float(x) for x in np.percentile(a, PERCENTILES))
    return LatencySummary(
        count=int(a.size), mean=float(a.mean()), p50=p50, p90=p90, p99=p99, min=float(a.min()), max=float(a.max())
    )


def count_errors(records: Iterable[RequestRecord]) -> tuple[ErrorCount, ...]:
    """Failures by code, most frequent first, each with the first message seen."""
    counts: dict[str, int] = {}
    first: dict[str, str] = {}
    for r in records:
        if r.error_code is None:
            continue
        counts[r.error_code] = counts.get(r.error_code, 0) + 1
        first.setdefault(r.error_code, r.error_message or "")
    return tuple(ErrorCount(code, n, first[code]) for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def group_stats(kind: str, records: Sequence[RequestRecord], window_s: float) -> GroupStats:
    ok = [r for r in records if r.ok]
    output_tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    deltas = sum(r.deltas for r in ok)
    per_s = 1.0 / window_s if window_s > 0 else 0.0
    return GroupStats(
        kind=kind,
        requests=len(records),
        succeeded=len(ok),
        failed=len(records) - len(ok),
        output_tokens=output_tokens,
        prompt_tokens=prompt_tokens,
        requests_per_s=len(ok) * per_s,
        output_tokens_per_s=output_tokens * per_s,
        prompt_tokens_per_s=prompt_tokens * per_s,
        ttft=summarize([r.ttft_s for r in ok if r.ttft_s is not None]),
        itl=summarize([x for r in ok for x in r.itl_s]),
        tpot=summarize([t for r in ok if (t := r.tpot_s) is not None]),
        e2e=summarize([r.latency_s for r in ok]),
        tokens_per_delta=output_tokens / deltas if deltas else None,
        errors=count_errors(records),
    )


def level_result(
    level: LoadLevel,
    records: Sequence[RequestRecord],
    *,
    kinds: Sequence[str],
    cpu_s: float,
    processes: int = 1,
    targets: Sequence[str] = (),
) -> LevelResult:
    """Statistics of one level. ``records`` carry absolute ``perf_counter`` times (from
    any number of client processes on this host); the result's are relative to the first
    send (or its schedule), and sorted by send time."""
    if records:
        first_send = min(r.start_s for r in records)
        window = max(r.start_s + r.latency_s for r in records) - first_send
        # Open loop: the schedule's origin, which precedes the first (late) send.
        t0 = min(first_send, min(r.scheduled_s for r in records))
    else:
        t0, window = 0.0, 0.0
    rel = sorted(
        (replace(r, start_s=r.start_s - t0, scheduled_s=r.scheduled_s - t0) for r in records),
        key=lambda r: (r.start_s, r.index),
    )
    lags = [max(0.0, r.start_s - r.scheduled_s) for r in rel] if level.mode == "rate" else []
    client = ClientHealth(
        cpu_s=cpu_s,
        cpu_util=cpu_s / window if window > 0 else 0.0,
        processes=processes,
        send_lag_p99_s=percentile(lags, 99),
        send_lag_max_s=max(lags) if lags else None,
    )
    present = [k for k in kinds if any(r.kind == k for r in rel)]
    by_target = ()
    if len(targets) > 1:
        by_target = tuple(
            TargetStats(t, group_stats("all", [r for r in rel if r.target == t], window)) for t in targets
        )
    return LevelResult(
        level=level,
        window_s=window,
        overall=group_stats("all", rel, window),
        by_kind=tuple(group_stats(k, [r for r in rel if r.kind == k], window) for k in present),
        client=client,
        requests=tuple(rel),
        by_target=by_target,
    )
