"""The plain-HTTP endpoint beside the gRPC ports (``--metrics-host:--metrics-port``).

- ``GET /metrics`` (and any other path): the Prometheus text format of a ``prometheus_client``
  registry (``prometheus_client.make_wsgi_app``: gzip, ``name[]`` filters);
- ``GET /ready``: ``200 ready`` or ``503 <reason>``, readiness: what gRPC health reports for
  ``nanovl.v1.Inference``;
- ``GET /live``: ``200 live`` or ``503 <reason>``, liveness: what gRPC health reports for ``""``.

``/ready`` and ``/live`` exist for what cannot speak ``grpc.health.v1``: HAProxy's
``option httpchk`` (2.6 has no gRPC health check), nginx, cloud load balancers' HTTP checks,
Kubernetes ``httpGet`` probes. ``HEAD`` works too. Until the server sets its probes, ``/ready``
answers ``503 starting`` and ``/live`` ``200 starting`` (the process is up; the engine loads).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

READY_PATH = "/ready"
LIVE_PATH = "/live"


@dataclass(frozen=True)
class ProbeResult:
    """One probe's answer: ``ok`` → HTTP 200, else 503; ``detail`` is the one-line body."""

    ok: bool
    detail: str


Probe = Callable[[], ProbeResult]

_STARTING_READY = ProbeResult(False, "starting")
_STARTING_LIVE = ProbeResult(True, "starting")


class Probes:
    """The probes the endpoint answers with; replaced by the server once it exists. Read on
    the HTTP thread: a probe must be cheap and thread-safe (reading a few attributes is)."""

    def __init__(self) -> None:
        self.ready: Probe = lambda: _STARTING_READY
        self.live: Probe = lambda: _STARTING_LIVE


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _IPv6ThreadingServer(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # a scrape or probe every second would flood the log


def _app(registry: CollectorRegistry, probes: Probes) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "").rstrip("/")
        if path == READY_PATH:
            name, probe = "ready", probes.ready
        elif path == LIVE_PATH:
            name, probe = "live", probes.live
        else:
            return metrics(environ, start_response)
        try:
            result = probe()
        except Exception as exc:  # a broken probe says so, and is not healthy
            result = ProbeResult(False, f"probe failed: {type(exc).__name__}: {exc}")
        status = "200 OK" if result.ok else "503 Service Unavailable"
        data = f"{name if result.ok else result.detail}\n".encode()
        start_response(
            status,
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(data))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [data]

    return app


@dataclass
class HttpEndpoint:
    """A running endpoint: ``port`` is the bound one (useful with port 0)."""

    server: WSGIServer
    thread: threading.Thread
    port: int
    probes: Probes

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_http_endpoint(host: str, port: int, registry: CollectorRegistry) -> HttpEndpoint:
    """Serve ``/metrics``, ``/ready``, ``/live`` on ``host:port`` from a daemon thread.
    Raises ``OSError`` when the address cannot be bound."""
    server_cls = _IPv6ThreadingServer if ":" in host.strip("[]") else _ThreadingServer
    probes = Probes()
    server = make_server(host.strip("[]"), port, _app(registry, probes), server_cls, _QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="nanovl-http", daemon=True)
    thread.start()
    return HttpEndpoint(server, thread, int(server.server_port), probes)
