"""The profilers' bounds and bookkeeping, without an engine: torch profile limits and the
session watcher (time, memory, steps) over a stand-in for vLLM's AsyncLLM, nanovl's
defaults for vLLM's profiler config, and py-spy against real idle Python processes
(0-sample files, flame graphs with no stacks, native sampling, unique file names)."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from nanovl.cli.profile import write_new_file
from nanovl.errors import FailedPrecondition, InvalidArgument
from nanovl.units import MiB
from profiling.profilers import cpu_profile
from profiling.profilers.cpu_profile import CpuProfileRequest
from profiling.profilers.limits import (
    DEFAULT_TORCH_PROFILE_STEPS,
    CpuProfileLimits,
    TorchProfileLimits,
)
from profiling.profilers.torch_profile import TorchProfiler, TorchProfileRequest
from profiling.sizing.live_budget import ProcessMemory
from service.engine import bounded_profiler_config

# ------------------------------------------------------------------ torch profile limits


def test_torch_bounds_defaults_and_refusals() -> None:
    limits = TorchProfileLimits(max_steps=100, max_duration_s=30, max_memory_growth_bytes=64 * MiB)
    b = limits.bounds(None, None)
    assert (b.max_steps, b.max_duration_s, b.max_memory_growth_bytes) == (DEFAULT_TORCH_PROFILE_STEPS, 30, 64 * MiB)
    assert limits.bounds(100, 0.5).max_steps == 100
    assert TorchProfileLimits(max_steps=10).bounds(None, None).max_steps == 10
    refused = [
        (0, None, "no limit"),  # vLLM's max_iterations=0 is "unbounded"
        (101, None, "--max-torch-profile-steps"),
        (None, 31.0, "--max-torch-profile-s"),
        (None, 0.0, "positive"),
        (None, -1.0, "positive"),
        (None, math.nan, "positive"),
        (None, math.inf, "positive"),
    ]
    for steps, seconds, match in refused:
        with pytest.raises(InvalidArgument, match=match):
            limits.bounds(steps, seconds)
    for bad in (
        {"max_steps": 0},
        {"max_duration_s": 0},
        {"max_duration_s": 10_000},
        {"max_memory_growth_bytes": 1024},
    ):
        with pytest.raises(InvalidArgument, match="--max-torch-profile"):
            TorchProfileLimits(**bad)


def test_native_sampling_has_its_own_rate_cap() -> None:
    limits = CpuProfileLimits(max_rate_hz=100, max_native_rate_hz=20)
    assert limits.default_rate_hz(native=False) == 100 and limits.default_rate_hz(native=True) == 20
    limits.check(CpuProfileRequest(duration_s=1, rate_hz=20, native=True))
    limits.check(CpuProfileRequest(duration_s=1, rate_hz=100, native=False))
    with pytest.raises(InvalidArgument, match="--max-native-profile-rate-hz"):
        limits.check(CpuProfileRequest(duration_s=1, rate_hz=21, native=True))


def test_nanovl_profiler_defaults_fill_only_what_the_operator_left_unset() -> None:
    given = {"profiler": "torch", "torch_profiler_dir": "/t", "torch_profiler_record_shapes": True}
    cpu = bounded_profiler_config(given, cpu=True)
    assert cpu["torch_profiler_with_stack"] is False and cpu["ignore_frontend"] is True
    assert cpu["torch_profiler_record_shapes"] is True  # the operator's choice stays
    assert cpu["torch_profiler_with_memory"] is False
    gpu = bounded_profiler_config(given, cpu=False)
    assert "torch_profiler_with_stack" not in gpu and gpu["ignore_frontend"] is True
    assert bounded_profiler_config({"profiler": "cuda"}, cpu=True) == {"profiler": "cuda"}
    assert bounded_profiler_config({}, cpu=True) == {}


def test_serve_applies_the_defaults_to_vllms_profiler_flag() -> None:
    from nanovl.cli.serve import build_engine_parser

    parser = build_engine_parser()
    base = ["--model", "m", "--profiler-config.profiler=torch", "--profiler-config.torch_profiler_dir=/tmp/t"]
    config = parser.parse_args(base).profiler_config
    assert config.torch_profiler_with_stack is False and config.ignore_frontend is True
    config = parser.parse_args([*base, "--profiler-config.torch_profiler_with_stack=true"]).profiler_config
    assert config.torch_profiler_with_stack is True
    json_form = ["--model", "m", "--profiler-config", '{"profiler": "torch", "torch_profiler_dir": "/tmp/t"}']
    assert parser.parse_args(json_form).profiler_config.ignore_frontend is True
    assert parser.parse_args(["--model", "m"]).profiler_config.profiler is None


# ------------------------------------------------------------------ the session watcher


class _FakeLLM:
    """Stands in for AsyncLLM's profiling calls (pure-logic test of the session bounds)."""

    def __init__(self, profiler: str | None, trace_dir: Path) -> None:
        from vllm.config import ProfilerConfig

        fields = {"profiler": profiler, "torch_profiler_dir": str(trace_dir)} if profiler else {}
        self.vllm_config = SimpleNamespace(profiler_config=ProfilerConfig(**bounded_profiler_config(fields, cpu=True)))
        self.trace_dir = trace_dir
        self.calls: list[tuple] = []

    async def start_profile(self, prefix=None, *, delay_iterations=None, max_iterations=None) -> None:
        self.calls.append(("start", prefix, delay_iterations, max_iterations))

    async def stop_profile(self) -> None:
        self.calls.append(("stop",))
        (self.trace_dir / f"rank0.{len(self.calls)}.pt.trace.json.gz").write_bytes(b"x" * 100)


