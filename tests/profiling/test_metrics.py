"""ServiceMetrics: the Prometheus endpoint scraped over HTTP, OTLP push, settings."""

from __future__ import annotations

import argparse
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from nanovl.errors import FailedPrecondition, InvalidArgument
from profiling.telemetry import metrics as metrics_mod
from profiling.telemetry import tracing
from profiling.telemetry.http_endpoint import ProbeResult
from profiling.telemetry.metrics import (
    ITL_BUCKETS,
    TTFT_BUCKETS,
    EncoderBudgetSnapshot,
    LoadSnapshot,
    MetricsSettings,
    ServiceMetrics,
    setup_metrics,
)
from tests.otlp_receiver import OtlpReceiver
from tests.ports import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(autouse=True)
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)


@pytest.fixture
def served() -> Iterator[ServiceMetrics]:
    settings = MetricsSettings.from_env(prometheus_port=free_port(), prometheus_host="127.0.0.1")
    service = setup_metrics(settings, registry=CollectorRegistry())
    yield service
    service.shutdown()


def scrape(service: ServiceMetrics) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{service.prometheus_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def test_prometheus_endpoint_shows_recorded_values(served: ServiceMetrics) -> None:
    for _ in range(3):
        served.record_request("Generate", "image", grpc.StatusCode.OK, duration_s=1.5)
    served.record_request("Generate", "video", grpc.StatusCode.INVALID_ARGUMENT)
    for seconds in (0.04, 0.04, 0.2, 7.0):
        served.observe_ttft(seconds, modality="image")
    for seconds in (0.012, 0.03):
        served.observe_inter_token_latency(seconds, modality="text")
    # Three tokens that arrived together 30 ms after the previous ones: 10 ms each.
    served.observe_inter_token_latency(0.03, modality="text", tokens=3)
    served.add_bytes_received("image", 1000)
    served.add_bytes_received("image", 24)
    served.observe_media_decode("audio", 0.02)
    served.add_decoder_lost("video", "crash")
    with served.in_flight("Generate"), served.in_flight("Generate"):
        during = scrape(served)
    after = scrape(served)

    assert sample(after, "nanovl_requests_total", rpc="Generate", modality="image", grpc_status="OK") == 3
    assert sample(after, "nanovl_requests_total", rpc="Generate", modality="video", grpc_status="INVALID_ARGUMENT") == 1
    ok = {"rpc": "Generate", "modality": "image", "grpc_status": "OK"}
    assert sample(after, "nanovl_request_duration_seconds_count", **ok) == 3
    assert sample(after, "nanovl_request_duration_seconds_sum", **ok) == pytest.approx(4.5)
    # Only requests given a duration are timed.
    timed = {dict(labels)["modality"] for name, labels in after if name == "nanovl_request_duration_seconds_count"}
    assert timed == {"image"}

    ttft = "nanovl_time_to_first_token_seconds"
    assert sample(after, f"{ttft}_count", modality="image") == 4
    assert sample(after, f"{ttft}_sum", modality="image") == pytest.approx(7.28)
    assert sample(after, f"{ttft}_bucket", modality="image", le="0.05") == 2
    assert sample(after, f"{ttft}_bucket", modality="image", le="0.2") == 3
    assert sample(after, f"{ttft}_bucket", modality="image", le="+Inf") == 4
    ttft_bounds = sorted(float(dict(lbl)["le"]) for name, lbl in after if name == f"{ttft}_bucket")
    assert ttft_bounds[:-1] == list(TTFT_BUCKETS)  # our explicit buckets, then +Inf

    itl = "nanovl_inter_token_latency_seconds"
    assert sample(after, f"{itl}_count", modality="text") == 5
    assert sample(after, f"{itl}_sum", modality="text") == pytest.approx(0.072)
    assert sample(after, f"{itl}_bucket", modality="text", le="0.015") == 4
    itl_bounds = sorted(float(dict(lbl)["le"]) for name, lbl in after if name == f"{itl}_bucket")
    assert itl_bounds[:-1] == list(ITL_BUCKETS)

    assert sample(after, "nanovl_media_received_bytes_total", modality="image") == 1024
    assert sample(after, "nanovl_media_decode_duration_seconds_count", modality="audio") == 1
    assert sample(after, "nanovl_media_decoder_lost_total", modality="video", reason="crash") == 1
    assert sample(during, "nanovl_requests_in_flight", rpc="Generate") == 2
    assert sample(after, "nanovl_requests_in_flight", rpc="Generate") == 0

    # Everything we export is namespaced, so vLLM's metrics in the same registry never clash.
    assert {n for n in names(after) if not n.startswith("nanovl_")} == {"target_info"}


def test_encoder_budget_gauges_follow_the_source(served: ServiceMetrics) -> None:
    gauges = {"nanovl_encoder_budget_tokens", "nanovl_encoder_cache_size_tokens", "nanovl_encoder_cache_memory_bytes"}
    served.record_request("Generate", "text", grpc.StatusCode.OK)
    assert not gauges & names(scrape(served))  # no source yet

    snapshots = iter([EncoderBudgetSnapshot(4096, 8192, 3 << 20), EncoderBudgetSnapshot(2048, 8192, 3 << 20)])
    current = next(snapshots)
    served.set_encoder_budget_source(lambda: current)
    first = scrape(served)
    assert sample(first, "nanovl_encoder_budget_tokens") == 4096
    assert sample(first, "nanovl_encoder_cache_size_tokens") == 8192
    assert sample(first, "nanovl_encoder_cache_memory_bytes") == 3 << 20
    current = next(snapshots)
    assert sample(scrape(served), "nanovl_encoder_budget_tokens") == 2048  # read at every scrape

    def broken() -> EncoderBudgetSnapshot:
        raise RuntimeError("profiler not ready")

    served.set_encoder_budget_source(broken)
    failed = scrape(served)  # the scrape itself still succeeds
    assert not gauges & names(failed)
    assert sample(failed, "nanovl_requests_total", rpc="Generate", modality="text", grpc_status="OK") == 1
    served.set_encoder_budget_source(lambda: None)
    assert not gauges & names(scrape(served))


def test_busy_port_is_an_actionable_error_and_a_retry_works() -> None:
    registry = CollectorRegistry()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = MetricsSettings.from_env(prometheus_port=port, prometheus_host="127.0.0.1")
        with pytest.raises(FailedPrecondition, match=f"127.0.0.1:{port}.*--metrics-port"):
            setup_metrics(settings, registry=registry)
    retry = setup_metrics(
        MetricsSettings.from_env(prometheus_port=free_port(), prometheus_host="127.0.0.1"), registry=registry
    )
    try:
        retry.record_request("Generate", "text", grpc.StatusCode.OK)
        assert sample(scrape(retry), "nanovl_requests_total", rpc="Generate", modality="text", grpc_status="OK") == 1
    finally:
        retry.shutdown()


def test_metrics_off_is_a_noop_and_touches_no_registry() -> None:
    registry = CollectorRegistry()
    settings = MetricsSettings.from_env(prometheus_port=0)
    assert not settings.enabled
    service = setup_metrics(settings, registry=registry)
    assert service.meter_provider is None and service.prometheus_port is None
    service.record_request("Generate", "image", grpc.StatusCode.OK, 0.5)
    with service.in_flight("Generate"):
        service.observe_ttft(0.1, modality="image")
    service.shutdown()
    assert list(registry.collect()) == []


def test_otlp_push_reaches_a_receiver() -> None:
    with OtlpReceiver() as receiver:
        settings = MetricsSettings.from_env(prometheus_port=0, exporter="otlp", endpoint=receiver.endpoint)
        assert settings.exporters == ("otlp",)
        service = setup_metrics(settings)
        service.record_request("Generate", "audio", grpc.StatusCode.OK)
        service.record_request("Generate", "audio", grpc.StatusCode.OK)
        service.set_encoder_budget_source(lambda: EncoderBudgetSnapshot(10, 20, 30))
        assert service.meter_provider is not None
        service.meter_provider.force_flush()
        requests = receiver.wait_for_metric("nanovl.requests")
        budget = receiver.wait_for_metric("nanovl.encoder.budget_tokens")
        service.shutdown()
    [point] = requests.points
    assert point.value == 2
    assert dict(point.attributes) == {"rpc": "Generate", "modality": "audio", "grpc_status": "OK"}
    assert requests.service_name == "nanovl"
    assert [p.value for p in budget.points] == [10]


# --- settings ----------------------------------------------------------------------------------
def parse(*argv: str) -> MetricsSettings:
    parser = argparse.ArgumentParser()
    tracing.add_cli_args(parser)
    metrics_mod.add_cli_args(parser)
    return MetricsSettings.from_args(parser.parse_args(list(argv)))


def test_settings_defaults_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    default = parse()
    assert (default.prometheus_port, default.prometheus_host, default.exporters) == (9464, "127.0.0.1", ())
    monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_PORT", "9100")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus")  # the scrape endpoint, not a push exporter
    env = parse()
    assert (env.prometheus_port, env.exporters) == (9100, ())
    # The shared --otel-endpoint alone does not push metrics: /metrics already serves them.
    assert parse("--otel-endpoint", "collector:4317").exporters == ()
    flags = parse(
        "--metrics-port",
        "0",
        "--otel-endpoint",
        "collector:4317",
        "--otel-metrics-exporter",
        "otlp",
        "--otel-service-name",
        "edge",
    )
    assert flags.prometheus_port == 0
    assert flags.exporters == ("otlp",)
    assert flags.otlp.endpoint == "http://collector:4317"  # shared with tracing's --otel-endpoint
    assert flags.service_name == "edge"
    assert flags.enabled


