"""Clients that leave: a cancel or deadline mid-upload or mid-generation is recorded as
CANCELLED / DEADLINE_EXCEEDED in nanovl_requests_total, not as the client's mistake."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import inference_pb2_grpc as pb_grpc
from profiling.telemetry.metrics import ServiceMetrics
from service.server import build_server
from tests import media_fixtures as mf
from tests.conftest import server_settings


@pytest.fixture
async def recorded(engine):
    """A second server on the session engine whose request outcomes are recorded."""
    outcomes: list[tuple[str, grpc.StatusCode]] = []
    metrics = ServiceMetrics.noop()
    metrics.record_request = lambda rpc, modality, status, duration_s=None: outcomes.append((rpc, status))  # type: ignore[method-assign]
    srv = await build_server(engine, server_settings(), metrics=metrics)
    await srv.mark_serving()
    yield srv.target, outcomes
    await srv.stop()


async def _wait_for(outcomes, n: int) -> None:
    for _ in range(200):
        if len(outcomes) >= n:
            return
        await asyncio.sleep(0.05)


def _upload_then_wait():
    png = mf.make_png(64, 64, seed=1)
    header = pb.GenerateChunk(
        header=pb.StreamGenerateHeader(
            parts=[pb.DeclaredPart(part=pb.ContentPart(image=pb.Image()))], sampling=pb.SamplingOptions(max_tokens=2)
        )
    )

    async def chunks():
        yield header
        yield pb.GenerateChunk(media=pb.MediaChunk(part_index=0, data=png[:100], last=False))
        await asyncio.sleep(60)

    return chunks()


def _upload_phase(phase: str):
    """Header; header and a chunk; or every chunk but no End; then the client waits."""
    png = mf.make_png(64, 64, seed=1)
    header = pb.GenerateChunk(
        header=pb.StreamGenerateHeader(
            parts=[pb.DeclaredPart(part=pb.ContentPart(image=pb.Image()))], sampling=pb.SamplingOptions(max_tokens=2)
        )
    )
    msgs = [header]
    if phase != "header":
        msgs.append(pb.GenerateChunk(media=pb.MediaChunk(part_index=0, data=png[:100], last=False)))
    if phase == "last chunk":
        msgs.append(pb.GenerateChunk(media=pb.MediaChunk(part_index=0, data=png[100:], last=True)))

    async def chunks():
        for m in msgs:
            yield m
        await asyncio.sleep(60)

    return chunks()


# (phase, seconds before the cancel): the verifier's timings, where 6 of 9 were miscounted.
CANCELS = [(p, d) for p in ("header", "chunk", "last chunk") for d in (0.05, 0.5, 2.0)]


@pytest.mark.parametrize("case", random.Random(10).sample(CANCELS, 4), ids=str)
async def test_cancel_mid_upload_is_recorded_as_cancelled(recorded, case):
    phase, delay = case
    target, outcomes = recorded
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.InferenceStub(channel).StreamGenerate(_upload_phase(phase))
        await asyncio.sleep(delay)
        call.cancel()
        await _wait_for(outcomes, 1)
    assert outcomes == [("StreamGenerate", grpc.StatusCode.CANCELLED)]


async def test_deadline_mid_upload_is_recorded_as_deadline_exceeded(recorded):
    target, outcomes = recorded
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in pb_grpc.InferenceStub(channel).StreamGenerate(_upload_then_wait(), timeout=1.0):
                pass
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await _wait_for(outcomes, 1)
    assert outcomes == [("StreamGenerate", grpc.StatusCode.DEADLINE_EXCEEDED)]


async def test_deadline_mid_generation_is_recorded_as_deadline_exceeded(recorded):
    target, outcomes = recorded
    req = pb.GenerateRequest(
        parts=[pb.ContentPart(text="go")], sampling=pb.SamplingOptions(max_tokens=4000, ignore_eos=True)
    )
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in pb_grpc.InferenceStub(channel).Generate(req, timeout=1.5):
                pass
        await _wait_for(outcomes, 1)
    assert outcomes == [("Generate", grpc.StatusCode.DEADLINE_EXCEEDED)]