class _Processes:
    def __init__(self) -> None:
        self.worker_rss = 100 * MiB

    def __call__(self) -> tuple[ProcessMemory, ...]:
        return (
            ProcessMemory(1, "server", "python", 50 * MiB),
            ProcessMemory(2, "engine_core", "VLLM::EngineCore", 60 * MiB),
            ProcessMemory(3, "worker", "VLLM::Worker", self.worker_rss),
        )


def _profiler(tmp_path: Path, limits: TorchProfileLimits, procs=None, profiler: str | None = "torch"):
    llm = _FakeLLM(profiler, tmp_path)
    return TorchProfiler(SimpleNamespace(llm=llm), limits, read_processes=procs or _Processes()), llm


async def _watched_end(torch: TorchProfiler):
    session = torch._session
    assert session is not None and session.watcher is not None
    await asyncio.wait_for(session.watcher, 60)
    assert not torch.running
    return await torch.stop()  # collects the session that ended by itself


async def test_a_session_stops_itself_at_its_duration(tmp_path) -> None:
    torch, llm = _profiler(tmp_path, TorchProfileLimits(max_duration_s=5))
    bounds = await torch.start(TorchProfileRequest(max_iterations=7, max_duration_s=0.3))
    assert bounds.max_steps == 7 and llm.calls == [("start", None, None, 7)]
    result = await _watched_end(torch)
    assert result.ended_by == "duration" and result.duration_s >= 0.3
    assert llm.calls[-1] == ("stop",) and result.files and result.trace_bytes == 100
    with pytest.raises(FailedPrecondition, match="no torch profile is running"):
        await torch.stop()  # collected once


async def test_a_session_stops_early_when_the_worker_grows(tmp_path) -> None:
    procs = _Processes()
    torch, llm = _profiler(tmp_path, TorchProfileLimits(max_memory_growth_bytes=64 * MiB), procs)
    await torch.start(TorchProfileRequest())
    procs.worker_rss += 80 * MiB
    result = await _watched_end(torch)
    assert result.ended_by == "memory" and result.peak_memory_growth_bytes == 80 * MiB
    assert "truncated" in result.warning and "--max-torch-profile-memory" in result.warning
    assert "worker process (pid 3)" in result.warning