def test_metrics_endpoint_alone_turns_on_otlp_push(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://collector:4318/v1/metrics")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf")
    settings = parse("--metrics-port", "0")
    assert settings.exporters == ("otlp",)
    assert settings.otlp.protocol == "http/protobuf"
    assert settings.otlp.url() == "http://collector:4318/v1/metrics"


@pytest.mark.parametrize(
    ("env", "argv", "match"),
    [
        ({"OTEL_METRICS_EXPORTER": "statsd"}, (), "statsd"),
        ({"OTEL_EXPORTER_PROMETHEUS_PORT": "http"}, (), "not a port"),
        ({}, ("--metrics-port", "70000"), "0 \\(off\\)"),
    ],
)
def test_bad_settings_raise(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], argv: tuple[str, ...], match: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(InvalidArgument, match=match):
        parse(*argv)


def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_ready_and_live_answer_what_the_server_says(served: ServiceMetrics) -> None:
    port = served.prometheus_port
    assert port is not None
    # Before the server sets its probes: the process is up, the engine is not.
    assert http_get(port, "/ready") == (503, "starting\n")
    assert http_get(port, "/live") == (200, "live\n")
    state = {"ready": ProbeResult(True, "ready"), "live": ProbeResult(True, "live")}
    served.set_probes(ready=lambda: state["ready"], live=lambda: state["live"])
    assert http_get(port, "/ready") == (200, "ready\n")
    assert http_get(port, "/ready/") == (200, "ready\n")
    assert http_get(port, "/ready", "HEAD") == (200, "")
    state["ready"] = ProbeResult(False, "draining (readiness withdrawn)")
    assert http_get(port, "/ready") == (503, "draining (readiness withdrawn)\n")
    assert http_get(port, "/live") == (200, "live\n")  # readiness and liveness are apart
    state["live"] = ProbeResult(False, "the engine died")
    assert http_get(port, "/live") == (503, "the engine died\n")

    def broken() -> ProbeResult:
        raise RuntimeError("boom")

    served.set_probes(ready=broken, live=broken)
    assert http_get(port, "/ready") == (503, "probe failed: RuntimeError: boom\n")
    # /metrics is still the Prometheus endpoint.
    served.record_request("Generate", "text", grpc.StatusCode.OK)
    status, text = http_get(port, "/metrics")
    assert status == 200 and 'nanovl_requests_total{grpc_status="OK",modality="text",rpc="Generate"} 1.0' in text


def test_load_gauges_follow_the_source(served: ServiceMetrics) -> None:
    gauges = {
        "nanovl_requests_queued",
        "nanovl_requests_admitted",
        "nanovl_requests_uploading",
        "nanovl_requests_admission_limit",
    }
    assert not gauges & names(scrape(served))  # no source: no series
    load = LoadSnapshot(admitted=5, queued=2, uploading=1, admission_limit=512)
    served.set_load_source(lambda: load)
    samples = scrape(served)
    assert sample(samples, "nanovl_requests_queued") == 2
    assert sample(samples, "nanovl_requests_admitted") == 5
    assert sample(samples, "nanovl_requests_uploading") == 1
    assert sample(samples, "nanovl_requests_admission_limit") == 512
    load = LoadSnapshot(admitted=0, queued=0, uploading=0, admission_limit=None)
    samples = scrape(served)  # read at every scrape; no limit: no limit series
    assert sample(samples, "nanovl_requests_queued") == 0
    assert "nanovl_requests_admission_limit" not in names(samples)
