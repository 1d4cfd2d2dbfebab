"""The client's hostile-condition guarantees against the real server and engine."""

from __future__ import annotations

import asyncio
import collections
import gc
import time

import grpc

from nanovl.client import AsyncInferenceClient, Delta, InferenceClient, InferenceRpcError, Part, Sampling
from tests import media_fixtures as mf

LONG = Sampling(max_tokens=4000, ignore_eos=True, temperature=0.0)


async def _engine_idle(engine, timeout_s: float = 15.0) -> bool:
    for _ in range(int(timeout_s / 0.05)):
        if engine.num_unfinished_requests() == 0:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_abandoned_async_generation_aborts_the_engine_request(grpc_target, engine):
    assert await _engine_idle(engine)
    async with AsyncInferenceClient(grpc_target, timeout=120) as client:
        gen = client.generate("count to a thousand", sampling=LONG)
        async for event in gen:
            if isinstance(event, Delta):
                break
        assert engine.num_unfinished_requests() == 1
        t0 = time.perf_counter()
        del gen, event  # break, then drop it
        gc.collect()
        assert await _engine_idle(engine), "the server kept generating for an abandoned call"
        assert time.perf_counter() - t0 < 15


async def test_abandoned_sync_generation_aborts_the_engine_request(grpc_target, engine):
    assert await _engine_idle(engine)

    def run() -> int:
        with InferenceClient(grpc_target, timeout=120) as client:
            gen = client.generate("count", sampling=LONG)
            for event in gen:
                if isinstance(event, Delta):
                    break
            busy = engine.num_unfinished_requests()
            del gen, event
            gc.collect()
            return busy

    assert await asyncio.to_thread(run) == 1
    assert await _engine_idle(engine)


async def test_16_concurrent_rejected_stream_generates_see_invalid_argument(grpc_target):
    """A header the server rejects while 16 clients are still uploading: every caller
    sees the server's INVALID_ARGUMENT and message, 100 rounds or as many as fit in 12 s."""
    image = Part.image(mf.make_png(1024, 1024, seed=3))
    bad = Sampling(max_tokens=2, top_p=1.5)
    seen: collections.Counter = collections.Counter()
    rounds = 0
    async with AsyncInferenceClient(grpc_target, timeout=60) as client:

        async def one() -> None:
            try:
                await client.generate_text([image, "x"], sampling=bad, upload="stream", chunk_size=64 << 10)
                seen["OK"] += 1
            except InferenceRpcError as e:
                seen[(e.code, "top_p" in e.details)] += 1

        t0 = time.perf_counter()
        while rounds < 100 and time.perf_counter() - t0 < 12:
            await asyncio.gather(*(one() for _ in range(16)))
            rounds += 1
    assert rounds >= 5
    assert seen == {(grpc.StatusCode.INVALID_ARGUMENT, True): 16 * rounds}, seen
