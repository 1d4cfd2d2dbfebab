"""Assembles the ``grpc.aio`` server: Inference + Profiling services, standard health
checking and reflection, OpenTelemetry interceptors, and graceful draining."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from model.prompt import ChatRenderer
from nanovl.v1 import inference_pb2, inference_pb2_grpc, profiling_pb2, profiling_pb2_grpc
from profiling.telemetry.metrics import ServiceMetrics
from profiling.telemetry.tracing import get_tracer, server_interceptors
from service.engine import Engine
from service.inference_servicer import InferenceServicer
from service.lifecycle import DRAINING, SERVING, STOPPED, Lifecycle
from service.malformed import rejecting_malformed
from service.settings import ServerSettings

log = logging.getLogger(__name__)

INFERENCE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
PROFILING = profiling_pb2.DESCRIPTOR.services_by_name["Profiling"].full_name
READINESS_SERVICES = (INFERENCE, PROFILING)
ENGINE_HEALTH_INTERVAL_S = 5.0


@dataclass
class NanovlServer:
    engine: Engine
    settings: ServerSettings
    server: grpc.aio.Server
    port: int
    lifecycle: Lifecycle
    health: health.aio.HealthServicer
    inference: InferenceServicer
    _watch: asyncio.Task | None = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return f"{self.settings.host}:{self.port}"

    async def _set_health(self, state: str) -> None:
        ready = state == SERVING and not self.engine.is_dead
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in READINESS_SERVICES:
            await self.health.set(name, status)
        # "" is liveness: the process is healthy unless its engine died.
        alive = not self.engine.is_dead and state != STOPPED
        await self.health.set(
            "", health_pb2.HealthCheckResponse.SERVING if alive else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def set_state(self, state: str) -> None:
        self.lifecycle.set_state(state)
        await self._set_health(state)

    async def mark_serving(self) -> None:
        await self.set_state(SERVING)
        self._watch = asyncio.create_task(self._watch_engine())

    async def _watch_engine(self) -> None:
        """Turns health NOT_SERVING as soon as the engine dies, so load balancers stop routing here."""
        while self.lifecycle.state in (SERVING, DRAINING):
            if not await self.engine.check_health():
                log.error("the inference engine is dead; reporting NOT_SERVING")
                await self._set_health(self.lifecycle.state)
                return
            await asyncio.sleep(ENGINE_HEALTH_INTERVAL_S)

    async def drain_and_stop(self, grace_s: float | None = None) -> bool:
        """SIGTERM path: NOT_SERVING, refuse new calls, let in-flight calls finish, stop."""
        grace = self.settings.drain_grace_s if grace_s is None else grace_s
        await self.set_state(DRAINING)
        log.info("draining: %d request(s) in flight, grace %.0fs", self.lifecycle.in_flight, grace)
        clean = await self.lifecycle.wait_idle(grace)
        await self.stop(grace=0)
        return clean

    async def stop(self, grace: float | None = 0) -> None:
        await self.set_state(STOPPED)
        if self._watch is not None:
            self._watch.cancel()
        await self.server.stop(grace)
        self.inference.close()


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
        # A stream can be silent for long stretches: queued behind max_num_seqs, a long
        # video prefill, a client pausing its upload. gRPC Core's defaults count every
        # client keepalive PING in such a stretch as a strike and, after two, send
        # GOAWAY(too_many_pings), failing every call on that connection. Accept pings
        # (as vLLM's own gRPC server does) instead of killing accepted requests.
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


async def build_server(
    engine: Engine,
    settings: ServerSettings,
    *,
    tracer_provider=None,
    metrics: ServiceMetrics | None = None,
    profiling_servicer: profiling_pb2_grpc.ProfilingServicer | None = None,
) -> NanovlServer:
    """Build and start listening (readiness NOT_SERVING until ``mark_serving``)."""
    server = grpc.aio.server(
        interceptors=rejecting_malformed(server_interceptors(tracer_provider)), options=server_options(settings)
    )
    lifecycle = Lifecycle()
    health_servicer = health.aio.HealthServicer()
    try:
        chat = ChatRenderer(engine.summary.model)
    except ValueError:
        chat = None  # checkpoint without a chat template: raw parts only
    inference = InferenceServicer(
        engine,
        settings,
        lifecycle=lifecycle,
        tracer=get_tracer(tracer_provider),
        metrics=metrics or ServiceMetrics.noop(),
        chat=chat,
    )
    inference_pb2_grpc.add_InferenceServicer_to_server(inference, server)
    services = [INFERENCE, health.SERVICE_NAME, reflection.SERVICE_NAME]
    if profiling_servicer is not None:
        profiling_pb2_grpc.add_ProfilingServicer_to_server(profiling_servicer, server)
        services.insert(1, PROFILING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(services, server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise OSError(f"cannot listen on {settings.host}:{settings.port}")
    nanovl = NanovlServer(engine, settings, server, port, lifecycle, health_servicer, inference)
    await nanovl._set_health(lifecycle.state)
    await server.start()
    log.info("listening on %s:%d", settings.host, port)
    return nanovl
