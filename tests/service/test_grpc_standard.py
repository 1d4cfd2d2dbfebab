"""Standard gRPC services as tools see them: reflection v1 and v1alpha, health List.

No engine: a bare grpc.aio server carrying only the standard services."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from service.grpc_standard import REFLECTION_V1, REFLECTION_V1ALPHA, HealthServicer, enable_reflection

HEALTH = "grpc.health.v1.Health"


@pytest.fixture
async def standard_server():
    server = grpc.aio.server()
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    enable_reflection([HEALTH], server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("nanovl.v1.Inference", health_pb2.HealthCheckResponse.NOT_SERVING)
    yield f"127.0.0.1:{port}", health
    await server.stop(0)


def _v1_reflection(
    target: str, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    """A client that speaks only grpc.reflection.v1: the v1 method path, with messages
    that are wire-identical to v1alpha's."""
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(
            f"/{REFLECTION_V1}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return next(iter(call(iter([request]), timeout=10)))


async def test_reflection_v1_lists_and_describes_services(standard_server):
    target, _ = standard_server
    listed = await asyncio.to_thread(_v1_reflection, target, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    assert {HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA} <= names

    # v1 itself can be described (a client resolving the service it is talking to).
    found = await asyncio.to_thread(
        _v1_reflection, target, reflection_pb2.ServerReflectionRequest(file_containing_symbol=REFLECTION_V1)
    )
    assert found.WhichOneof("message_response") == "file_descriptor_response"
    (raw,) = found.file_descriptor_response.file_descriptor_proto
    file = descriptor_pb2.FileDescriptorProto.FromString(raw)
    assert file.name == "grpc/reflection/v1/reflection.proto" and file.package == "grpc.reflection.v1"
    (method,) = file.service[0].method
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    refs = [f.type_name for m in file.message_type for f in m.field if f.type_name]
    assert refs and all(r.startswith(".grpc.reflection.v1.") for r in refs)


async def test_reflection_v1alpha_still_served(standard_server):
    target, _ = standard_server

    def reflect() -> list[str]:
        with grpc.insecure_channel(target) as channel:
            return list(ProtoReflectionDescriptorDatabase(channel).get_services())

    assert {HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA} <= set(await asyncio.to_thread(reflect))


async def test_health_list_answers_every_service_without_a_traceback(standard_server, caplog):
    target, health = standard_server
    caplog.set_level(logging.DEBUG)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        listed = await stub.List(health_pb2.HealthListRequest(), timeout=10)
        assert listed.statuses[""].status == health_pb2.HealthCheckResponse.SERVING
        assert listed.statuses["nanovl.v1.Inference"].status == health_pb2.HealthCheckResponse.NOT_SERVING
        await health.set("nanovl.v1.Inference", health_pb2.HealthCheckResponse.SERVING)
        listed = await stub.List(health_pb2.HealthListRequest(), timeout=10)
        assert listed.statuses["nanovl.v1.Inference"].status == health_pb2.HealthCheckResponse.SERVING
        # Check agrees with List.
        checked = await stub.Check(health_pb2.HealthCheckRequest(service="nanovl.v1.Inference"), timeout=10)
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def _raw_stream(
    channel: grpc.aio.Channel, method: str, messages: list[bytes], hold_s: float = 0.0, pause_s: float = 0.0
):
    """A raw grpc.aio streaming call whose request iterator writes ``messages``, ``pause_s``
    apart (then stays open ``hold_s``, as a reflection client waiting for its answer): the
    status."""

    async def requests():
        for i, message in enumerate(messages):
            if i:
                await asyncio.sleep(pause_s)
            yield message
        await asyncio.sleep(hold_s)

    call = channel.stream_stream(method)(requests(), timeout=20)
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details()
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("hold_s", [0.0, 0.2])
async def test_a_method_nobody_serves_is_unimplemented_for_a_client_still_writing(hold_s):
    """verify-10e D3(a): gRPC's own answer to an unknown method arrives while grpc.aio's
    client is still writing, and 4-19 in 100 such callers saw INTERNAL "Internal error from
    Core". With ``serve_unimplemented`` every one sees UNIMPLEMENTED naming the port's
    services, whether it half-closes at once or keeps the stream open; known methods are
    unaffected."""
    from service.grpc_standard import serve_unimplemented

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    enable_reflection([HEALTH], server)
    serve_unimplemented(server, [HEALTH, "reflection"])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            seen = await asyncio.gather(
                *(
                    _raw_stream(channel, method, [b"\x0a\x03abc" * 100] * 3, hold_s)
                    for method in ("/no.Such/Method", "/grpc.reflection.v2.ServerReflection/ServerReflectionInfo")
                    for _ in range(50)
                )
            )
            codes = {code for code, _ in seen}
            assert codes == {grpc.StatusCode.UNIMPLEMENTED}, [s for s in seen if s[0] != grpc.StatusCode.UNIMPLEMENTED]
            assert all("is not served on this port; it serves grpc.health.v1.Health" in d for _, d in seen), seen[0]
            # The mechanism, deterministically: the status waits for a write still to come
            # (gRPC's own answer came before it, however rarely the race shows).
            loop = asyncio.get_running_loop()
            start = loop.time()
            code, _ = await _raw_stream(channel, "/no.Such/Method", [b"x", b"y"], hold_s, pause_s=0.5)
            assert code == grpc.StatusCode.UNIMPLEMENTED and loop.time() - start >= 0.5
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            assert (await check(health_pb2.HealthCheckRequest(), timeout=10)).status == 1
    finally:
        await server.stop(0)
