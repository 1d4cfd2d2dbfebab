"""One trace per request, end to end: real server, real engine, real OTLP export."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import grpc
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from nanovl.client import AsyncInferenceClient, Part, Sampling
from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import inference_pb2_grpc as pb_grpc
from profiling.telemetry import tracing
from profiling.telemetry.metrics import MetricsSettings, setup_metrics
from service.server import build_server
from tests import media_fixtures as mf
from tests.conftest import server_settings

SHORT = Sampling(max_tokens=4, temperature=0.0, ignore_eos=True)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="module")
async def traced(engine, otlp_receiver):
    """A second server on the session engine, tracing into memory AND over OTLP/gRPC."""
    memory = InMemorySpanExporter()
    settings = tracing.TracingSettings.from_env(
        exporter="otlp", endpoint=otlp_receiver.endpoint, protocol="grpc", service_name="nanovl-test"
    )
    provider = tracing.setup_tracing(settings, extra_processors=[SimpleSpanProcessor(memory)])
    registry = CollectorRegistry()
    with socket.socket() as sock:  # a free port for /metrics
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    metrics = setup_metrics(
        MetricsSettings.from_env(prometheus_port=port, prometheus_host="127.0.0.1"), registry=registry
    )
    srv = await build_server(engine, server_settings(), tracer_provider=provider, metrics=metrics)
    await srv.mark_serving()
    yield srv, memory, metrics
    await srv.stop()
    metrics.shutdown()
    tracing.shutdown_tracing(provider)


def _by_name(spans):
    out = {}
    for s in spans:
        out.setdefault(s.name, []).append(s)
    return out


async def test_span_tree_of_a_mixed_stream_generate(traced):
    srv, memory, _ = traced
    memory.clear()
    async with AsyncInferenceClient(srv.target) as client:
        result = await client.generate_text(
            [Part.image(mf.make_png(96, 64)), Part.audio(mf.make_wav(1.0, 22050)), Part.text("?")],
            sampling=SHORT,
            upload="stream",
            chunk_size=2048,
        )
    spans = _by_name(memory.get_finished_spans())
    (server_span,) = spans["/nanovl.v1.Inference/StreamGenerate"]
    trace_id = server_span.context.trace_id
    for name in ("receive", "prompt.assemble", "engine.generate"):
        (span,) = spans[name]
        assert span.context.trace_id == trace_id
        assert span.parent.span_id == server_span.context.span_id, name
    # Each part is decoded while the rest is still arriving: decoding nests in receive.
    for name in ("decode.image", "decode.audio"):
        assert spans[name][0].parent.span_id == spans["receive"][0].context.span_id, name
    assert spans["receive"][0].attributes["receive.chunks"] > 2
    assert spans["decode.image"][0].attributes["media.width"] == 96
    assert spans["decode.audio"][0].attributes["media.resampled"] is True
    assemble = spans["prompt.assemble"][0].attributes
    assert assemble["prompt.tokens"] == result.usage.prompt_tokens
    assert assemble["prompt.tokens.audio"] == result.usage.prompt_tokens_by_modality.audio
    generate = spans["engine.generate"][0]
    assert {"queued", "first_token", "finished"} <= {e.name for e in generate.events}
    for child in ("engine.queue", "engine.prefill", "engine.decode"):
        assert spans[child][0].parent.span_id == generate.context.span_id


async def test_error_request_has_error_status(traced):
    srv, memory, _ = traced
    memory.clear()
    async with grpc.aio.insecure_channel(srv.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in pb_grpc.InferenceStub(channel).Generate(
                pb.GenerateRequest(parts=[pb.ContentPart(image=pb.Image(data=b"not an image"))])
            ):
                pass
    spans = _by_name(memory.get_finished_spans())
    (decode,) = spans["decode.image"]
    assert not decode.status.is_ok
    assert any(e.name == "exception" for e in decode.events)
    assert decode.attributes["nanovl.error.grpc_code"] == "INVALID_ARGUMENT"
    # The server span carries the status code; by OpenTelemetry's gRPC conventions a
    # client error (INVALID_ARGUMENT) does not make a server span an error.
    server_span = spans["/nanovl.v1.Inference/Generate"][0]
    assert server_span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    # The status and message once; no "Locally aborted." AbortError tracebacks.
    assert server_span.attributes[tracing.ATTR_ERROR_CODE] == "INVALID_ARGUMENT"
    assert "image" in server_span.attributes[tracing.ATTR_ERROR_MESSAGE]
    assert not [e for e in server_span.events if e.name == "exception"]


async def test_known_traceparent_becomes_the_parent(traced, otlp_receiver):
    srv, memory, _ = traced
    parent_span = "00f067aa0ba902b7"
    async with AsyncInferenceClient(srv.target, metadata=[("traceparent", f"00-{TRACE_ID}-{parent_span}-01")]) as c:
        await c.generate_text("hello", sampling=SHORT)
    ours = [s for s in memory.get_finished_spans() if format(s.context.trace_id, "032x") == TRACE_ID]
    server_span = next(s for s in ours if s.name.endswith("/Generate"))
    assert format(server_span.parent.span_id, "016x") == parent_span
    # Over the wire: the collector gets nanovl's spans AND vLLM's llm_request, one trace.
    for _ in range(200):
        received = [s for s in otlp_receiver.spans if s.trace_id == TRACE_ID]
        names = {s.name for s in received}
        if {"engine.generate", "llm_request"} <= names:
            break
        await asyncio.sleep(0.1)
    assert {"engine.generate", "prompt.assemble", "llm_request"} <= names, names
    generate = next(s for s in received if s.name == "engine.generate")
    llm_request = next(s for s in received if s.name == "llm_request")
    assert llm_request.parent_span_id == generate.span_id
    assert generate.service_name == "nanovl-test"


async def test_prometheus_endpoint_counts_known_requests(traced):
    srv, _, metrics = traced
    async with AsyncInferenceClient(srv.target) as client:
        for _ in range(3):
            await client.generate_text([Part.image(mf.make_png(32, 32)), Part.text("x")], sampling=SHORT)
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics.prometheus_port}/metrics").read().decode()
    )
    lines = [ln for ln in body.splitlines() if ln.startswith("nanovl_requests_total{")]
    image_ok = [ln for ln in lines if 'modality="image"' in ln and 'grpc_status="OK"' in ln and "Generate" in ln]
    assert image_ok and float(image_ok[0].split()[-1]) >= 3.0, lines
    assert "nanovl_time_to_first_token_seconds_count" in body
    assert 'nanovl_media_received_bytes_total{modality="image"' in body
