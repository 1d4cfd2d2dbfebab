"""What a benchmark run produces: per side, per (workload, concurrency) point, the load
tester's own ``LevelResult``; and the JSON written to ``docs/benchmarks/results.json``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.baseline import Baseline
from bench.config import BenchConfig, Side, UploadSpec
from bench.cpu import CpuUsage
from bench.machine import MachineInfo
from loadtest.results import GroupStats, LevelResult

__all__ = [
    "BenchResult",
    "PointResult",
    "ProfileEntry",
    "ProfileSummary",
    "SideRun",
    "UploadResult",
    "UploadSample",
    "write_json",
]


@dataclass(frozen=True)
class PointResult:
    side: Side
    workload: str
    concurrency: int
    level: LevelResult | None  # None when the point could not run
    error: str | None = None
    # How many measured requests' prompt token counts differ from side (a)'s for the
    # same request index (None: no comparison possible).
    prompt_mismatches: int | None = None
    cpu: CpuUsage | None = None  # over the measured requests
    pass_index: int = 0
    chosen: bool = True  # the pass the report shows: the fastest of the point's passes

    @property
    def stats(self) -> GroupStats | None:
        return self.level.overall if self.level is not None else None


@dataclass(frozen=True)
class SideRun:
    side: Side
    command: str  # how the server (or engine) was started
    startup_s: float | None
    points: tuple[PointResult, ...]
    error: str | None = None  # the side could not run at all (exact error)
    load_before: tuple[float, float, float] | None = None
    server_pid: int | None = None
    # Not run, on purpose: the side is not available here (e.g. vLLM's Rust frontend on a
    # CPU-only vLLM) or its server refused a flag of the side's (a nanovl variant).
    skipped: str | None = None
    duration_s: float | None = None  # the side's whole time, engine start included
    connections: int = 1  # channels the load tester opened to the server (nanovl sides)

    def point(self, workload: str, concurrency: int) -> PointResult | None:
        """The point's chosen pass."""
        for p in self.points:
            if p.workload == workload and p.concurrency == concurrency and p.chosen:
                return p
        return None

    def passes(self, workload: str, concurrency: int) -> tuple[PointResult, ...]:
        return tuple(p for p in self.points if p.workload == workload and p.concurrency == concurrency)

    @property
    def chosen(self) -> tuple[PointResult, ...]:
        """The chosen pass of every point, workload by workload, by concurrency."""
        workloads = list(dict.fromkeys(p.workload for p in self.points))
        return tuple(
            sorted((p for p in self.points if p.chosen), key=lambda p: (workloads.index(p.workload), p.concurrency))
        )


@dataclass(frozen=True)
class ProfileEntry:
    name: str
    percent: float


@dataclass(frozen=True)
class ProfileSummary:
    """A py-spy capture of the nanovl server process during one unmeasured pass."""

    workload: str
    concurrency: int
    busy_s: float  # seconds of non-idle samples, all threads
    path: str  # the speedscope file
    by_package: tuple[ProfileEntry, ...]  # share of samples with a frame of the package on the stack
    by_function: tuple[ProfileEntry, ...]  # share of samples where the function is the leaf
    error: str | None = None
    native: bool = False  # captured with --native (native frames included)
    native_failed: str | None = None  # why --native could not be used (the capture fell back)
    split: tuple[ProfileEntry, ...] = ()  # owners' shares (bench.profile.split_speedscope)
    requests: int = 0
    output_tokens: int = 0
    # Frontend CPU during the profiled pass (psutil): seconds, and ms per output token
    # (sampling slows the process, so these are above the measured passes' figures).
    frontend_ms_per_token: float | None = None
    frontend_cpu_s: float | None = None
    waiting_s: float = 0.0  # samples left out as waiting threads (bench.profile.is_waiting)


@dataclass(frozen=True)
class UploadSample:
    """One request of the chunked-upload case; server figures from ``Final.timings``."""

    variant: str  # "stream": StreamGenerate in chunks; "unary": Generate, the video inline
    index: int
    video_bytes: int
    client_ttft_s: float | None  # send (first chunk) → first token, as the client saw it
    server_ttft_s: float | None  # Generate: start → first token; StreamGenerate: End → first token
    upload_s: float | None  # StreamGenerate: header → End (0 for Generate)
    decode_media_s: float | None
    preprocess_s: float | None
    prefill_s: float | None
    prompt_tokens: int = 0
    error: str | None = None


@dataclass(frozen=True)
class UploadResult:
    spec: UploadSpec
    video_frames: int  # frames in each clip (they differ by a few, being filled to a size)
    video_seconds: float
    samples: tuple[UploadSample, ...] = ()
    error: str | None = None  # the case could not run
    # The server's (--max-message-bytes, --max-request-bytes), from GetModelInfo.
    server_limits: tuple[int, int] | None = None


@dataclass(frozen=True)
class BenchResult:
    config: BenchConfig
    machine: MachineInfo
    started_at: str
    duration_s: float
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float]
    checkpoint: str
    engine_flags: tuple[str, ...]
    # Fields the in-process args take from vLLM's CLI parser defaults, to equal the servers'.
    inprocess_extra: tuple[tuple[str, str], ...]
    media: tuple[tuple[str, float], ...]  # (kind, mean media bytes) of the measured requests
    sides: tuple[SideRun, ...]
    profiles: tuple[ProfileSummary, ...] = ()
    upload: UploadResult | None = None
    baseline: Baseline | None = None

    def side(self, side: Side) -> SideRun | None:
        for s in self.sides:
            if s.side == side:
                return s
        return None


def _level_json(level: LevelResult, *, with_requests: bool) -> dict[str, Any]:
    def stats(g: GroupStats) -> dict[str, Any]:
        return dataclasses.asdict(g)

    out = {
        "window_s": level.window_s,
        "overall": stats(level.overall),
        "by_kind": [stats(g) for g in level.by_kind],
        "client": dataclasses.asdict(level.client),
    }
    if with_requests:
        # Per request, without the per-token ITL samples (large; summarised above).
        out["requests"] = [{k: v for k, v in dataclasses.asdict(r).items() if k != "itl_s"} for r in level.requests]
    return out


def to_json(result: BenchResult) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return dataclasses.asdict(v)
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return v

    out: dict[str, Any] = {
        f.name: plain(getattr(result, f.name)) for f in dataclasses.fields(result) if f.name != "sides"
    }
    out["sides"] = []
    for s in result.sides:
        side = {k: v for k, v in dataclasses.asdict(s).items() if k != "points"}
        side["points"] = [
            {
                "workload": p.workload,
                "concurrency": p.concurrency,
                "error": p.error,
                "prompt_mismatches": p.prompt_mismatches,
                "pass_index": p.pass_index,
                "chosen": p.chosen,
                "cpu": dataclasses.asdict(p.cpu) if p.cpu is not None else None,
                # Per-request records for the chosen pass only: every pass's would make the
                # committed file several MB (the others' summaries stay; all of it is in the
                # run's pickle under .cache/bench).
                "level": _level_json(p.level, with_requests=p.chosen) if p.level is not None else None,
            }
            for p in s.points
        ]
        out["sides"].append(side)
    return out


def write_json(result: BenchResult, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(result), indent=1, default=str) + "\n")
    return path
