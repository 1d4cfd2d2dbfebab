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
