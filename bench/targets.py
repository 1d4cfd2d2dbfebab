"""The issue's targets, judged from a run (reported, never asserted in tests).

- nanovl throughput ≥ 0.97 × in-process at each concurrency (every workload);
- nanovl TTFT p50 within 2 ms of in-process at concurrency 1;
- image and mixed traffic: nanovl ≥ 1.3 × vLLM HTTP's throughput with ≤ 0.8 × its TTFT p50.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.results import BenchResult
from loadtest.results import GroupStats

__all__ = [
    "THROUGHPUT_VS_INPROCESS",
    "TTFT_DELTA_S",
    "VS_HTTP_THROUGHPUT",
    "VS_HTTP_TTFT",
    "TargetCheck",
    "check_targets",
]

THROUGHPUT_VS_INPROCESS = 0.97
TTFT_DELTA_S = 0.002
VS_HTTP_THROUGHPUT = 1.3
VS_HTTP_TTFT = 0.8
VS_HTTP_WORKLOADS = ("image", "mixed")


@dataclass(frozen=True)
class TargetCheck:
    target: str
    workload: str
    concurrency: int
    measured: str  # the figure judged, for people
    met: bool | None  # None: a side it needs has no result


def _stats(result: BenchResult, side: str, workload: str, concurrency: int) -> GroupStats | None:
    run = result.side(side)  # type: ignore[arg-type]
    point = run.point(workload, concurrency) if run is not None else None
    if point is None or point.stats is None or point.stats.succeeded == 0:
        return None
    return point.stats


def _ttft(g: GroupStats) -> float | None:
    return g.ttft.p50


def check_targets(result: BenchResult) -> list[TargetCheck]:
    checks: list[TargetCheck] = []
    levels = [c for c, _ in result.config.levels]
    for w in result.config.workloads:
        for c in levels:
            a, b = _stats(result, "inprocess", w, c), _stats(result, "nanovl", w, c)
            if a is None or b is None or a.output_tokens_per_s == 0:
                checks.append(TargetCheck("throughput ≥ 0.97× in-process", w, c, "n/a", None))
                continue
            ratio = b.output_tokens_per_s / a.output_tokens_per_s
            checks.append(
                TargetCheck("throughput ≥ 0.97× in-process", w, c, f"{ratio:.2f}×", ratio >= THROUGHPUT_VS_INPROCESS)
            )
        c1 = min(levels)
        a, b = _stats(result, "inprocess", w, c1), _stats(result, "nanovl", w, c1)
        ta, tb = (_ttft(a) if a else None), (_ttft(b) if b else None)
        if ta is None or tb is None:
            checks.append(TargetCheck(f"TTFT p50 within 2 ms of in-process at c={c1}", w, c1, "n/a", None))
        else:
            delta = tb - ta
            checks.append(
                TargetCheck(
                    f"TTFT p50 within 2 ms of in-process at c={c1}",
                    w,
                    c1,
                    f"{delta * 1000:+.1f} ms",
                    delta <= TTFT_DELTA_S,
                )
            )
        if w not in VS_HTTP_WORKLOADS:
            continue
        for c in levels:
            b, h = _stats(result, "nanovl", w, c), _stats(result, "vllm-http", w, c)
            tb, th = (_ttft(b) if b else None), (_ttft(h) if h else None)
            if b is None or h is None or h.output_tokens_per_s == 0 or tb is None or not th:
                checks.append(TargetCheck("≥ 1.3× vLLM HTTP throughput, ≤ 0.8× its TTFT", w, c, "n/a", None))
                continue
            tput, ttft = b.output_tokens_per_s / h.output_tokens_per_s, tb / th
            checks.append(
                TargetCheck(
                    "≥ 1.3× vLLM HTTP throughput, ≤ 0.8× its TTFT",
                    w,
                    c,
                    f"throughput {tput:.2f}×, TTFT {ttft:.2f}×",
                    tput >= VS_HTTP_THROUGHPUT and ttft <= VS_HTTP_TTFT,
                )
            )
    return checks
