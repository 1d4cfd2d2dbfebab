"""Service metrics: OpenTelemetry instruments on a MeterProvider of our own.

Readers: a Prometheus scrape endpoint (``--metrics-port``, 0 = off) and OTLP push when
``--otel-metrics-exporter otlp`` / ``OTEL_METRICS_EXPORTER=otlp`` or a metrics-specific
OTLP endpoint is configured (push goes to ``--otel-endpoint`` / the OTEL_EXPORTER_OTLP_*
variables). The scrape endpoint serves prometheus_client's global REGISTRY by default, so
it also shows vLLM's own ``vllm:*`` metrics: vLLM's ``PrometheusStatLogger``
(``vllm/v1/metrics/loggers.py``) registers them there in the process that runs ``AsyncLLM``
(stats are on in nanovl), labelled ``model_name`` = the served model name
(``--served-model-name``) and ``engine`` = the data-parallel rank. Routers that score
replicas by ``vllm:num_requests_waiting`` and ``vllm:kv_cache_usage_perc`` (llm-d, the Gateway
API Inference Extension's endpoint picker) read them from nanovl unchanged. Every nanovl
metric is named ``nanovl.*`` (Prometheus: ``nanovl_*``) so the two never clash.

The same HTTP endpoint answers ``/ready`` and ``/live`` (``http_endpoint``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, get_args

import grpc
from opentelemetry.environment_variables import OTEL_METRICS_EXPORTER
from opentelemetry.metrics import CallbackOptions, Meter, NoOpMeter, Observation
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
    OTEL_EXPORTER_PROMETHEUS_HOST,
    OTEL_EXPORTER_PROMETHEUS_PORT,
    OTEL_SDK_DISABLED,
)
from prometheus_client import REGISTRY, CollectorRegistry

from nanovl.errors import FailedPrecondition, InvalidArgument
from profiling.telemetry.http_endpoint import HttpEndpoint, Probe, start_http_endpoint
from profiling.telemetry.tracing import OtlpTarget, resolve_service_name

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader

log = logging.getLogger(__name__)

MetricsExporter = Literal["otlp", "console", "prometheus", "none"]
DEFAULT_METRICS_PORT: Final = 9464  # OTel's conventional Prometheus exporter port
# Loopback unless the operator opens it: /metrics names models, load and memory.
DEFAULT_METRICS_HOST: Final = "127.0.0.1"

# Explicit buckets (seconds) for LLM serving. TTFT spans a cached text prompt (~10 ms)
# to a long video prefill under load (tens of s); inter-token latency is a few ms to
# ~100 ms per decode step on GPU, up to seconds under CPU/preemption pressure.
TTFT_BUCKETS: Final = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    20.0,
    30.0,
    60.0,
)
ITL_BUCKETS: Final = (
    0.002,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.5,
)
REQUEST_DURATION_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0)
MEDIA_DECODE_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class EncoderBudgetSnapshot:
    """Encoder budget state at one instant (fed by the profiling code)."""

    budget_tokens: int
    cache_size_tokens: int
    cache_size_bytes: int


EncoderBudgetSource = Callable[[], "EncoderBudgetSnapshot | None"]


@dataclass(frozen=True)
class LoadSnapshot:
    """The server's own request counts at one instant (``service.lifecycle.Lifecycle``).

    ``queued``: admitted requests nanovl has not handed to vLLM yet (media decoding, prompt
    rendering); vLLM's own queue is ``vllm:num_requests_waiting``, so the two add up to the
    work waiting on a replica. ``admitted`` counts queued, waiting and running requests;
    readiness turns NOT_SERVING when it reaches ``admission_limit`` (--max-concurrent-requests).
    ``uploading``: StreamGenerate calls between their header and ``End``."""

    admitted: int
    queued: int
    uploading: int
    admission_limit: int | None


LoadSource = Callable[[], LoadSnapshot]


# --- settings ------------------------------------------------------------------------------
def _signal_endpoint_set() -> bool:
    return bool(os.environ.get(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, "").strip())


@dataclass(frozen=True)
class MetricsSettings:
    """Resolved metrics configuration (CLI flags > ``OTEL_*`` environment > defaults)."""

    prometheus_port: int  # 0 = no scrape endpoint
    prometheus_host: str
    exporters: tuple[Literal["otlp", "console"], ...]  # push exporters
    otlp: OtlpTarget
    service_name: str
    sdk_disabled: bool

    @property
    def enabled(self) -> bool:
        return not self.sdk_disabled and (self.prometheus_port > 0 or bool(self.exporters))

    @classmethod
    def from_env(
        cls,
        *,
        prometheus_port: int | None = None,
        prometheus_host: str | None = None,
        exporter: str | None = None,
        endpoint: str | None = None,
        protocol: str | None = None,
        service_name: str | None = None,
    ) -> MetricsSettings:
        """Settings from ``os.environ``; any non-None argument overrides its variable."""
        otlp = OtlpTarget.resolve("metrics", endpoint=endpoint, protocol=protocol)
        source, raw = (
            ("--otel-metrics-exporter", exporter)
            if exporter is not None
            else (
                OTEL_METRICS_EXPORTER,
                os.environ.get(OTEL_METRICS_EXPORTER, "").strip() or None,
            )
        )
        if raw is not None:
            names = [n.strip().lower() for n in raw.split(",") if n.strip()]
            for name in names:
                if name not in get_args(MetricsExporter):
                    raise InvalidArgument(f"{source}={raw!r}: unknown exporter {name!r}; use otlp, console or none")
            # "prometheus" is the scrape endpoint, governed by --metrics-port.
            exporters = tuple(n for n in names if n in ("otlp", "console"))
        else:
            # Only a metrics-specific endpoint switches push on by itself: /metrics is on by
            # default, and pushing the same series too would duplicate them in Prometheus.
            exporters = ("otlp",) if _signal_endpoint_set() else ()
        if prometheus_port is None:
            env_port = os.environ.get(OTEL_EXPORTER_PROMETHEUS_PORT, "").strip()
            try:
                prometheus_port = int(env_port) if env_port else DEFAULT_METRICS_PORT
            except ValueError:
                raise InvalidArgument(f"{OTEL_EXPORTER_PROMETHEUS_PORT}={env_port!r} is not a port number") from None
        if not 0 <= prometheus_port <= 65535:
            raise InvalidArgument(f"--metrics-port={prometheus_port} must be 0 (off) or a TCP port")
        return cls(
            prometheus_port=prometheus_port,
            prometheus_host=prometheus_host
            or os.environ.get(OTEL_EXPORTER_PROMETHEUS_HOST, "").strip()
            or DEFAULT_METRICS_HOST,
            exporters=exporters,  # type: ignore[arg-type]
            otlp=otlp,
            service_name=resolve_service_name(service_name),
            sdk_disabled=(os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"),
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MetricsSettings:
        """From ``add_cli_args`` flags; ``--otel-endpoint``/``--otel-protocol``/
        ``--otel-service-name`` (``profiling.telemetry.tracing.add_cli_args``) apply too when present."""
        return cls.from_env(
            prometheus_port=args.metrics_port,
            prometheus_host=args.metrics_host,
            exporter=args.otel_metrics_exporter,
            endpoint=getattr(args, "otel_endpoint", None),
            protocol=getattr(args, "otel_protocol", None),
            service_name=getattr(args, "otel_service_name", None),
        )


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Metrics flags; each defaults to its standard OTEL_* environment variable."""
    group = parser.add_argument_group(
        "metrics", "OTEL_METRIC_EXPORT_INTERVAL and the OTEL_EXPORTER_OTLP_* variables work too."
    )
    group.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help=f"Prometheus /metrics port, 0 = off; env OTEL_EXPORTER_PROMETHEUS_PORT. Default {DEFAULT_METRICS_PORT}.",
    )
    group.add_argument(
        "--metrics-host",
        default=None,
        help="address the /metrics endpoint binds (0.0.0.0: every interface); env OTEL_EXPORTER_PROMETHEUS_HOST. "
        f"Default {DEFAULT_METRICS_HOST}.",
    )
    group.add_argument(
        "--otel-metrics-exporter",
        default=None,
        help="push exporter: otlp, console or none; env OTEL_METRICS_EXPORTER. Default: otlp only when "
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is set (the /metrics endpoint already serves Prometheus), "
        "otherwise none. otlp pushes to --otel-endpoint.",
    )


