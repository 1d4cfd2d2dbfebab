"""Undecodable request bytes get INVALID_ARGUMENT naming the message type, on every RPC of
every service, with no traceback logged (issue 10, kind 1)."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import inference_pb2_grpc as pb_grpc
from nanovl.v1 import profiling_pb2, profiling_pb2_grpc
from profiling.telemetry.tracing import server_interceptors
from service.malformed import rejecting_malformed
from tests.fuzz import wire

INVALID = grpc.StatusCode.INVALID_ARGUMENT

# Every RPC on the server: (path, request streaming?, response streaming?, message type).
RPCS = [
    ("/nanovl.v1.Inference/Generate", False, True, "nanovl.v1.GenerateRequest"),
    ("/nanovl.v1.Inference/StreamGenerate", True, True, "nanovl.v1.GenerateChunk"),
    ("/nanovl.v1.Inference/GetModelInfo", False, False, "nanovl.v1.GetModelInfoRequest"),
    *(
        (f"/nanovl.v1.Profiling/{m.name}", m.client_streaming, m.server_streaming, m.input_type.full_name)
        for m in profiling_pb2.DESCRIPTOR.services_by_name["Profiling"].methods
    ),
    ("/grpc.health.v1.Health/Check", False, False, "grpc.health.v1.HealthCheckRequest"),
    ("/grpc.health.v1.Health/Watch", False, True, "grpc.health.v1.HealthCheckRequest"),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        True,
        True,
        "grpc.reflection.v1alpha.ServerReflectionRequest",
    ),
]

GARBAGE = {
    **wire.UNDECODABLE,
    "invalid utf-8 text": wire.invalid_utf8_text_part(),
    "struct nested 50 deep": wire.generate_request_with_kwargs(wire.nested_struct(50)),
    "truncated request": wire.truncated(
        pb.GenerateRequest(parts=[pb.ContentPart(text="hello")]).SerializeToString(), 4
    ),
}


async def call_raw(
    channel: grpc.aio.Channel,
    path: str,
    stream_request: bool,
    stream_response: bool,
    payloads: list[bytes],
    timeout: float = 20,
    first_response: bool = False,
) -> grpc.aio.AioRpcError | None:
    """Send ``payloads`` as the request message(s), bytes as they are; the error, if any.

    ``first_response``: a streamed response's first message is success (the call is then
    cancelled), so a stream the server keeps open needs no deadline to end it."""
    ident = lambda b: b  # noqa: E731
    kw = {"request_serializer": ident, "response_deserializer": ident}
    try:
        if stream_request:
            method = (channel.stream_stream if stream_response else channel.stream_unary)(path, **kw)

            async def gen():
                for p in payloads:
                    yield p
                await asyncio.sleep(timeout)  # keep the stream open: the server must answer

            call = method(gen(), timeout=timeout)
        else:
            method = (channel.unary_stream if stream_response else channel.unary_unary)(path, **kw)
            call = method(payloads[0], timeout=timeout)
        if stream_response:
            async for _ in call:
                if first_response:
                    call.cancel()
                    return None
        else:
            await call
    except grpc.aio.AioRpcError as err:
        return err
    return None


class _Inference(pb_grpc.InferenceServicer):
    async def Generate(self, request, context):
        yield pb.GenerateResponse(started=pb.Started(request_id="ok"))

    async def StreamGenerate(self, request_iterator, context):
        async for chunk in request_iterator:
            if chunk.HasField("end"):
                break
        yield pb.GenerateResponse(started=pb.Started(request_id="ok"))

    async def GetModelInfo(self, request, context):
        return pb.ModelInfo(model_name="fake")


class _Profiling(profiling_pb2_grpc.ProfilingServicer):
    pass  # every method answers UNIMPLEMENTED: reached only by valid requests


@pytest.fixture(params=["plain", "traced"])
async def fake_server(request):
    """Every service the real server has, behind the real interceptors (with tracing, as
    ``--otel-endpoint`` gives, or without); no engine."""
    provider = None
    if request.param == "traced":
        from opentelemetry.sdk.trace import TracerProvider

        provider = TracerProvider()
    server = grpc.aio.server(interceptors=rejecting_malformed(server_interceptors(provider)))
    pb_grpc.add_InferenceServicer_to_server(_Inference(), server)
    profiling_pb2_grpc.add_ProfilingServicer_to_server(_Profiling(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    reflection.enable_server_reflection(["nanovl.v1.Inference", health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.mark.parametrize("rpc", RPCS, ids=[r[0].rsplit("/", 1)[-1] for r in RPCS])
async def test_every_rpc_rejects_undecodable_bytes(fake_server, rpc, caplog):
    path, stream_request, stream_response, message_type = rpc
    caplog.set_level(logging.DEBUG)
    async with grpc.aio.insecure_channel(fake_server) as channel:
        for name, payload in [
            ("lone tag", b"\x0a"),
            ("bad wire type", b"\x0f\x00"),
            ("overlong varint", wire.UNDECODABLE["overlong varint"]),
        ]:
            err = await call_raw(channel, path, stream_request, stream_response, [payload])
            assert err is not None and err.code() == INVALID, (name, err)
            assert f"not a valid {message_type}" in err.details(), err.details()
    assert not [r for r in caplog.records if r.exc_info], "a client's mistake logged a traceback"


@pytest.mark.parametrize("name", list(GARBAGE))
async def test_generate_garbage(fake_server, name, caplog):
    caplog.set_level(logging.DEBUG)
    async with grpc.aio.insecure_channel(fake_server) as channel:
        err = await call_raw(channel, "/nanovl.v1.Inference/Generate", False, True, [GARBAGE[name]])
    assert err is not None and err.code() == INVALID, err
    assert "not a valid nanovl.v1.GenerateRequest" in err.details()
    assert not [r for r in caplog.records if r.exc_info]


async def test_stream_generate_garbage_after_a_valid_header(fake_server):
    header = pb.GenerateChunk(header=pb.StreamGenerateHeader(parts=[pb.DeclaredPart(part=pb.ContentPart(text="x"))]))
    async with grpc.aio.insecure_channel(fake_server) as channel:
        for payload in (b"\x0a", wire.field_len(1, b"\x0f\x00"), wire.field_len(2, wire.field_len(2, b"\x0a")[:-1])):
            err = await call_raw(
                channel, "/nanovl.v1.Inference/StreamGenerate", True, True, [header.SerializeToString(), payload]
            )
            assert err is not None and err.code() == INVALID, err
            assert "not a valid nanovl.v1.GenerateChunk" in err.details()


async def test_valid_requests_still_work(fake_server):
    async with grpc.aio.insecure_channel(fake_server) as channel:
        info = await pb_grpc.InferenceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert info.model_name == "fake"
        responses = [r async for r in pb_grpc.InferenceStub(channel).Generate(pb.GenerateRequest(), timeout=10)]
        assert responses[0].started.request_id == "ok"

        async def chunks():
            yield pb.GenerateChunk(header=pb.StreamGenerateHeader())
            yield pb.GenerateChunk(end=pb.End())

        responses = [r async for r in pb_grpc.InferenceStub(channel).StreamGenerate(chunks(), timeout=10)]
        assert responses[0].started.request_id == "ok"
        check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING


# An unknown field (number 1000, varint 1): 3 bytes a protobuf parser keeps and walks.
UNKNOWN = b"\xc0\x3e\x01"
SMALL_RPCS = [r for r in RPCS if r[0].rsplit("/", 1)[-1] not in ("Generate", "StreamGenerate")]


@pytest.mark.parametrize("rpc", SMALL_RPCS, ids=[r[0].rsplit("/", 1)[-1] for r in SMALL_RPCS])
async def test_small_rpcs_refuse_large_requests_before_parsing(fake_server, rpc):
    """verify-10d F3: 60 MB of unknown fields in a health check, GetModelInfo or Profiling
    request was parsed by upb on the event loop. A method with no wire walk of its own is
    held to a few KiB (health) or SMALL_REQUEST_BYTES: RESOURCE_EXHAUSTED naming the limit,
    as gRPC answers a message over its receive limit; just under it, the request is parsed."""
    from service.malformed import HEALTH_METHODS, HEALTH_REQUEST_BYTES, SMALL_REQUEST_BYTES

    path, stream_request, stream_response, _ = rpc
    limit = HEALTH_REQUEST_BYTES if path in HEALTH_METHODS else SMALL_REQUEST_BYTES
    async with grpc.aio.insecure_channel(fake_server) as channel:
        over = UNKNOWN * (limit // len(UNKNOWN) + 1)
        err = await call_raw(channel, path, stream_request, stream_response, [over], timeout=10)
        assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        assert f"limit of {limit} bytes" in err.details() and path in err.details(), err.details()
        under = UNKNOWN * (limit // len(UNKNOWN))
        # Not a short deadline to end open streams: the grpc client cancels the call locally
        # (CancelledError, no status) when a deadline expires mid-write on a loaded machine.
        err = await call_raw(channel, path, stream_request, stream_response, [under], timeout=20, first_response=True)
        assert err is None or err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED, err


async def test_the_real_server_rejects_garbage_and_keeps_serving(grpc_target, caplog):
    """End to end on the real server (interceptors as ``build_server`` assembles them)."""
    caplog.set_level(logging.INFO)
    header = pb.GenerateChunk(header=pb.StreamGenerateHeader(parts=[pb.DeclaredPart(part=pb.ContentPart(text="x"))]))
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        for name, payload in GARBAGE.items():
            err = await call_raw(channel, "/nanovl.v1.Inference/Generate", False, True, [payload])
            assert err is not None and err.code() == INVALID, (name, err)
            assert "not a valid nanovl.v1.GenerateRequest" in err.details(), (name, err.details())
            for first in ([], [header.SerializeToString()]):
                err = await call_raw(channel, "/nanovl.v1.Inference/StreamGenerate", True, True, [*first, payload])
                if name == "field number 0" or name.startswith(("invalid utf-8", "struct nested", "truncated")):
                    # Bytes of another message type: may decode as a GenerateChunk.
                    assert err is not None and err.code() == INVALID, (name, err)
                    continue
                assert err is not None and err.code() == INVALID, (name, err)
                assert "not a valid nanovl.v1.GenerateChunk" in err.details(), (name, err.details())
        request = pb.GenerateRequest(
            parts=[pb.ContentPart(text="still here")], sampling=pb.SamplingOptions(max_tokens=2, temperature=0.0)
        )
        responses = [r async for r in pb_grpc.InferenceStub(channel).Generate(request, timeout=60)]
        assert responses[-1].HasField("final")
    assert not [r for r in caplog.records if r.exc_info], "a client's mistake logged a traceback"


# Every RPC any nanovl port may serve, reflection v1 and Health/List included.
ALL_RPCS = [
    *RPCS,
    ("/grpc.health.v1.Health/List", False, False, "grpc.health.v1.HealthListRequest"),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        True,
        True,
        "grpc.reflection.v1.ServerReflectionRequest",
    ),
]


async def test_every_port_of_the_real_server_rejects_undecodable_bytes(server, caplog):
    """Every gRPC server ``build_server`` starts (inference, admin, the plaintext health-only
    port, and any added later: ``NanovlServer.listening``) answers undecodable bytes on every
    RPC it serves with INVALID_ARGUMENT naming the message type (UNIMPLEMENTED where it does
    not serve the RPC), never UNKNOWN/INTERNAL, and logs no traceback (issue 10, R1)."""
    caplog.set_level(logging.INFO)
    ports = server.listening()
    assert {"inference", "admin", "health"} <= set(ports), ports
    for role, (_, target) in ports.items():
        served = 0
        async with grpc.aio.insecure_channel(target) as channel:
            for path, stream_request, stream_response, message_type in ALL_RPCS:
                err = await call_raw(channel, path, stream_request, stream_response, [b"\x0a"], timeout=10)
                assert err is not None, (role, path)
                assert err.code() in (INVALID, grpc.StatusCode.UNIMPLEMENTED), (role, path, err)
                if err.code() == INVALID:
                    served += 1
                    assert f"not a valid {message_type}" in err.details(), (role, path, err.details())
        assert served >= 3, f"{role}: health Check, Watch and List at least"  # every port serves health
    assert not [r for r in caplog.records if r.exc_info], "a client's mistake logged a traceback"


def test_every_grpc_server_is_built_through_one_factory():
    """``service.server._grpc_server`` installs the malformed-request interceptor; a server
    made anywhere else would lack it. No other code in the package calls grpc's server
    constructors."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    offenders = []
    for package in ("nanovl", "service", "profiling", "model"):
        for path in (root / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "server":
                    owner = ast.unparse(node.func.value)
                    if owner in ("grpc", "grpc.aio", "aio"):
                        offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == ["service/server.py:" + str(_factory_line(root))], offenders


def _factory_line(root) -> int:
    import ast

    tree = ast.parse((root / "service" / "server.py").read_text())
    factory = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_grpc_server")
    call = next(
        n
        for n in ast.walk(factory)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "server"
    )
    return call.lineno


async def test_the_real_server_bounds_every_request_before_parsing(server):
    """verify-10d F3 end to end, on every port ``build_server`` opens: a health check over a
    few KiB is refused (by gRPC's receive limit on the plaintext health-only port, by the
    interceptor's size limit elsewhere), GetModelInfo over SMALL_REQUEST_BYTES too, and
    unknown fields or a group inside a content part by the wire walk: none is parsed."""
    from service.malformed import HEALTH_REQUEST_BYTES, SMALL_REQUEST_BYTES

    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    check = ("/grpc.health.v1.Health/Check", False, False)
    for role, (_, target) in server.listening().items():
        async with grpc.aio.insecure_channel(target) as channel:
            big_check = UNKNOWN * (HEALTH_REQUEST_BYTES // len(UNKNOWN) + 1)
            err = await call_raw(channel, *check, [big_check], timeout=10)
            assert err is not None and err.code() == exhausted, (role, err)
            assert str(HEALTH_REQUEST_BYTES) in err.details(), (role, err.details())
            assert await call_raw(channel, *check, [b""], timeout=10) is None, role
            # A method the port does not serve, its stream left open (a reflection client
            # waiting): UNIMPLEMENTED naming what the port serves (verify-10e D3).
            path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo" if role == "health" else "/no.Such/M"
            err = await call_raw(channel, path, True, True, [b"\x0a\x00"], timeout=10)
            assert err is not None and err.code() == grpc.StatusCode.UNIMPLEMENTED, (role, err)
            assert "is not served on this port; it serves" in err.details(), (role, err)
            assert "grpc.health.v1.Health" in err.details(), (role, err)
            assert ("reflection is on --port" in err.details()) == (role == "health"), (role, err.details())
    async with grpc.aio.insecure_channel(server.listening()["inference"][1]) as channel:
        big_info = UNKNOWN * (SMALL_REQUEST_BYTES // len(UNKNOWN) + 1)
        err = await call_raw(channel, "/nanovl.v1.Inference/GetModelInfo", False, False, [big_info], timeout=10)
        assert err is not None and err.code() == exhausted and str(SMALL_REQUEST_BYTES) in err.details(), err
        for inside in (b"\xc3\x3e\xc4\x3e" + UNKNOWN * 1000, UNKNOWN * 200_000):
            part = wire.field_len(2, wire.field_len(1, b"hi") + inside)
            err = await call_raw(channel, "/nanovl.v1.Inference/Generate", False, True, [part], timeout=10)
            assert err is not None and err.code() == INVALID, err
            assert "group" in err.details() or "unknown or repeated singular fields" in err.details(), err.details()