async def test_a_session_ends_when_the_worker_wrote_its_steps(tmp_path) -> None:
    torch, llm = _profiler(tmp_path, TorchProfileLimits())
    (tmp_path / "old.pt.trace.json.gz").write_bytes(b"earlier session")
    await torch.start(TorchProfileRequest(max_iterations=3))
    (tmp_path / "dp0_rank0.123.pt.trace.json.gz").write_bytes(b"y" * 10)  # vLLM's worker, after 3 steps
    result = await _watched_end(torch)
    assert result.ended_by == "steps" and "old.pt.trace.json.gz" not in result.files
    assert "dp0_rank0.123.pt.trace.json.gz" in result.files and not result.warning


async def test_a_start_whose_caller_went_away_still_runs_bounded(tmp_path) -> None:
    torch, llm = _profiler(tmp_path, TorchProfileLimits())
    started = asyncio.Event()
    real_start = llm.start_profile

    async def slow_start(*args, **kwargs) -> None:
        started.set()
        await asyncio.sleep(0.2)  # vLLM's start takes effect after the caller left
        await real_start(*args, **kwargs)

    llm.start_profile = slow_start
    call = asyncio.create_task(torch.start(TorchProfileRequest(max_duration_s=0.3)))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    async with asyncio.timeout(30):
        while not torch.running:
            await asyncio.sleep(0.05)
    result = await _watched_end(torch)
    assert result.ended_by == "duration" and llm.calls[-1] == ("stop",)


async def test_stop_start_and_preconditions(tmp_path) -> None:
    torch, llm = _profiler(tmp_path, TorchProfileLimits())
    with pytest.raises(FailedPrecondition, match="no torch profile is running"):
        await torch.stop()
    await torch.start(TorchProfileRequest(prefix="p1", delay_iterations=2))
    with pytest.raises(FailedPrecondition, match="already running"):
        await torch.start(TorchProfileRequest())
    result = await torch.stop()
    assert result.ended_by == "stopped" and not torch.running
    assert llm.calls[0] == ("start", "p1", 2, DEFAULT_TORCH_PROFILE_STEPS)
    with pytest.raises(InvalidArgument, match="no limit"):
        await torch.start(TorchProfileRequest(max_iterations=0))
    assert not torch.running


async def test_profiler_off_or_memory_unseen_is_a_precondition(tmp_path) -> None:
    torch, _ = _profiler(tmp_path, TorchProfileLimits(), profiler=None)
    for call in (torch.start(TorchProfileRequest()), torch.stop()):
        with pytest.raises(FailedPrecondition, match="--profiler-config.profiler=torch"):
            await call
    # Python stacks on CPU (vLLM's default, torch's Python tracer): no bound holds its export.
    torch, llm = _profiler(tmp_path, TorchProfileLimits())
    llm.vllm_config.profiler_config.torch_profiler_with_stack = True
    with pytest.raises(FailedPrecondition, match="torch_profiler_with_stack=true"):
        await torch.start(TorchProfileRequest())
    assert llm.calls == [] and not torch.running
    # A server that cannot see the engine's processes cannot bound a session's memory.
    torch, llm = _profiler(tmp_path, TorchProfileLimits(), procs=lambda: (ProcessMemory(1, "server", "p", 1),))
    with pytest.raises(FailedPrecondition, match="cannot bound"):
        await torch.start(TorchProfileRequest())
    assert llm.calls == []


# ------------------------------------------------------------------ py-spy on real processes


@pytest.fixture(scope="module")
def idle_python():
    """A real Python process that only sleeps (py-spy sees no active thread in it)."""
    code = "import time\nprint('ready', flush=True)\nwhile True: time.sleep(1)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"  # started: idle from now on
    yield proc.pid
    proc.kill()
    proc.wait()


def _process(pid: int) -> ProcessMemory:
    return ProcessMemory(pid, "worker", "python", 0)


async def _record(pid: int, tmp_path: Path, **request) -> cpu_profile.CpuProfileFile:
    req = CpuProfileRequest(duration_s=1, **request)
    name = cpu_profile.file_name(_process(pid), req, "20261130T000000.000Z")
    return await cpu_profile._record(cpu_profile.py_spy_path(), _process(pid), req, tmp_path / name, name)


