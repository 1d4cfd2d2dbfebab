"""The profilers against the session server: py-spy captures that always succeed (idle
and under load), with counts and warnings and unique file names; native sampling; torch
profile sessions that are bounded, refuse what cannot be bounded, and leave the engine
serving."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import grpc
import pytest

from nanovl.client import AsyncInferenceClient, Sampling
from nanovl.v1 import profiling_pb2 as pb
from nanovl.v1 import profiling_pb2_grpc

ROLES = {pb.PROCESS_ROLE_SERVER, pb.PROCESS_ROLE_ENGINE_CORE, pb.PROCESS_ROLE_WORKER}


@pytest.fixture(scope="module")
async def stub(admin_target):
    channel = grpc.aio.insecure_channel(admin_target)
    yield profiling_pb2_grpc.ProfilingStub(channel)
    await channel.close()


@pytest.fixture
async def client(grpc_target):
    c = AsyncInferenceClient(grpc_target, timeout=300)
    yield c
    await c.close()


@contextlib.asynccontextmanager
async def _load(client: AsyncInferenceClient, concurrency: int = 2):
    """Generations running back to back until the block ends; yields their counts."""
    counts = {"ok": 0, "failed": 0}
    stop = asyncio.Event()

    async def one() -> None:
        while not stop.is_set():
            try:
                await client.generate_text("profile me " * 8, sampling=Sampling(max_tokens=16, ignore_eos=True))
                counts["ok"] += 1
            except Exception:
                counts["failed"] += 1

    tasks = [asyncio.create_task(one()) for _ in range(concurrency)]
    while counts["ok"] + counts["failed"] == 0:  # the engine is busy before the block starts
        await asyncio.sleep(0.05)
    try:
        yield counts
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def _capture(stub, **request) -> list[pb.CpuProfileChunk]:
    """One capture's first chunks (with each file's data joined into them)."""
    files: dict[int, pb.CpuProfileChunk] = {}
    async for c in stub.CaptureCpuProfile(pb.CaptureCpuProfileRequest(**request), timeout=120):
        if c.file_name:
            files[c.file_index] = c
        else:
            files[c.file_index].data += c.data
    return [files[i] for i in sorted(files)]


def _check_file(f: pb.CpuProfileChunk) -> int:
    """A file has samples, or says why not; returns its sample count."""
    profile = json.loads(f.data)
    recorded = sum(len(p["samples"]) for p in profile["profiles"])
    assert recorded == f.samples, f.file_name
    if f.samples == 0:
        assert f.warning.startswith("0 samples"), f.file_name
    return f.samples


async def test_12_captures_in_a_row_on_the_idle_server_all_succeed(stub):
    """The tester's "py-spy could not sample ... no output" (4 of 10): 12 of 12 here."""
    names: set[str] = set()
    for _ in range(12):
        files = await _capture(stub, duration_s=1)
        assert {f.role for f in files} == ROLES
        for f in files:  # idle processes give 0-sample files, each with its warning
            _check_file(f)
        names.update(f.file_name for f in files)
    assert len(names) == 12 * len(ROLES)  # unique: role, pid and the capture's start time


async def test_captures_under_load_have_samples(stub, client):
    async with _load(client) as counts:
        captures = [await _capture(stub, duration_s=1) for _ in range(2)]
    assert counts["ok"] > 0 and counts["failed"] == 0
    for files in captures:
        by_role = {f.role: f for f in files}
        assert set(by_role) == ROLES
        for f in files:
            _check_file(f)
        assert by_role[pb.PROCESS_ROLE_WORKER].samples > 0  # the model ran while sampled


async def test_native_sampling_works_within_its_rate_cap(stub):
    (f,) = await _capture(stub, duration_s=1, native=True, processes=[pb.PROCESS_ROLE_ENGINE_CORE], include_idle=True)
    assert f.samples > 0 and f.errors == 0 and _check_file(f)
    frames = {fr["name"] for fr in json.loads(f.data)["shared"]["frames"]}
    assert len(frames) > 5
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _capture(stub, duration_s=1, native=True, rate_hz=100)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "--max-native-profile-rate-hz" in info.value.details()


# ------------------------------------------------------------------ torch profiler


async def _status(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def test_stop_with_nothing_started_is_a_precondition(stub):
    error = await _status(stub.StopTorchProfile(pb.StopTorchProfileRequest(), timeout=60))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no torch profile is running" in error.details()


@pytest.mark.parametrize(
    "request_, words",
    [
        (pb.StartTorchProfileRequest(max_iterations=0), "no limit"),
        (pb.StartTorchProfileRequest(max_iterations=100_000), "--max-torch-profile-steps"),
        (pb.StartTorchProfileRequest(max_duration_s=0), "positive"),
        (pb.StartTorchProfileRequest(max_duration_s=-3), "positive"),
        (pb.StartTorchProfileRequest(max_duration_s=float("nan")), "positive"),
        (pb.StartTorchProfileRequest(max_duration_s=1e9), "--max-torch-profile-s"),
        (pb.StartTorchProfileRequest(profile_prefix="../etc"), "profile_prefix"),
    ],
)
async def test_unbounded_or_excessive_sessions_are_refused(stub, request_, words):
    error = await _status(stub.StartTorchProfile(request_, timeout=60))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details()
    # Nothing was started.
    error = await _status(stub.StopTorchProfile(pb.StopTorchProfileRequest(), timeout=60))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_profile_of_n_steps_under_load_leaves_the_engine_serving(stub, client, torch_trace_dir: Path):
    before = set(torch_trace_dir.iterdir())
    async with _load(client, concurrency=3) as counts:
        started = await stub.StartTorchProfile(pb.StartTorchProfileRequest(max_iterations=10), timeout=120)
        assert started.max_iterations == 10 and started.max_duration_s > 0 and started.max_memory_growth_bytes > 0
        # One session at a time, and no CPU capture beside it.
        error = await _status(stub.StartTorchProfile(pb.StartTorchProfileRequest(), timeout=60))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        error = await _status(_capture(stub, duration_s=1))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "torch profile" in error.details()
        # vLLM's worker writes its trace when it has recorded its 10 steps.
        async with asyncio.timeout(240):
            while not any(".pt.trace.json" in p.name for p in set(torch_trace_dir.iterdir()) - before):
                await asyncio.sleep(0.1)
        stopped = await stub.StopTorchProfile(pb.StopTorchProfileRequest(), timeout=300)
    assert counts["failed"] == 0 and counts["ok"] > 0
    assert stopped.ended_by in (pb.TORCH_PROFILE_END_STEPS, pb.TORCH_PROFILE_END_STOPPED)
    traces = [f for f in stopped.files if ".pt.trace.json" in f]
    assert traces and all(not Path(f).is_absolute() for f in stopped.files)
    assert 0 < stopped.trace_bytes and not stopped.warning
    assert stopped.peak_memory_growth_bytes < started.max_memory_growth_bytes
    # The engine serves on, and the next capture may run.
    result = await client.generate_text("still serving?", sampling=Sampling(max_tokens=4, ignore_eos=True))
    assert result.usage.completion_tokens == 4
    error = await _status(stub.StopTorchProfile(pb.StopTorchProfileRequest(), timeout=60))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    (f,) = await _capture(stub, duration_s=1, processes=[pb.PROCESS_ROLE_SERVER], include_idle=True)
    assert f.samples > 0
