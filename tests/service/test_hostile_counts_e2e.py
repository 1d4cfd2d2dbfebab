"""End to end on the session server (issue 10, N1/N3/N4): hostile element counts get their
precise status while health checks and another user's stream keep being answered; a huge
echoed value still reaches the client as the server's status; PlanBudget extremes never
answer INTERNAL."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import inference_pb2_grpc as pb_grpc
from nanovl.v1 import profiling_pb2, profiling_pb2_grpc

pytestmark = pytest.mark.engine
EXHAUSTED, INVALID = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _hostile(rng: random.Random) -> tuple[bytes, grpc.StatusCode]:
    """A GenerateRequest (wire bytes, under the test server's 4 MiB message limit) with far
    more elements in one repeated field than the server allows, and the status it must get."""
    n = rng.randrange(100_000, 1_000_000)
    kind = rng.choice(["parts", "messages", "stop", "bad_words", "allowed", "tools"])
    if kind == "parts":
        return b"\x12\x00" * n, EXHAUSTED  # n empty content parts
    if kind == "messages":
        one = pb.GenerateRequest(messages=[pb.Message(role="user", parts=[pb.ContentPart(text="hi")])])
        return one.SerializeToString() * (n // 10), EXHAUSTED
    head = pb.GenerateRequest(parts=[pb.ContentPart(text="hi")]).SerializeToString()
    if kind == "tools":
        return head + pb.GenerateRequest(tools=[pb.Tool(name="f")]).SerializeToString() * (n // 10), EXHAUSTED
    field = {"stop": 7, "bad_words": 21, "allowed": 20}[kind]
    if kind == "allowed":
        # More ids than any vocabulary here holds (varint 1, unpacked).
        sampling = (_varint(field << 3) + b"\x01") * max(n, 300_000)
        status = INVALID
    else:
        sampling = (_varint(field << 3 | 2) + b"\x00") * (n // 2)  # empty strings
        status = EXHAUSTED
    length = _varint(len(sampling))
    return head + b"\x2a" + bytes(length) + sampling, status


async def test_hostile_counts_get_precise_statuses_while_others_are_served(grpc_target, server):
    rng = random.Random(10)
    ident = lambda b: b  # noqa: E731
    health_target = server.listening()["health"][1]
    async with grpc.aio.insecure_channel(grpc_target) as ch, grpc.aio.insecure_channel(health_target) as hch:
        generate = ch.unary_stream(
            "/nanovl.v1.Inference/Generate", request_serializer=ident, response_deserializer=ident
        )
        stub, health = pb_grpc.InferenceStub(ch), health_pb2_grpc.HealthStub(hch)
        order: list[str] = []

        async def hostile(i: int, data: bytes, want: grpc.StatusCode) -> None:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in generate(data, timeout=120):
                    pass
            assert err.value.code() == want, (i, err.value.code(), err.value.details()[:200])
            order.append("hostile")

        async def probe() -> None:
            for _ in range(10):
                r = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
                assert r.status == health_pb2.HealthCheckResponse.SERVING
                order.append("health")
                await asyncio.sleep(0)

        async def other_user() -> None:
            req = pb.GenerateRequest(
                parts=[pb.ContentPart(text="hello")],
                sampling=pb.SamplingOptions(max_tokens=8, temperature=0.0, ignore_eos=True),
            )
            out = [r async for r in stub.Generate(req, timeout=120)]
            assert out[-1].final.usage.completion_tokens == 8
            order.append("stream")

        cases = [_hostile(rng) for _ in range(8)]
        await asyncio.gather(*(hostile(i, d, s) for i, (d, s) in enumerate(cases)), probe(), other_user())
        assert order.count("health") == 10 and "stream" in order

        # Within the limits but large (4000 messages of 2 parts each): validated off the
        # event loop, so a health check sent after them is answered before the last is done.
        big = pb.GenerateRequest(
            messages=[pb.Message(role="user", parts=[pb.ContentPart(text="w " * 20)] * 2)] * 4000,
            sampling=pb.SamplingOptions(max_tokens=1),
        ).SerializeToString()
        order.clear()

        async def big_one() -> None:
            try:
                async for _ in generate(big, timeout=300):
                    pass
            except grpc.aio.AioRpcError as e:
                assert e.code() in (grpc.StatusCode.OUT_OF_RANGE, EXHAUSTED), e
            order.append("big")

        async def late_probe() -> None:
            await asyncio.sleep(0)
            await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=60)
            order.append("health")

        await asyncio.gather(*(big_one() for _ in range(4)), late_probe())
        assert order.index("health") < len(order) - 1, order


async def test_a_huge_echoed_value_still_reaches_the_client(grpc_target):
    """N4: a 100000-emoji role: the server's INVALID_ARGUMENT, not a transport RESOURCE_EXHAUSTED."""
    async with grpc.aio.insecure_channel(grpc_target) as ch:
        for n in (1000, 100_000):
            req = pb.GenerateRequest(messages=[pb.Message(role="\U0001f600" * n, parts=[pb.ContentPart(text="hi")])])
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in pb_grpc.InferenceStub(ch).Generate(req, timeout=60):
                    pass
            assert err.value.code() == INVALID and "messages[0].role is" in err.value.details()
            assert f"({n} characters)" in err.value.details()


async def test_large_string_lists_and_an_empty_choice_are_refused(grpc_target):
    """verify-10b D8: 256 stop strings or bad words of 200 KB each were accepted (here 16, under
    the test server's 4 MiB message limit); an empty choice made vLLM's xgrammar checker log
    "Validation should have already occurred" before vLLM refused it."""
    async with grpc.aio.insecure_channel(grpc_target) as ch:
        stub = pb_grpc.InferenceStub(ch)
        for field in ("stop", "bad_words"):
            sampling = pb.SamplingOptions(max_tokens=1, **{field: ["x" * 200_000] * 16})
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.Generate(pb.GenerateRequest(parts=[pb.ContentPart(text="hi")], sampling=sampling)):
                    pass
            assert err.value.code() == EXHAUSTED, err.value
            assert f"sampling.{field}" in err.value.details() and "--max-list-string-bytes" in err.value.details()
        sampling = pb.SamplingOptions(max_tokens=1)
        sampling.structured_output.choice.SetInParent()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Generate(pb.GenerateRequest(parts=[pb.ContentPart(text="hi")], sampling=sampling)):
                pass
        assert err.value.code() == INVALID and "choice must hold at least one string" in err.value.details()


async def test_plan_budget_extremes_are_refused_precisely(admin_target):
    U32 = 2**32 - 1
    cases = [
        profiling_pb2.PlanBudgetRequest(
            items=[profiling_pb2.MediaItems(count=U32, image=profiling_pb2.ImageItem(width=U32, height=U32))]
        ),
        profiling_pb2.PlanBudgetRequest(
            items=[
                profiling_pb2.MediaItems(count=1, video=profiling_pb2.VideoItem(num_frames=U32, width=64, height=64))
            ]
        ),
        *(
            profiling_pb2.PlanBudgetRequest(
                items=[profiling_pb2.MediaItems(count=1, audio=profiling_pb2.AudioItem(seconds=s))]
            )
            for s in (float("nan"), float("inf"), 1e308)
        ),
        profiling_pb2.PlanBudgetRequest(model_path="/tmp/\x00x"),
        profiling_pb2.PlanBudgetRequest(max_model_len=U32),
    ]
    async with grpc.aio.insecure_channel(admin_target) as ch:
        stub = profiling_pb2_grpc.ProfilingStub(ch)
        for req in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.PlanBudget(req, timeout=60)
            assert err.value.code() in (INVALID, grpc.StatusCode.OUT_OF_RANGE), (req, err.value)