async def test_an_idle_process_gives_a_0_sample_file_with_a_warning(idle_python, tmp_path) -> None:
    f = await _record(idle_python, tmp_path)
    assert f.samples == 0 and "0 samples" in f.warning and "include_idle" in f.warning
    assert json.loads(f.data)["$schema"].endswith("file-format-schema.json")
    # A flame graph of no stacks: py-spy's writer fails after writing an SVG that says so.
    f = await _record(idle_python, tmp_path, format="flamegraph")
    assert f.samples == 0 and f.warning and f.data.startswith(b"<?xml")
    f = await _record(idle_python, tmp_path, include_idle=True)
    assert f.samples > 0 and not f.warning


async def test_native_sampling_runs_without_nonblocking(idle_python, tmp_path) -> None:
    args = cpu_profile.record_args("py-spy", 1, CpuProfileRequest(native=True), Path("o"))
    assert "--native" in args and "--nonblocking" not in args
    assert "--nonblocking" in cpu_profile.record_args("py-spy", 1, CpuProfileRequest(), Path("o"))
    f = await _record(idle_python, tmp_path, native=True, rate_hz=20, include_idle=True)
    assert f.samples > 0 and f.errors == 0


def _crashing_py_spy(tmp_path: Path, crashes: int) -> str:
    """py-spy behind a wrapper that dies of SIGSEGV, without output, on its first runs (what
    py-spy 0.4.3 does now and then while attaching to a busy process)."""
    wrapper = tmp_path / "py-spy"
    count = tmp_path / "runs"
    wrapper.write_text(
        "#!/bin/bash\n"
        f"echo x >> {count}\nif [ $(wc -l < {count}) -le {crashes} ]; then kill -SEGV $$; fi\n"
        f'exec {cpu_profile.py_spy_path()} "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


async def test_a_py_spy_crash_is_retried(idle_python, tmp_path) -> None:
    req = CpuProfileRequest(duration_s=1, include_idle=True)
    py_spy = _crashing_py_spy(tmp_path, crashes=cpu_profile.PY_SPY_ATTEMPTS - 1)
    f = await cpu_profile._record(py_spy, _process(idle_python), req, tmp_path / "a.json", "a.json")
    assert f.samples > 0 and (tmp_path / "runs").read_text().count("x") == cpu_profile.PY_SPY_ATTEMPTS
    (tmp_path / "runs").unlink()
    py_spy = _crashing_py_spy(tmp_path, crashes=cpu_profile.PY_SPY_ATTEMPTS)
    with pytest.raises(FailedPrecondition, match=r"crashed \(signal 11\) 4 times in a row"):
        await cpu_profile._record(py_spy, _process(idle_python), req, tmp_path / "b.json", "b.json")


def test_file_names_are_unique_per_capture(tmp_path) -> None:
    from datetime import UTC, datetime, timedelta

    t = datetime(2026, 11, 30, 10, 15, 0, 123456, tzinfo=UTC)
    stamps = [cpu_profile.capture_stamp(t + timedelta(milliseconds=i)) for i in range(3)]
    assert stamps[0] == "20261130T101500.123Z" and len(set(stamps)) == 3
    req = CpuProfileRequest()
    assert cpu_profile.file_name(_process(7), req, stamps[0]) == "worker-7-20261130T101500.123Z.speedscope.json"
    # The CLI never writes over a file: a taken name gets a counter.
    paths = [write_new_file(tmp_path, "worker-7-x.speedscope.json", bytes([i])) for i in range(3)]
    assert [p.name for p in paths] == [
        "worker-7-x.speedscope.json",
        "worker-7-x-1.speedscope.json",
        "worker-7-x-2.speedscope.json",
    ]
    assert [p.read_bytes() for p in paths] == [b"\x00", b"\x01", b"\x02"]


def test_sample_warning_wording() -> None:
    req = CpuProfileRequest()
    p = _process(9)
    assert cpu_profile.sample_warning(p, req, 100, 0) == ""
    assert "could not read 30 of 130" in cpu_profile.sample_warning(p, req, 100, 30)
    assert "read no stack" in cpu_profile.sample_warning(p, replace(req, include_idle=True), 0, 0)
