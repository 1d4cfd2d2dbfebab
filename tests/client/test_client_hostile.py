"""The client under hostile conditions (issue 10, deliver 5): an abandoned generation
cancels its call, and a StreamGenerate the server rejects mid-upload surfaces the server's
status and message, never grpc.aio's ``Internal error from Core``."""

from __future__ import annotations

import asyncio
import collections
import gc
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import grpc.aio
import pytest
import pytest_asyncio

from nanovl.client import AsyncInferenceClient, Delta, InferenceClient, InferenceRpcError, Part, Sampling, Started
from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import inference_pb2_grpc as pb_grpc

REJECTION = "sampling.top_p must be in (0, 1], got 1.5"


class _Servicer(pb_grpc.InferenceServicer):
    """Rejects every StreamGenerate at its header; Generate streams until cancelled."""

    def __init__(self) -> None:
        self.cancelled = 0
        self.running = 0

    async def StreamGenerate(self, request_iterator, context):
        async for _ in request_iterator:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, REJECTION)
        yield pb.GenerateResponse()  # pragma: no cover

    async def Generate(self, request, context):
        self.running += 1
        try:
            yield pb.GenerateResponse(started=pb.Started(request_id="r"))
            while True:
                yield pb.GenerateResponse(delta=pb.Delta(text=".", token_ids=[1]))
                await asyncio.sleep(0.005)
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise
        finally:
            self.running -= 1


@pytest_asyncio.fixture(scope="module")
async def fake() -> AsyncIterator[tuple[str, _Servicer]]:
    server = grpc.aio.server()
    servicer = _Servicer()
    pb_grpc.add_InferenceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", servicer
    await server.stop(None)


async def _until(predicate, timeout_s: float = 10.0) -> bool:
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


PROMPT = [Part.image(os.urandom(1 << 20)), "describe"]


async def _rejected_rounds(client: AsyncInferenceClient, rounds: int, concurrency: int = 16) -> collections.Counter:
    seen: collections.Counter = collections.Counter()

    async def one() -> None:
        try:
            await client.generate_text(PROMPT, upload="stream", chunk_size=64 << 10)
            seen["OK"] += 1
        except InferenceRpcError as e:
            seen[(e.code, e.details)] += 1

    for _ in range(rounds):
        await asyncio.gather(*(one() for _ in range(concurrency)))
    return seen


@pytest.mark.parametrize("interceptors", ["none", "opentelemetry"])
async def test_16_concurrent_rejected_streams_100_times_see_the_servers_status(fake, interceptors):
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    target, _ = fake
    ic = aio_client_interceptors() if interceptors == "opentelemetry" else ()
    async with AsyncInferenceClient(target, timeout=30, interceptors=ic) as client:
        seen = await _rejected_rounds(client, rounds=100)
    assert seen == {(grpc.StatusCode.INVALID_ARGUMENT, REJECTION): 1600}, seen.most_common(3)


async def test_sync_client_rejected_streams_see_the_servers_status(fake):
    target, _ = fake
    seen: collections.Counter = collections.Counter()

    def run() -> None:
        with InferenceClient(target, timeout=30) as client, ThreadPoolExecutor(16) as pool:

            def one(_: int) -> None:
                try:
                    client.generate_text(PROMPT, upload="stream", chunk_size=64 << 10)
                    seen["OK"] += 1
                except InferenceRpcError as e:
                    seen[(e.code, e.details)] += 1

            for _ in range(20):
                list(pool.map(one, range(16)))

    await asyncio.to_thread(run)
    assert seen == {(grpc.StatusCode.INVALID_ARGUMENT, REJECTION): 320}, seen.most_common(3)


async def test_an_abandoned_async_generation_cancels_its_call(fake):
    target, servicer = fake
    before = servicer.cancelled
    async with AsyncInferenceClient(target) as client:
        gen = client.generate("go", sampling=Sampling(max_tokens=4000, ignore_eos=True))
        async for event in gen:
            if isinstance(event, Delta):
                break
        assert servicer.running == 1
        del gen, event  # break, then drop it
        gc.collect()
        assert await _until(lambda: servicer.cancelled == before + 1 and servicer.running == 0)

        never_iterated = client.generate("go")
        await asyncio.sleep(0.1)
        del never_iterated
        assert await _until(lambda: servicer.cancelled == before + 2 and servicer.running == 0)

        closed = client.generate("go")
        assert isinstance(await anext(closed), Started)
        await closed.aclose()
        await closed.aclose()  # idempotent
        assert await _until(lambda: servicer.cancelled == before + 3)
        assert [e async for e in closed] == []


async def test_an_abandoned_sync_generation_cancels_its_call(fake):
    target, servicer = fake
    before = servicer.cancelled

    def run() -> None:
        with InferenceClient(target) as client:
            gen = client.generate("go", sampling=Sampling(max_tokens=4000, ignore_eos=True))
            for event in gen:
                if isinstance(event, Delta):
                    break
            del gen, event
            gc.collect()
            closed = client.generate("go")
            next(closed)
            closed.close()
            closed.close()

    await asyncio.to_thread(run)
    assert await _until(lambda: servicer.cancelled == before + 2 and servicer.running == 0)
