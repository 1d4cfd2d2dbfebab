"""A real OTLP/gRPC receiver (traces + metrics) for tests.

It implements the collector's ``TraceService`` / ``MetricsService`` on 127.0.0.1 with a
free port, in its own gRPC thread pool (so it works from sync tests and from inside an
event loop alike), and keeps what it receives as plain frozen dataclasses.

    with OtlpReceiver() as receiver:
        settings = TracingSettings.from_env(endpoint=receiver.endpoint)
        ...
        spans = receiver.wait_for_spans("engine.generate")
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    if kind == "kvlist_value":
        return _attributes(v.kvlist_value.values)
    return getattr(v, kind) if kind else None


def _attributes(kvs: Any) -> Mapping[str, Any]:
    return MappingProxyType({kv.key: _value(kv.value) for kv in kvs})


def _service_name(resource_attrs: list[KeyValue]) -> str:
    return str(_attributes(resource_attrs).get("service.name", ""))


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind
    attributes: Mapping[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    events: tuple[str, ...]
    start_ns: int
    end_ns: int
    service_name: str


@dataclass(frozen=True)
class ReceivedPoint:
    attributes: Mapping[str, Any]
    value: float  # sum/gauge value; for a histogram its sum
    count: int | None  # histogram count, else None


@dataclass(frozen=True)
class ReceivedMetric:
    name: str
    unit: str
    points: tuple[ReceivedPoint, ...]
    service_name: str


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: OtlpReceiver) -> None:
        self._sink = sink

    def Export(self, request: Any, context: Any) -> Any:
        spans = []
        for rs in request.resource_spans:
            service = _service_name(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(
                        ReceivedSpan(
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            kind=s.kind,
                            attributes=_attributes(s.attributes),
                            status_code=s.status.code,
                            status_message=s.status.message,
                            events=tuple(e.name for e in s.events),
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            service_name=service,
                        )
                    )
        self._sink._add(spans=spans)
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, sink: OtlpReceiver) -> None:
        self._sink = sink

    def Export(self, request: Any, context: Any) -> Any:
        metrics = []
        for rm in request.resource_metrics:
            service = _service_name(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    points = []
                    for p in getattr(m, kind).data_points:
                        if kind == "histogram":
                            points.append(ReceivedPoint(_attributes(p.attributes), p.sum, p.count))
                        else:
                            value = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
                            points.append(ReceivedPoint(_attributes(p.attributes), float(value), None))
                    metrics.append(ReceivedMetric(m.name, m.unit, tuple(points), service))
        self._sink._add(metrics=metrics)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpReceiver:
    """OTLP/gRPC receiver on 127.0.0.1:<free port>. Use as a context manager."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._spans: list[ReceivedSpan] = []
        self._metrics: list[ReceivedMetric] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        """For ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``--otel-endpoint`` (protocol grpc)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _add(self, *, spans: Sequence[ReceivedSpan] = (), metrics: Sequence[ReceivedMetric] = ()) -> None:
        with self._cond:
            self._spans.extend(spans)
            self._metrics.extend(metrics)
            self._cond.notify_all()

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._cond:
            return list(self._spans)

    @property
    def metrics(self) -> list[ReceivedMetric]:
        with self._cond:
            return list(self._metrics)

    def wait_for_spans(self, name: str, count: int = 1, timeout_s: float = 10.0) -> list[ReceivedSpan]:
        """Block until ``count`` spans called ``name`` arrived; return them.

        Raises ``TimeoutError`` listing what did arrive."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                found = [s for s in self._spans if s.name == name]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{len(found)}/{count} spans named {name!r} after {timeout_s} s; "
                        f"received: {sorted({s.name for s in self._spans})}"
                    )
                self._cond.wait(left)

    async def wait_for_spans_async(self, name: str, count: int = 1, timeout_s: float = 10.0) -> list[ReceivedSpan]:
        return await asyncio.to_thread(self.wait_for_spans, name, count, timeout_s)

    def wait_for_metric(self, name: str, timeout_s: float = 10.0) -> ReceivedMetric:
        """The latest export of metric ``name``; ``TimeoutError`` if none arrives."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                found = [m for m in self._metrics if m.name == name]
                if found:
                    return found[-1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no metric {name!r} after {timeout_s} s; received: {sorted({m.name for m in self._metrics})}"
                    )
                self._cond.wait(left)
