"""Tracing setup, stage spans, gRPC propagation, OTLP export and trace ids in logs.

No engine: vLLM's side is checked through its source (field names) and the W3C format
its ``extract_trace_context`` parses.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import importlib.util
import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from nanovl.errors import InvalidArgument, MediaDecodeError
from profiling.telemetry import tracing
from profiling.telemetry.logs import LoggingSettings, setup_logging
from profiling.telemetry.tracing import (
    ENGINE_DECODE,
    ENGINE_GENERATE,
    ENGINE_PREFILL,
    ENGINE_QUEUE,
    PROMPT_ASSEMBLE,
    RECEIVE,
    TracingSettings,
    client_interceptors,
    decode_span_name,
    get_tracer,
    server_interceptors,
    setup_tracing,
    shutdown_tracing,
    trace_headers_for_vllm,
)
from tests.otlp_receiver import OtlpReceiver

KNOWN_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
KNOWN_PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture(autouse=True)
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # vLLM writes OTEL_EXPORTER_OTLP_TRACES_ENDPOINT into os.environ when an engine traces,
    # and a developer's shell may set others: every test starts from a clean slate.
    for key in list(os.environ):
        if key.startswith("OTEL_") or key.lower() in ("traceparent", "tracestate"):
            monkeypatch.delenv(key)


@pytest.fixture
def memory() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = setup_tracing(TracingSettings.from_env(), extra_processors=[SimpleSpanProcessor(exporter)])
    assert provider is not None
    yield provider, exporter
    shutdown_tracing(provider)


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


# --- settings --------------------------------------------------------------------------
def parse(*argv: str) -> TracingSettings:
    parser = argparse.ArgumentParser()
    tracing.add_cli_args(parser)
    return TracingSettings.from_args(parser.parse_args(list(argv)))


def test_tracing_is_off_without_exporter_or_endpoint() -> None:
    settings = parse()
    assert not settings.enabled
    assert settings.service_name == "nanovl"
    assert setup_tracing(settings) is None
    assert settings.for_vllm().otlp_traces_endpoint is None


def test_endpoint_env_turns_on_otlp_grpc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    settings = parse()
    assert settings.enabled and settings.exporters == ("otlp",)
    assert settings.otlp.protocol == "grpc"
    vllm = settings.for_vllm()
    assert vllm.otlp_traces_endpoint == "http://collector:4317"
    assert vllm.env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "grpc"
    assert vllm.env["OTEL_SERVICE_NAME"] == "nanovl-vllm"
    assert "OTEL_TRACES_SAMPLER" not in vllm.env


def test_signal_specific_env_beats_generic_and_flags_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,deployment.environment=dev")
    settings = parse()
    assert settings.otlp.protocol == "http/protobuf"
    assert settings.service_name == "from-attrs"
    # vLLM builds its HTTP exporter from one string: it needs the full signal URL.
    assert settings.for_vllm().otlp_traces_endpoint == "http://collector:4318/v1/traces"

    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    assert parse().service_name == "from-env"

    flags = parse(
        "--otel-endpoint",
        "other:4317",
        "--otel-protocol",
        "grpc",
        "--otel-service-name",
        "from-flag",
        "--otel-sampler-ratio",
        "0.25",
    )
    assert flags.otlp.endpoint == "http://other:4317"  # bare host:port means plaintext
    assert flags.otlp.protocol == "grpc"
    assert flags.service_name == "from-flag"
    assert flags.sampler_ratio == 0.25
    vllm = flags.for_vllm()
    assert vllm.otlp_traces_endpoint == "http://other:4317"
    assert vllm.env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert vllm.env["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
    assert vllm.env["OTEL_SERVICE_NAME"] == "from-flag-vllm"


def test_console_exporter_needs_no_endpoint_and_gives_vllm_nothing() -> None:
    settings = parse("--otel-traces-exporter", "console")
    assert settings.enabled and settings.exporters == ("console",)
    assert settings.for_vllm().otlp_traces_endpoint is None


@pytest.mark.parametrize(
    ("env", "argv", "match"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, (), "unknown exporter 'zipkin'"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, (), "use 'grpc' or 'http/protobuf'"),
        ({}, ("--otel-sampler-ratio", "1.5"), "between 0 and 1"),
    ],
)
def test_bad_configuration_is_an_actionable_error(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], argv: tuple[str, ...], match: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(InvalidArgument, match=re.escape(match)):
        parse(*argv)


def test_sdk_disabled_wins_over_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    settings = parse("--otel-traces-exporter", "console")
    assert not settings.enabled
    assert setup_tracing(settings, extra_processors=[SimpleSpanProcessor(InMemorySpanExporter())]) is None


def test_provider_is_private_not_global(memory: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, _ = memory
    # vLLM installs the global provider itself; ours must never take that slot.
    assert trace.get_tracer_provider() is not provider


# --- stage spans -----------------------------------------------------------------------
def test_stage_spans_nest_and_carry_attributes(memory: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = memory
    tracer = get_tracer(provider)
    with tracer.stage_span(RECEIVE, {"nanovl.request_id": "r-1"}) as receive:
        with tracer.stage_span(decode_span_name("image"), {"nanovl.media.bytes": 1234}, width=640, height=480):
            pass
        with tracer.stage_span(PROMPT_ASSEMBLE, num_items=1):
            pass
    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {RECEIVE, decode_span_name("image"), PROMPT_ASSEMBLE}
    root = spans[RECEIVE]
    assert root.parent is None
    assert root.attributes["nanovl.request_id"] == "r-1"
    assert root.resource.attributes["service.name"] == "nanovl"
    decode = spans[decode_span_name("image")]
    assert decode.context.trace_id == root.context.trace_id == receive.get_span_context().trace_id
    assert decode.parent.span_id == root.context.span_id
    assert spans[PROMPT_ASSEMBLE].parent.span_id == root.context.span_id
    assert dict(decode.attributes) == {"nanovl.media.bytes": 1234, "width": 640, "height": 480}


def test_errors_set_status_record_exception_and_grpc_code(memory: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = memory
    tracer = get_tracer(provider)
    with pytest.raises(MediaDecodeError), tracer.stage_span(decode_span_name("image")):
        raise MediaDecodeError("image 0 is not a PNG, JPEG or WebP file")
    with pytest.raises(ValueError), tracer.stage_span(PROMPT_ASSEMBLE):
        raise ValueError("boom")
    spans = by_name(exporter.get_finished_spans())
    decode = spans[decode_span_name("image")]
    assert decode.status.status_code is StatusCode.ERROR
    assert "not a PNG" in decode.status.description
    assert decode.attributes[tracing.ATTR_ERROR_CODE] == "INVALID_ARGUMENT"
    [event] = decode.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "nanovl.errors.MediaDecodeError"
    assemble = spans[PROMPT_ASSEMBLE]
    assert assemble.status.status_code is StatusCode.ERROR
    assert tracing.ATTR_ERROR_CODE not in assemble.attributes


async def test_cancellation_is_tagged_not_an_error(memory: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = memory
    tracer = get_tracer(provider)

    async def generate() -> None:
        with tracer.stage_span(ENGINE_GENERATE):
            await asyncio.sleep(10)

    task = asyncio.create_task(generate())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [span] = exporter.get_finished_spans()
    assert span.attributes[tracing.ATTR_CANCELLED] is True
    assert span.status.status_code is StatusCode.UNSET


def test_trace_headers_for_vllm_carry_the_current_span(memory: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, _ = memory
    tracer = get_tracer(provider)
    assert trace_headers_for_vllm() == {}
    with tracer.stage_span(ENGINE_GENERATE) as span:
        headers = trace_headers_for_vllm()
    ctx = span.get_span_context()
    assert set(headers) == {"traceparent"}
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", format_trace_id(ctx.trace_id), format_span_id(ctx.span_id))
    assert int(flags, 16) & 0x01  # sampled (the SDK also sets W3C level-2 "random", 0x02)
    # vLLM's extract_trace_context is exactly this W3C extraction.
    extracted = trace.get_current_span(TraceContextTextMapPropagator().extract(headers)).get_span_context()
    assert (extracted.trace_id, extracted.span_id, extracted.trace_flags.sampled) == (ctx.trace_id, ctx.span_id, True)


def test_unsampled_trace_exports_nothing_but_still_tells_vllm_not_to_sample() -> None:
    exporter = InMemorySpanExporter()
    provider = setup_tracing(
        TracingSettings.from_env(sampler_ratio=0.0), extra_processors=[SimpleSpanProcessor(exporter)]
    )
    tracer = get_tracer(provider)
    with tracer.stage_span(ENGINE_GENERATE) as span:
        headers = trace_headers_for_vllm()
    shutdown_tracing(provider)
    assert not span.is_recording()
    assert exporter.get_finished_spans() == ()
    assert not int(headers["traceparent"].split("-")[3], 16) & 0x01  # vLLM's parent-based sampler drops it


# --- engine timeline from RequestOutput.metrics ----------------------------------------
@dataclass
class FakeRequestStats:
    """Same fields and clocks as vLLM's RequestStateStats."""

    arrival_time: float
    queued_ts: float
    scheduled_ts: float
    first_token_ts: float
    last_token_ts: float
    first_token_latency: float
    num_generation_tokens: int
    num_preemptions: int = 0


