"""A failed RPC's server span: its status and message once, no AbortError tracebacks.

No engine: a bare grpc.aio server with nanovl's interceptors and a handler that fails
through the service's one exception → status path."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nanovl.errors import InvalidArgument
from profiling.telemetry import tracing
from service.status import abort_with


class _Failing(health_pb2_grpc.HealthServicer):
    """Check fails as a client error, Watch (streaming) as a bug."""

    async def Check(self, request, context):  # noqa: N802
        await abort_with(context, InvalidArgument(f"image: cannot identify {request.service}"))

    async def Watch(self, request, context):  # noqa: N802
        try:
            raise ValueError("a bug")
        except ValueError as exc:
            await abort_with(context, exc)
        yield health_pb2.HealthCheckResponse()  # pragma: no cover


@pytest.fixture
async def traced_server():
    memory = InMemorySpanExporter()
    settings = tracing.TracingSettings.from_env(exporter="none")
    provider = tracing.setup_tracing(settings, extra_processors=[SimpleSpanProcessor(memory)])
    # trace_health_checks: the stand-in service is grpc.health.v1.Health.
    server = grpc.aio.server(interceptors=tracing.server_interceptors(provider, trace_health_checks=True))
    health_pb2_grpc.add_HealthServicer_to_server(_Failing(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", memory
    await server.stop(0)
    provider.shutdown()


async def test_client_error_span_has_status_and_message_once(traced_server):
    target, memory = traced_server
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="x.png"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (span,) = memory.get_finished_spans()
    assert span.name == "/grpc.health.v1.Health/Check"
    assert not span.events  # no "Locally aborted." tracebacks
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert span.attributes[tracing.ATTR_ERROR_CODE] == "INVALID_ARGUMENT"
    assert span.attributes[tracing.ATTR_ERROR_MESSAGE] == "image: cannot identify x.png"


async def test_a_bug_keeps_its_own_traceback_once(traced_server):
    target, memory = traced_server
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest()):
                pass
    assert err.value.code() == grpc.StatusCode.INTERNAL
    (span,) = memory.get_finished_spans()
    (event,) = span.events
    assert event.name == "exception" and event.attributes["exception.type"] == "ValueError"
    assert "AbortError" not in event.attributes["exception.stacktrace"]
    assert not span.status.is_ok and "a bug" in span.status.description
    assert span.attributes[tracing.ATTR_ERROR_CODE] == "INTERNAL"
