"""OpenTelemetry tracing for nanovl: one trace per request.

A request's trace is: the gRPC server span (``opentelemetry-instrumentation-grpc``) →
our stage spans (``receive``, ``decode.<modality>``, ``prompt.assemble``,
``engine.generate``) → engine sub-stages rebuilt from vLLM's per-request timestamps
(``engine.queue``, ``engine.prefill``, ``engine.decode``) → vLLM's own ``llm_request``.

Coexistence with vLLM's tracer (vLLM 0.32, ``vllm/tracing/otel.py``):
- With ``otlp_traces_endpoint`` set, ``AsyncLLM`` calls ``init_tracer`` which builds a
  TracerProvider with a BatchSpanProcessor + OTLP exporter, makes it the GLOBAL provider
  (``set_tracer_provider``) and writes the endpoint into
  ``os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]``. When a request finishes it emits
  one ``llm_request`` span (kind SERVER) through the global provider, parented on the
  W3C context it extracts from the ``trace_headers`` passed to ``generate``.
- nanovl therefore never touches the global provider: ``setup_tracing`` returns a private
  provider, and everything here takes it explicitly. Both providers export to the same
  collector: ``TracingSettings.for_vllm()`` gives the engine its endpoint plus the
  environment variables vLLM reads (protocol, sampler, service name ``<ours>-vllm``).
- Trace continuity comes from ``trace_headers_for_vllm()``: vLLM's provider samples
  ``parentbased_always_on`` by default, so it follows our sampling decision (the header
  carries the sampled flag).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, get_args

import grpc
from opentelemetry import trace
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
    OTEL_EXPORTER_OTLP_METRICS_PROTOCOL,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_SDK_DISABLED,
    OTEL_SERVICE_NAME,
    OTEL_TRACES_SAMPLER,
    OTEL_TRACES_SAMPLER_ARG,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from nanovl.errors import InvalidArgument, NanovlError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

log = logging.getLogger(__name__)

# --- span names the servicer uses --------------------------------------------------
RECEIVE: Final = "receive"
PROMPT_ASSEMBLE: Final = "prompt.assemble"
ENGINE_GENERATE: Final = "engine.generate"
# Rebuilt from RequestOutput.metrics by StageTracer.record_engine_stats. The encoder runs
# inside the prefill step, so its time is part of engine.prefill.
ENGINE_QUEUE: Final = "engine.queue"
ENGINE_PREFILL: Final = "engine.prefill"
ENGINE_DECODE: Final = "engine.decode"


def decode_span_name(modality: str) -> str:
    """``decode.image`` / ``decode.video`` / ``decode.audio``."""
    return f"decode.{modality}"


# --- attribute keys ------------------------------------------------------------------
# Same keys as vLLM's llm_request span (vllm/tracing/utils.py SpanAttributes), so one
# query works on both spans.
ATTR_TTFT: Final = "gen_ai.latency.time_to_first_token"
ATTR_QUEUE: Final = "gen_ai.latency.time_in_queue"
ATTR_PREFILL: Final = "gen_ai.latency.time_in_model_prefill"
ATTR_DECODE: Final = "gen_ai.latency.time_in_model_decode"
ATTR_INFERENCE: Final = "gen_ai.latency.time_in_model_inference"
ATTR_COMPLETION_TOKENS: Final = "gen_ai.usage.completion_tokens"
ATTR_PREEMPTIONS: Final = "nanovl.engine.num_preemptions"
ATTR_ERROR_CODE: Final = "nanovl.error.grpc_code"
ATTR_ERROR_MESSAGE: Final = "nanovl.error.message"
ATTR_CANCELLED: Final = "nanovl.cancelled"

TracesExporter = Literal["otlp", "console", "none"]
OtlpProtocol = Literal["grpc", "http/protobuf"]
Signal = Literal["traces", "metrics"]

DEFAULT_SERVICE_NAME: Final = "nanovl"
_DEFAULT_GRPC_ENDPOINT: Final = "http://localhost:4317"
_DEFAULT_HTTP_ENDPOINT: Final = "http://localhost:4318"
_SIGNAL_ENV: Final[Mapping[Signal, tuple[str, str]]] = {
    # signal -> (specific endpoint var, specific protocol var); the generic ones are shared.
    "traces": (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_PROTOCOL),
    "metrics": (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, OTEL_EXPORTER_OTLP_METRICS_PROTOCOL),
}


# --- settings ------------------------------------------------------------------------
def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _normalise_endpoint(endpoint: str) -> str:
    # The OTLP/gRPC exporter treats "host:4317" (no scheme) as a TLS target; a bare
    # host:port almost always means a plaintext sidecar collector.
    return endpoint if "://" in endpoint else f"http://{endpoint}"


def _parse_protocol(value: str, source: str) -> OtlpProtocol:
    if value not in get_args(OtlpProtocol):
        raise InvalidArgument(f"{source}={value!r} is not supported; use 'grpc' or 'http/protobuf'")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class OtlpTarget:
    """Where one OTLP signal goes.

    ``endpoint`` is a *base* endpoint like ``OTEL_EXPORTER_OTLP_ENDPOINT`` (for
    http/protobuf the signal path ``/v1/<signal>`` is appended); ``None`` means "the
    SDK exporter reads its own ``OTEL_EXPORTER_OTLP_*`` variables" (endpoint, headers,
    TLS, timeout, compression).
    """

    signal: Signal
    endpoint: str | None
    protocol: OtlpProtocol

    @classmethod
    def resolve(cls, signal: Signal, *, endpoint: str | None = None, protocol: str | None = None) -> OtlpTarget:
        _, specific_protocol_var = _SIGNAL_ENV[signal]
        if protocol is not None:
            proto = _parse_protocol(protocol, "--otel-protocol")
        else:
            var = specific_protocol_var if _env(specific_protocol_var) else OTEL_EXPORTER_OTLP_PROTOCOL
            proto = _parse_protocol(_env(var) or "grpc", var)
        return cls(signal=signal, endpoint=_normalise_endpoint(endpoint) if endpoint else None, protocol=proto)

    @property
    def configured(self) -> bool:
        """True when an endpoint was given here or in the environment."""
        specific_endpoint_var, _ = _SIGNAL_ENV[self.signal]
        return bool(self.endpoint or _env(specific_endpoint_var) or _env(OTEL_EXPORTER_OTLP_ENDPOINT))

    def url(self) -> str:
        """The concrete URL the exporter will use, resolved as the SDK does (for vLLM,
        whose exporter is built from a single string)."""
        specific_endpoint_var, _ = _SIGNAL_ENV[self.signal]
        if self.endpoint is None and (specific := _env(specific_endpoint_var)):
            return specific  # signal-specific variables are used verbatim by the SDK
        default = _DEFAULT_GRPC_ENDPOINT if self.protocol == "grpc" else _DEFAULT_HTTP_ENDPOINT
        base = self.endpoint or _env(OTEL_EXPORTER_OTLP_ENDPOINT) or default
        if self.protocol == "grpc":
            return _normalise_endpoint(base)
        return f"{base.rstrip('/')}/v1/{self.signal}"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _parse_exporters(value: str, source: str) -> tuple[TracesExporter, ...]:
    names = tuple(part.strip().lower() for part in value.split(",") if part.strip())
    for name in names:
        if name not in get_args(TracesExporter):
            raise InvalidArgument(f"{source}={value!r}: unknown exporter {name!r}; use otlp, console or none")
    return tuple(n for n in names if n != "none")  # type: ignore[misc]


def resolve_service_name(override: str | None = None) -> str:
    """``override`` > OTEL_SERVICE_NAME > service.name in OTEL_RESOURCE_ATTRIBUTES > "nanovl"."""
    if override:
        return override
    # The SDK's own detector applies the env precedence and URL-decoding.
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector

    name = OTELResourceDetector().detect().attributes.get(SERVICE_NAME)
    return str(name) if name else DEFAULT_SERVICE_NAME


@dataclass(frozen=True)
class VllmTracingConfig:
    """What the engine needs so vLLM's ``llm_request`` spans join our traces.

    Pass ``otlp_traces_endpoint`` to ``AsyncEngineArgs`` and put ``env`` into
    ``os.environ`` *before* the engine is built (vLLM reads them in ``init_tracer`` and its
    engine-core processes inherit them). vLLM asserts per-request stats exist when it
    traces, so the engine must run with ``disable_log_stats=False`` whenever
    ``otlp_traces_endpoint`` is set.
    """

    otlp_traces_endpoint: str | None
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class TracingSettings:
    """Resolved tracing configuration (CLI flags > ``OTEL_*`` environment > defaults).

    Tracing is off unless an exporter is chosen (``--otel-traces-exporter`` /
    ``OTEL_TRACES_EXPORTER``) or an OTLP endpoint is configured, so a bare ``nanovl serve``
    never retries exports to a collector that does not exist.
    """

    exporters: tuple[TracesExporter, ...]
    otlp: OtlpTarget
    service_name: str
    # None: the SDK reads OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG itself
    # (default parentbased_always_on).
    sampler_ratio: float | None
    sdk_disabled: bool

    @property
    def enabled(self) -> bool:
        return bool(self.exporters) and not self.sdk_disabled

    @classmethod
    def from_env(
        cls,
        *,
        exporter: str | None = None,
        endpoint: str | None = None,
        protocol: str | None = None,
        service_name: str | None = None,
        sampler_ratio: float | None = None,
    ) -> TracingSettings:
        """Settings from ``os.environ``; any non-None argument overrides its variable."""
        otlp = OtlpTarget.resolve("traces", endpoint=endpoint, protocol=protocol)
        if exporter is not None:
            exporters = _parse_exporters(exporter, "--otel-traces-exporter")
        elif env_exporter := _env(OTEL_TRACES_EXPORTER):
            exporters = _parse_exporters(env_exporter, OTEL_TRACES_EXPORTER)
        else:
            exporters = ("otlp",) if otlp.configured else ()
        if sampler_ratio is not None and not 0.0 <= sampler_ratio <= 1.0:
            raise InvalidArgument(f"--otel-sampler-ratio={sampler_ratio} must be between 0 and 1")
        return cls(
            exporters=exporters,
            otlp=otlp,
            service_name=resolve_service_name(service_name),
            sampler_ratio=sampler_ratio,
            sdk_disabled=_truthy(os.environ.get(OTEL_SDK_DISABLED)),
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TracingSettings:
        """Settings from the flags ``add_cli_args`` defined (and the environment)."""
        return cls.from_env(
            exporter=args.otel_traces_exporter,
            endpoint=args.otel_endpoint,
            protocol=args.otel_protocol,
            service_name=args.otel_service_name,
            sampler_ratio=args.otel_sampler_ratio,
        )

    def for_vllm(self) -> VllmTracingConfig:
        """The engine-side half of the setup (see ``VllmTracingConfig``)."""
        if not self.enabled or "otlp" not in self.exporters:
            return VllmTracingConfig(otlp_traces_endpoint=None)
        env = {
            # vLLM reads only the traces-specific protocol variable and defaults to grpc.
            OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: self.otlp.protocol,
            # A separate service name keeps the engine's spans apart in Jaeger's UI.
            OTEL_SERVICE_NAME: f"{self.service_name}-vllm",
        }
        if self.sampler_ratio is not None:
            # Requests without our context (warm-up) follow the same ratio.
            env[OTEL_TRACES_SAMPLER] = "parentbased_traceidratio"
            env[OTEL_TRACES_SAMPLER_ARG] = str(self.sampler_ratio)
        return VllmTracingConfig(otlp_traces_endpoint=self.otlp.url(), env=MappingProxyType(env))


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Tracing flags. Every flag defaults to its standard OTEL_* environment variable."""
    group = parser.add_argument_group(
        "tracing (OpenTelemetry)",
        "The standard OTEL_* environment variables work too (OTEL_EXPORTER_OTLP_HEADERS, "
        "OTEL_EXPORTER_OTLP_INSECURE, OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*, OTEL_SDK_DISABLED, ...); "
        "a flag overrides its variable.",
    )
    group.add_argument(
        "--otel-traces-exporter",
        default=None,
        help="otlp, console or none (comma-separated list allowed); env OTEL_TRACES_EXPORTER. "
        "Default: otlp when an OTLP endpoint is configured, otherwise none (tracing off).",
    )
    group.add_argument(
        "--otel-endpoint",
        default=None,
        help="base OTLP endpoint for traces and metrics, e.g. http://localhost:4317; "
        "env OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).",
    )
    group.add_argument(
        "--otel-protocol",
        default=None,
        choices=get_args(OtlpProtocol),
        help="OTLP protocol; env OTEL_EXPORTER_OTLP_PROTOCOL (or OTEL_EXPORTER_OTLP_TRACES_PROTOCOL). Default grpc.",
    )
    group.add_argument(
        "--otel-service-name",
        default=None,
        help=f"service.name resource attribute; env OTEL_SERVICE_NAME. Default {DEFAULT_SERVICE_NAME}.",
    )
    group.add_argument(
        "--otel-sampler-ratio",
        type=float,
        default=None,
        help="sample this fraction of new traces (parent-based: a sampled caller is always followed); "
        "env OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG. Default: sample everything.",
    )