# --- the servicer's API ----------------------------------------------------------------------
class ServiceMetrics:
    """Typed metrics the servicer records. Label values must come from small fixed sets
    (rpc method names, modalities ``text``/``image``/``video``/``audio``/``mixed``)."""

    def __init__(self, meter: Meter, *, provider: MeterProvider | None = None, http_server: HttpEndpoint | None = None):
        self._provider = provider
        self._http = http_server
        self._budget_source: EncoderBudgetSource | None = None
        self._budget_failed = False
        # One attribute dict per modality, not one per streamed token.
        self._modality_attrs: dict[str, dict[str, str]] = {}
        self._load_source: LoadSource | None = None

        self._requests = meter.create_counter(
            "nanovl.requests", unit="{request}", description="Finished RPCs by method, modality and gRPC status."
        )
        self._request_duration = meter.create_histogram(
            "nanovl.request.duration",
            unit="s",
            description="RPC wall time, from receipt to the last response message.",
            explicit_bucket_boundaries_advisory=REQUEST_DURATION_BUCKETS,
        )
        self._ttft = meter.create_histogram(
            "nanovl.time_to_first_token",
            unit="s",
            description="Time from receiving a request to sending its first token.",
            explicit_bucket_boundaries_advisory=TTFT_BUCKETS,
        )
        self._itl = meter.create_histogram(
            "nanovl.inter_token_latency",
            unit="s",
            description="Time between consecutive output tokens.",
            explicit_bucket_boundaries_advisory=ITL_BUCKETS,
        )
        self._in_flight = meter.create_up_down_counter(
            "nanovl.requests.in_flight", unit="{request}", description="RPCs being served right now."
        )
        for name, pick, description in (
            (
                "nanovl.requests.queued",
                lambda s: s.queued,
                "Admitted requests not yet handed to the engine (media decoding, prompt rendering); "
                "vLLM's own queue is vllm:num_requests_waiting.",
            ),
            (
                "nanovl.requests.admitted",
                lambda s: s.admitted,
                "Admitted requests: queued in nanovl, waiting in vLLM or generating.",
            ),
            ("nanovl.requests.uploading", lambda s: s.uploading, "StreamGenerate calls still uploading."),
            (
                "nanovl.requests.admission_limit",
                lambda s: s.admission_limit,
                "--max-concurrent-requests: readiness is NOT_SERVING while admitted requests are at it.",
            ),
        ):
            meter.create_observable_gauge(
                name, callbacks=[self._observe_load(pick)], unit="{request}", description=description
            )
        self._bytes_received = meter.create_counter(
            "nanovl.media.received", unit="By", description="Media bytes received, by modality."
        )
        self._decoder_lost = meter.create_counter(
            "nanovl.media.decoder.lost",
            unit="{worker}",
            description="Decode worker processes lost on a media item, by modality and reason (crash: a signal "
            "such as SIGSEGV; killed: SIGKILL, most often the OOM killer; timeout: --media-decode-timeout-s).",
        )
        self._decode_time = meter.create_histogram(
            "nanovl.media.decode.duration",
            unit="s",
            description="Time to decode one media item, by modality.",
            explicit_bucket_boundaries_advisory=MEDIA_DECODE_BUCKETS,
        )
        meter.create_observable_gauge(
            "nanovl.encoder.budget_tokens",
            callbacks=[self._observe(lambda s: s.budget_tokens)],
            unit="{token}",
            description="Encoder compute budget per scheduler step, in tokens.",
        )
        meter.create_observable_gauge(
            "nanovl.encoder.cache.size_tokens",
            callbacks=[self._observe(lambda s: s.cache_size_tokens)],
            unit="{token}",
            description="Encoder cache capacity, in tokens.",
        )
        meter.create_observable_gauge(
            "nanovl.encoder.cache.memory",
            callbacks=[self._observe(lambda s: s.cache_size_bytes)],
            unit="By",
            description="Encoder cache capacity, in bytes.",
        )

    @classmethod
    def noop(cls) -> ServiceMetrics:
        """Instruments that record nothing (metrics off, or tests that do not care)."""
        return cls(NoOpMeter("nanovl"))

    @property
    def meter_provider(self) -> MeterProvider | None:
        return self._provider

    @property
    def prometheus_port(self) -> int | None:
        """The port /metrics (and /ready, /live) is served on (None when off)."""
        return self._http.port if self._http is not None else None

    def set_probes(self, *, ready: Probe, live: Probe) -> None:
        """What the HTTP endpoint's ``/ready`` and ``/live`` answer (no-op when it is off)."""
        if self._http is not None:
            self._http.probes.ready = ready
            self._http.probes.live = live

    def set_load_source(self, source: LoadSource | None) -> None:
        """Callable read at every collection for the ``nanovl.requests.{queued,admitted,
        uploading,admission_limit}`` gauges; cheap and thread-safe. No source: no gauges."""
        self._load_source = source

    def _observe_load(
        self, pick: Callable[[LoadSnapshot], int | None]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            if self._load_source is None:
                return ()
            value = pick(self._load_source())
            return () if value is None else (Observation(value),)

        return callback

    # -- request lifecycle
    def record_request(self, rpc: str, modality: str, status: grpc.StatusCode, duration_s: float | None = None) -> None:
        """One finished RPC; ``duration_s`` also feeds ``nanovl.request.duration``."""
        attrs = {"rpc": rpc, "modality": modality, "grpc_status": status.name}
        self._requests.add(1, attrs)
        if duration_s is not None:
            self._request_duration.record(duration_s, attrs)

    @contextlib.contextmanager
    def in_flight(self, rpc: str) -> Iterator[None]:
        """``with metrics.in_flight("Generate"):`` around serving one RPC."""
        attrs = {"rpc": rpc}
        self._in_flight.add(1, attrs)
        try:
            yield
        finally:
            self._in_flight.add(-1, attrs)

    def observe_ttft(self, seconds: float, *, modality: str) -> None:
        self._ttft.record(seconds, {"modality": modality})

    def observe_inter_token_latency(self, gap_s: float, *, modality: str, tokens: int = 1) -> None:
        """``tokens`` output tokens arrived together ``gap_s`` after the previous ones:
        one sample of ``gap_s / tokens`` per token, so the histogram stays per token when
        vLLM coalesces a busy request's outputs."""
        attrs = self._modality_attrs.get(modality)
        if attrs is None:
            attrs = self._modality_attrs[modality] = {"modality": modality}
        for _ in range(tokens):
            self._itl.record(gap_s / tokens, attrs)

    # -- media
    def add_bytes_received(self, modality: str, num_bytes: int) -> None:
        self._bytes_received.add(num_bytes, {"modality": modality})

    def add_decoder_lost(self, modality: str, reason: str) -> None:
        """A decode worker lost on one item (``service.decode_workers.lost_worker``)."""
        self._decoder_lost.add(1, {"modality": modality, "reason": reason})

    def observe_media_decode(self, modality: str, seconds: float) -> None:
        self._decode_time.record(seconds, {"modality": modality})

    # -- encoder budget
    def set_encoder_budget_source(self, source: EncoderBudgetSource | None) -> None:
        """Callable read at every collection (scrape / export) to feed the encoder gauges;
        it runs on the collecting thread, so it must be thread-safe and cheap. Returning
        None (or no source) leaves the gauges absent."""
        self._budget_source = source
        self._budget_failed = False

    def _observe(
        self, pick: Callable[[EncoderBudgetSnapshot], int]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            source = self._budget_source
            if source is None:
                return ()
            try:
                snapshot = source()
            except Exception:
                # A broken source must not break the whole scrape; log once per source.
                if not self._budget_failed:
                    self._budget_failed = True
                    log.exception("encoder budget source failed; encoder gauges omitted")
                return ()
            return () if snapshot is None else (Observation(pick(snapshot)),)

        return callback

    # -- lifecycle
    def shutdown(self, *, timeout_s: float = 5.0) -> None:
        """Stop the scrape endpoint, push the last OTLP batch, unregister from the registry."""
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._provider is not None:
            self._provider.shutdown(timeout_millis=timeout_s * 1000)
            self._provider = None


# --- setup -------------------------------------------------------------------------------------
def _push_reader(settings: MetricsSettings, name: str) -> MetricReader:
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

    if name == "console":
        return PeriodicExportingMetricReader(ConsoleMetricExporter())
    if settings.otlp.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter(endpoint=settings.otlp.endpoint)
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

        exporter = HttpExporter(endpoint=settings.otlp.url() if settings.otlp.endpoint else None)
    # The interval comes from OTEL_METRIC_EXPORT_INTERVAL (SDK default 60 s).
    return PeriodicExportingMetricReader(exporter)


def setup_metrics(
    settings: MetricsSettings,
    *,
    registry: CollectorRegistry = REGISTRY,
    extra_readers: Sequence[MetricReader] = (),
) -> ServiceMetrics:
    """Build our MeterProvider, start /metrics when asked, return the instruments.

    ``registry`` is the prometheus_client registry served on /metrics (tests pass a private
    one). Raises ``FailedPrecondition`` when the port cannot be bound.
    """
    if settings.sdk_disabled or not (settings.enabled or extra_readers):
        return ServiceMetrics.noop()
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    readers: list[MetricReader] = [_push_reader(settings, name) for name in settings.exporters]
    http: HttpEndpoint | None = None
    if settings.prometheus_port > 0:
        # Scope labels would repeat "nanovl" on every series.
        prometheus = PrometheusMetricReader(scope_info_enabled=False, registry=registry)
        readers.append(prometheus)
        try:
            http = start_http_endpoint(settings.prometheus_host, settings.prometheus_port, registry)
        except OSError as exc:
            prometheus.shutdown()  # unregister, so a retry with another port starts clean
            raise FailedPrecondition(
                f"cannot serve metrics on {settings.prometheus_host}:{settings.prometheus_port} ({exc.strerror}); "
                "choose a free --metrics-port, or 0 to turn the endpoint off"
            ) from exc
    readers.extend(extra_readers)
    provider = MeterProvider(metric_readers=readers, resource=Resource.create({SERVICE_NAME: settings.service_name}))
    log.info(
        "metrics on: /metrics (and /ready, /live) port=%s push=%s service=%s",
        http.port if http else "-",
        ",".join(settings.exporters) or "-",
        settings.service_name,
    )
    return ServiceMetrics(provider.get_meter("nanovl"), provider=provider, http_server=http)