def vllm_request_state_stats_fields() -> set[str]:
    """Field names of the installed vLLM's RequestStateStats, read from its source (importing
    vLLM costs ~15 s)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vLLM is not installed")
    source = Path(next(iter(spec.submodule_search_locations)), "v1", "metrics", "stats.py").read_text()
    [cls] = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "RequestStateStats"]
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def test_request_stats_protocol_matches_installed_vllm() -> None:
    needed = set(tracing.RequestStatsLike.__annotations__)
    assert needed <= vllm_request_state_stats_fields()


def test_engine_stats_become_attributes_events_and_child_spans(
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = memory
    tracer = get_tracer(provider)
    mono, wall = time.monotonic(), time.time()
    stats = FakeRequestStats(
        arrival_time=wall - 1.0,
        queued_ts=mono - 0.9,
        scheduled_ts=mono - 0.8,
        first_token_ts=mono - 0.5,
        last_token_ts=mono - 0.1,
        first_token_latency=0.5,
        num_generation_tokens=9,
        num_preemptions=1,
    )
    with tracer.stage_span(ENGINE_GENERATE) as span:
        timeline = tracer.record_engine_stats(span, stats)
    assert timeline is not None
    assert timeline.queue_s == pytest.approx(0.1)
    assert timeline.prefill_s == pytest.approx(0.3)
    assert timeline.decode_s == pytest.approx(0.4)
    spans = by_name(exporter.get_finished_spans())
    gen = spans[ENGINE_GENERATE]
    assert gen.attributes[tracing.ATTR_QUEUE] == pytest.approx(0.1)
    assert gen.attributes[tracing.ATTR_PREFILL] == pytest.approx(0.3)
    assert gen.attributes[tracing.ATTR_DECODE] == pytest.approx(0.4)
    assert gen.attributes[tracing.ATTR_INFERENCE] == pytest.approx(0.7)
    assert gen.attributes[tracing.ATTR_TTFT] == 0.5
    assert gen.attributes[tracing.ATTR_COMPLETION_TOKENS] == 9
    assert gen.attributes[tracing.ATTR_PREEMPTIONS] == 1
    assert [e.name for e in gen.events] == ["queued", "scheduled", "first_token", "finished"]
    for name, seconds in ((ENGINE_QUEUE, 0.1), (ENGINE_PREFILL, 0.3), (ENGINE_DECODE, 0.4)):
        child = spans[name]
        assert child.parent.span_id == gen.context.span_id
        assert (child.end_time - child.start_time) / 1e9 == pytest.approx(seconds, abs=1e-6)
    # Stages line up end to start.
    assert spans[ENGINE_QUEUE].end_time == spans[ENGINE_PREFILL].start_time
    assert spans[ENGINE_PREFILL].end_time == spans[ENGINE_DECODE].start_time


def test_engine_stats_partial_missing_or_from_another_host(
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = memory
    tracer = get_tracer(provider)
    mono = time.monotonic()
    never_scheduled = FakeRequestStats(time.time(), mono - 0.2, 0.0, 0.0, 0.0, 0.0, 0)
    with tracer.stage_span("a") as span:
        assert tracer.record_engine_stats(span, None) is None  # engine ran with disable_log_stats
    with tracer.stage_span("b") as span:
        assert tracer.record_engine_stats(span, never_scheduled).queue_s is None
    # Monotonic stamps from another machine's clock: durations survive, timestamps do not.
    remote = FakeRequestStats(time.time(), mono + 1000.0, mono + 1000.5, mono + 1001.0, mono + 1002.0, 1.0, 3)
    with tracer.stage_span("c") as span:
        tracer.record_engine_stats(span, remote)
    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {"a", "b", "c"}
    assert tracing.ATTR_QUEUE not in spans["a"].attributes
    assert [e.name for e in spans["b"].events] == ["queued"]
    assert tracing.ATTR_QUEUE not in spans["b"].attributes
    assert spans["c"].attributes[tracing.ATTR_DECODE] == 1.0
    assert spans["c"].events == ()


# --- gRPC instrumentation ----------------------------------------------------------------
@dataclass
class EchoServer:
    server: grpc.aio.Server
    target: str
    seen_metadata: list[dict[str, str]]


async def start_echo_server(provider: TracerProvider | None) -> EchoServer:
    """A tiny generic-handler server: unary /test.Echo/Echo and streaming /test.Echo/Stream,
    each opening a ``receive`` stage span, plus the standard health service."""
    tracer = get_tracer(provider)
    seen: list[dict[str, str]] = []

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(dict(context.invocation_metadata()))
        with tracer.stage_span(RECEIVE):
            return request

    async def stream(request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        seen.append(dict(context.invocation_metadata()))
        with tracer.stage_span(RECEIVE):
            for _ in range(3):
                yield request

    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    server = grpc.aio.server(interceptors=server_interceptors(provider))
    server.add_generic_rpc_handlers((handler,))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return EchoServer(server, f"127.0.0.1:{port}", seen)


async def test_server_span_continues_incoming_traceparent(memory: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = memory
    echo = await start_echo_server(provider)
    try:
        async with grpc.aio.insecure_channel(echo.target) as channel:
            md = (("traceparent", f"00-{KNOWN_TRACE_ID}-{KNOWN_PARENT_ID}-01"),)
            assert await channel.unary_unary("/test.Echo/Echo")(b"hi", metadata=md) == b"hi"
            replies = [r async for r in channel.unary_stream("/test.Echo/Stream")(b"x", metadata=md)]
            assert replies == [b"x"] * 3
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    finally:
        await echo.server.stop(None)
    spans = exporter.get_finished_spans()
    servers = {s.name: s for s in spans if s.kind is SpanKind.SERVER}
    assert set(servers) == {"/test.Echo/Echo", "/test.Echo/Stream"}  # health checks are not traced
    for server_span in servers.values():
        assert format_trace_id(server_span.context.trace_id) == KNOWN_TRACE_ID
        assert format_span_id(server_span.parent.span_id) == KNOWN_PARENT_ID
        assert server_span.parent.is_remote
    receives = [s for s in spans if s.name == RECEIVE]
    assert sorted(s.parent.span_id for s in receives) == sorted(s.context.span_id for s in servers.values())


async def test_client_interceptor_propagates_caller_context(
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = memory
    echo = await start_echo_server(provider)
    tracer = get_tracer(provider)
    try:
        async with grpc.aio.insecure_channel(echo.target, interceptors=client_interceptors(provider)) as channel:
            with tracer.stage_span("caller") as caller:
                await channel.unary_unary("/test.Echo/Echo")(b"hi")
    finally:
        await echo.server.stop(None)
    trace_id = format_trace_id(caller.get_span_context().trace_id)
    [metadata] = echo.seen_metadata
    assert metadata["traceparent"].split("-")[1] == trace_id
    spans = exporter.get_finished_spans()
    [client] = [s for s in spans if s.kind is SpanKind.CLIENT]
    [server] = [s for s in spans if s.kind is SpanKind.SERVER]
    assert client.parent.span_id == caller.get_span_context().span_id
    assert server.parent.span_id == client.context.span_id
    assert {format_trace_id(s.context.trace_id) for s in spans} == {trace_id}


# --- tracing off -----------------------------------------------------------------------------
async def test_tracing_off_creates_no_spans_and_propagates_nothing() -> None:
    provider = setup_tracing(TracingSettings.from_env())
    assert provider is None
    assert server_interceptors(provider) == [] and client_interceptors(provider) == []
    tracer = get_tracer(provider)
    assert not tracer.enabled
    echo = await start_echo_server(provider)
    try:
        async with grpc.aio.insecure_channel(echo.target) as channel:
            with tracer.stage_span(RECEIVE, request_id="r") as span:
                assert not span.is_recording()
                assert not trace.get_current_span().get_span_context().is_valid
                assert trace_headers_for_vllm() == {}
                await channel.unary_unary("/test.Echo/Echo")(b"hi")
    finally:
        await echo.server.stop(None)
    assert "traceparent" not in echo.seen_metadata[0]
    assert tracer.record_engine_stats(span, FakeRequestStats(time.time(), 1.0, 2.0, 3.0, 4.0, 2.0, 1)) is not None


# --- real OTLP export ----------------------------------------------------------------------
def test_spans_reach_an_otlp_grpc_receiver() -> None:
    with OtlpReceiver() as receiver:
        settings = parse("--otel-endpoint", receiver.endpoint, "--otel-service-name", "nanovl-test")
        assert settings.exporters == ("otlp",)
        provider = setup_tracing(settings)
        tracer = get_tracer(provider)
        with tracer.stage_span(RECEIVE):
            with tracer.stage_span(decode_span_name("image"), {"nanovl.media.bytes": 77}):
                pass
            with pytest.raises(MediaDecodeError), tracer.stage_span(PROMPT_ASSEMBLE):
                raise MediaDecodeError("bad")
        shutdown_tracing(provider)  # flushes the batch processor
        [decode] = receiver.wait_for_spans(decode_span_name("image"))
        [receive] = receiver.wait_for_spans(RECEIVE)
        [assemble] = receiver.wait_for_spans(PROMPT_ASSEMBLE)
    assert decode.service_name == receive.service_name == "nanovl-test"
    assert decode.trace_id == receive.trace_id and decode.parent_span_id == receive.span_id
    assert receive.parent_span_id == ""
    assert decode.attributes["nanovl.media.bytes"] == 77
    assert assemble.status_code == 2 and assemble.events == ("exception",)


# --- logs ----------------------------------------------------------------------------------
@pytest.fixture
def log_stream() -> Iterator[tuple[io.StringIO, str]]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    stream = io.StringIO()
    yield stream, "nanovl.test.logs"
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_carry_trace_and_span_ids(
    memory: tuple[TracerProvider, InMemorySpanExporter], log_stream: tuple[io.StringIO, str]
) -> None:
    provider, _ = memory
    stream, name = log_stream
    setup_logging(LoggingSettings(level="INFO", format="json"), stream=stream)
    logger = logging.getLogger(name)
    with get_tracer(provider).stage_span(RECEIVE) as span:
        logger.info("inside")
    logger.info("outside")
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    ctx = span.get_span_context()
    assert (inside["message"], inside["trace_id"], inside["span_id"]) == (
        "inside",
        format_trace_id(ctx.trace_id),
        format_span_id(ctx.span_id),
    )
    assert (outside["trace_id"], outside["span_id"]) == ("", "")


def test_text_logs_show_ids_only_inside_a_span(
    memory: tuple[TracerProvider, InMemorySpanExporter], log_stream: tuple[io.StringIO, str]
) -> None:
    provider, _ = memory
    stream, name = log_stream
    setup_logging(LoggingSettings(format="text"), stream=stream)
    setup_logging(LoggingSettings(format="text"), stream=stream)  # idempotent: one handler
    logger = logging.getLogger(name)
    with get_tracer(provider).stage_span(RECEIVE) as span:
        logger.warning("inside")
    logger.warning("outside")
    inside, outside = stream.getvalue().splitlines()
    ctx = span.get_span_context()
    assert inside.endswith(f"inside [trace_id={format_trace_id(ctx.trace_id)} span_id={format_span_id(ctx.span_id)}]")
    assert outside.endswith("nanovl.test.logs: outside")