# --- provider --------------------------------------------------------------------------
def _span_exporter(settings: TracingSettings, name: TracesExporter) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(service_name=settings.service_name)
    endpoint = settings.otlp.endpoint
    if settings.otlp.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    # An explicit endpoint is a base endpoint (like the generic env var); the HTTP exporter
    # wants the full signal URL when given one.
    return HttpExporter(endpoint=settings.otlp.url() if endpoint else None)


def setup_tracing(
    settings: TracingSettings, *, extra_processors: Sequence[SpanProcessor] = ()
) -> TracerProvider | None:
    """Build nanovl's own TracerProvider (never the global one); None when tracing is off.

    ``extra_processors`` are added as-is (tests attach an in-memory exporter here); they
    also switch tracing on when no exporter is configured.
    """
    if settings.sdk_disabled or not (settings.enabled or extra_processors):
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    sampler = ParentBased(TraceIdRatioBased(settings.sampler_ratio)) if settings.sampler_ratio is not None else None
    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES and the process/SDK attributes.
    provider = TracerProvider(sampler=sampler, resource=Resource.create({SERVICE_NAME: settings.service_name}))
    for name in settings.exporters:
        # BatchSpanProcessor reads OTEL_BSP_* itself; exports run on its own thread.
        provider.add_span_processor(BatchSpanProcessor(_span_exporter(settings, name)))
    for processor in extra_processors:
        provider.add_span_processor(processor)
    log.info(
        "tracing on: exporters=%s otlp=%s (%s) service=%s",
        ",".join(settings.exporters) or "-",
        settings.otlp.url() if "otlp" in settings.exporters else "-",
        settings.otlp.protocol,
        settings.service_name,
    )
    return provider


def shutdown_tracing(provider: TracerProvider | None, *, timeout_s: float = 5.0) -> None:
    """Flush pending spans and stop the exporters. Safe with None."""
    if provider is None:
        return
    if not provider.force_flush(timeout_millis=int(timeout_s * 1000)):
        log.warning("tracing: not every span was exported within %.1f s", timeout_s)
    provider.shutdown()


# --- gRPC instrumentation --------------------------------------------------------------
def _default_server_filter() -> Any:
    from opentelemetry.instrumentation.grpc import filters

    # Health probes and reflection would otherwise produce a trace every few seconds.
    return filters.negate(filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection")))


class _QuietAbortSpan:
    """The server span as the gRPC instrumentation sees it, minus exception events for
    ``grpc.aio.AbortError``: an abort is how a handler sets its status, not a failure of
    its own, and its traceback is grpc's machinery. The status and message are recorded
    once by :func:`record_rpc_error`."""

    def __init__(self, span: Span) -> None:
        self._span = span

    def __getattr__(self, name: str) -> Any:
        return getattr(self._span, name)

    def record_exception(self, exception: BaseException, *args: Any, **kwargs: Any) -> None:
        if not isinstance(exception, grpc.aio.AbortError):
            self._span.record_exception(exception, *args, **kwargs)


class _QuietAbortTracer:
    """The tracer handed to the gRPC server interceptor: its spans do not record the
    exception that leaves the handler on their own (the interceptor records it once,
    and an abort not at all)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tracer, name)

    @contextlib.contextmanager
    def start_as_current_span(self, name: str, **kwargs: Any) -> Iterator[Any]:
        kwargs["record_exception"] = False
        with self._tracer.start_as_current_span(name, **kwargs) as span:
            yield _QuietAbortSpan(span)


def server_interceptors(
    provider: TracerProvider | None, *, trace_health_checks: bool = False
) -> list[grpc.aio.ServerInterceptor]:
    """Interceptors for ``grpc.aio.server(interceptors=...)``: one SERVER span per RPC,
    continuing the caller's W3C ``traceparent`` metadata. Empty when tracing is off.
    A failed RPC's span carries its status code and message once (:func:`record_rpc_error`),
    without the two ``AbortError`` stack traces the instrumentation would add."""
    if provider is None:
        return []
    from opentelemetry.instrumentation.grpc import __version__
    from opentelemetry.instrumentation.grpc._aio_server import OpenTelemetryAioServerInterceptor

    # What the package's aio_server_interceptor() builds, with the tracer wrapped.
    tracer = provider.get_tracer(
        "opentelemetry.instrumentation.grpc", __version__, schema_url="https://opentelemetry.io/schemas/1.11.0"
    )
    filter_ = None if trace_health_checks else _default_server_filter()
    return [OpenTelemetryAioServerInterceptor(_QuietAbortTracer(tracer), filter_=filter_)]


def record_rpc_error(code: grpc.StatusCode, message: str, exc: BaseException | None = None) -> None:
    """On the current (server) span: the status an RPC fails with and its message, once.
    ``exc`` is an unexpected exception (a bug): its traceback is worth keeping."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute(ATTR_ERROR_CODE, code.name)
    span.set_attribute(ATTR_ERROR_MESSAGE, message)
    if exc is not None:
        span.record_exception(exc)


def client_interceptors(provider: TracerProvider | None) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for ``grpc.aio.insecure_channel(..., interceptors=...)``: a CLIENT span
    per call and the current context injected as ``traceparent`` metadata. Empty when
    tracing is off (the no-op tracer would propagate nothing anyway)."""
    if provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(tracer_provider=provider))


# --- propagation to vLLM ---------------------------------------------------------------
_W3C = TraceContextTextMapPropagator()


def trace_headers_for_vllm() -> dict[str, str]:
    """The current span as W3C headers for ``AsyncLLM.generate(trace_headers=...)``.

    Empty when there is no current span. An unsampled span still yields a header (sampled
    flag clear), which keeps vLLM's parent-based sampler from starting a trace of its own. Only
    ``traceparent``/``tracestate``: that is all vLLM extracts.
    """
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier


# --- engine timeline from RequestOutput.metrics ----------------------------------------
class RequestStatsLike(Protocol):
    """The fields of vLLM's ``RequestStateStats`` (``vllm/v1/metrics/stats.py``) we use.

    ``arrival_time`` is wall-clock seconds (front end); the ``*_ts`` are
    ``time.monotonic()`` seconds taken in the engine-core process, 0.0 until reached.
    """

    arrival_time: float
    queued_ts: float
    scheduled_ts: float
    first_token_ts: float
    last_token_ts: float
    first_token_latency: float
    num_generation_tokens: int
    num_preemptions: int


@dataclass(frozen=True)
class EngineTimeline:
    """One request's engine-side intervals, in seconds; None where not reached."""

    arrival_time: float
    queued_ts: float | None
    scheduled_ts: float | None
    first_token_ts: float | None
    last_token_ts: float | None
    time_to_first_token: float | None
    num_generation_tokens: int
    num_preemptions: int

    @classmethod
    def from_request_stats(cls, stats: RequestStatsLike) -> EngineTimeline:
        def ts(value: float) -> float | None:
            return value if value > 0.0 else None

        return cls(
            arrival_time=stats.arrival_time,
            queued_ts=ts(stats.queued_ts),
            scheduled_ts=ts(stats.scheduled_ts),
            first_token_ts=ts(stats.first_token_ts),
            last_token_ts=ts(stats.last_token_ts),
            time_to_first_token=ts(stats.first_token_latency),
            num_generation_tokens=stats.num_generation_tokens,
            num_preemptions=stats.num_preemptions,
        )

    @staticmethod
    def _interval(start: float | None, end: float | None) -> float | None:
        return end - start if start is not None and end is not None and end >= start else None

    @property
    def queue_s(self) -> float | None:
        return self._interval(self.queued_ts, self.scheduled_ts)

    @property
    def prefill_s(self) -> float | None:
        return self._interval(self.scheduled_ts, self.first_token_ts)

    @property
    def decode_s(self) -> float | None:
        return self._interval(self.first_token_ts, self.last_token_ts)

    @property
    def inference_s(self) -> float | None:
        return self._interval(self.scheduled_ts, self.last_token_ts)


# Engine stamps that map outside [arrival - slack, now + slack] come from another host's
# monotonic clock: keep the durations, skip the timed events and spans.
_CLOCK_SLACK_S: Final = 1.0


# --- the servicer's API ----------------------------------------------------------------
_NOOP_SPAN_CM = contextlib.nullcontext(trace.INVALID_SPAN)


class StageTracer:
    """Stage spans for the servicer. With tracing off every method is a near no-op."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self.enabled = provider is not None
        self._tracer = provider.get_tracer("nanovl") if provider is not None else trace.NoOpTracer()

    def stage_span(
        self,
        name: str,
        attributes: Mapping[str, AttributeValue] | None = None,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        **attrs: AttributeValue,
    ) -> contextlib.AbstractContextManager[Span]:
        """``with tracer.stage_span("decode.image", bytes=123) as span:`` — a child of the
        current span. An exception marks it ERROR and is recorded (a ``NanovlError`` adds
        its gRPC code); cancellation is tagged, not an error. Keyword attributes whose
        names contain dots go in ``attributes``."""
        if not self.enabled:
            return _NOOP_SPAN_CM
        merged = {**attributes, **attrs} if attributes else attrs
        return self._span(name, merged, kind)

    @contextlib.contextmanager
    def _span(self, name: str, attributes: Mapping[str, AttributeValue], kind: SpanKind) -> Iterator[Span]:
        with self._tracer.start_as_current_span(
            name, kind=kind, attributes=attributes, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                yield span
            except Exception as exc:
                record_error(span, exc)
                raise
            except BaseException:
                # CancelledError / GeneratorExit: the client went away; not a server error.
                span.set_attribute(ATTR_CANCELLED, True)
                raise

    def record_engine_stats(self, span: Span, stats: RequestStatsLike | None) -> EngineTimeline | None:
        """Record vLLM's ``RequestOutput.metrics`` of a finished request on ``span``
        (normally ``engine.generate``): latency attributes, events ``queued``,
        ``scheduled``, ``first_token``, ``finished``, and child spans ``engine.queue``,
        ``engine.prefill`` (includes the encoders), ``engine.decode``.

        ``stats`` is None when the engine runs with ``disable_log_stats=True``.
        """
        if stats is None:
            return None
        timeline = EngineTimeline.from_request_stats(stats)
        if not self.enabled or not span.is_recording():
            return timeline
        for key, value in (
            (ATTR_TTFT, timeline.time_to_first_token),
            (ATTR_QUEUE, timeline.queue_s),
            (ATTR_PREFILL, timeline.prefill_s),
            (ATTR_DECODE, timeline.decode_s),
            (ATTR_INFERENCE, timeline.inference_s),
        ):
            if value is not None:
                span.set_attribute(key, value)
        span.set_attribute(ATTR_COMPLETION_TOKENS, timeline.num_generation_tokens)
        span.set_attribute(ATTR_PREEMPTIONS, timeline.num_preemptions)

        # Engine-core stamps are CLOCK_MONOTONIC, which is system-wide on Linux: map them to
        # wall-clock through this process's current offset.
        now_ns = time.time_ns()
        offset_ns = now_ns - time.monotonic_ns()
        earliest_ns = int((timeline.arrival_time - _CLOCK_SLACK_S) * 1e9)
        latest_ns = now_ns + int(_CLOCK_SLACK_S * 1e9)

        def wall_ns(mono_s: float | None) -> int | None:
            if mono_s is None:
                return None
            ns = int(mono_s * 1e9) + offset_ns
            return ns if earliest_ns <= ns <= latest_ns else None

        stamps = {
            "queued": wall_ns(timeline.queued_ts),
            "scheduled": wall_ns(timeline.scheduled_ts),
            "first_token": wall_ns(timeline.first_token_ts),
            "finished": wall_ns(timeline.last_token_ts),
        }
        for event, ns in stamps.items():
            if ns is not None:
                span.add_event(event, timestamp=ns)
        parent = trace.set_span_in_context(span)
        for name, start, end in (
            (ENGINE_QUEUE, stamps["queued"], stamps["scheduled"]),
            (ENGINE_PREFILL, stamps["scheduled"], stamps["first_token"]),
            (ENGINE_DECODE, stamps["first_token"], stamps["finished"]),
        ):
            if start is not None and end is not None and end >= start:
                self._tracer.start_span(name, context=parent, start_time=start).end(end_time=end)
        return timeline


def record_error(span: Span, exc: BaseException) -> None:
    """Mark ``span`` failed with ``exc`` (exception event + ERROR status + gRPC code)."""
    if not span.is_recording():
        return
    span.record_exception(exc)
    if isinstance(exc, NanovlError):
        span.set_attribute(ATTR_ERROR_CODE, exc.code.name)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def get_tracer(provider: TracerProvider | None) -> StageTracer:
    """The servicer's tracer; a no-op one when ``provider`` is None."""
    return StageTracer(provider)
