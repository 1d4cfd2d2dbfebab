"""Assembles the ``grpc.aio`` servers: Inference (the inference port) and, on an admin port
bound to loopback by default, the operator surface (Profiling); standard health checking and
reflection on both, TLS/mTLS and bearer tokens (``service.tls``, ``service.auth``),
OpenTelemetry interceptors, and graceful draining."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from model.prompt import ChatRenderer
from nanovl.errors import InvalidArgument
from nanovl.v1 import inference_pb2, inference_pb2_grpc, profiling_pb2, profiling_pb2_grpc
from profiling.telemetry.http_endpoint import ProbeResult
from profiling.telemetry.metrics import LoadSnapshot, ServiceMetrics
from profiling.telemetry.tracing import get_tracer, server_interceptors
from service.auth import TOKEN_ENV, Authenticator, AuthInterceptor, Role, TokenSet, load_token_sets
from service.engine import Engine
from service.grpc_standard import (
    REFLECTION_V1,
    REFLECTION_V1ALPHA,
    HealthServicer,
    enable_reflection,
    serve_unimplemented,
)
from service.inference_servicer import InferenceServicer
from service.lifecycle import DRAINING, SERVING, STOPPED, Lifecycle
from service.listen import listen
from service.malformed import HEALTH_REQUEST_BYTES, Precheck, rejecting_malformed, size_limit
from service.settings import ServerSettings

log = logging.getLogger(__name__)

INFERENCE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
PROFILING = profiling_pb2.DESCRIPTOR.services_by_name["Profiling"].full_name
READINESS_SERVICES = (INFERENCE, PROFILING)
# How often the engine's state is read (a cheap property) and its health RPC made.
ENGINE_DEATH_POLL_S = 0.5
# Every reflection service (v1alpha, v1): one auth rule covers them all.
REFLECTION_RULE = "grpc.reflection.*"
ENGINE_HEALTH_INTERVAL_S = 5.0
# After a drain cut its calls, how long gRPC may take to send their statuses before it stops.
CUT_STATUS_GRACE_S = 1.0


@dataclass
class NanovlServer:
    engine: Engine
    settings: ServerSettings
    server: grpc.aio.Server
    port: int
    lifecycle: Lifecycle
    health: health.aio.HealthServicer
    inference: InferenceServicer
    # The operator surface (Profiling) on its own port; None when --admin-port is not given.
    admin: grpc.aio.Server | None = None
    admin_port: int | None = None
    # Plaintext health only (``settings.health_port``), for probes.
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None
    _watch: asyncio.Task | None = field(default=None, repr=False)
    _health_update: asyncio.Task | None = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return f"{self.settings.host}:{self.port}"

    @property
    def engine_died(self) -> asyncio.Event:
        """Set when the engine died: the process should exit (non-zero) so its supervisor restarts it."""
        return self.lifecycle.engine_dead

    def listening(self) -> dict[str, tuple[grpc.aio.Server, str]]:
        """Every gRPC server this process serves, by role ("inference", "admin", "health"),
        with its ``host:port`` target."""
        out = {"inference": (self.server, self.target)}
        if self.admin is not None and self.admin_target is not None:
            out["admin"] = (self.admin, self.admin_target)
        if self.health_server is not None:
            out["health"] = (self.health_server, f"{self.settings.host}:{self.health_port}")
        return out

    @property
    def admin_target(self) -> str | None:
        return None if self.admin_port is None else f"{self.settings.admin_host}:{self.admin_port}"

    def readiness(self) -> ProbeResult:
        """Serving, engine alive, readiness not withdrawn (drain), and a free admission slot
        (a full server asks balancers to route elsewhere instead of answering
        RESOURCE_EXHAUSTED). gRPC health's readiness services and HTTP ``/ready`` report it;
        safe to call from any thread."""
        reason = "the engine died" if self.engine.is_dead else self.lifecycle.not_ready_reason
        return ProbeResult(reason is None, reason or "ready")

    def liveness(self) -> ProbeResult:
        """``""`` in gRPC health and HTTP ``/live``: healthy unless the engine died (then the
        process exits so its supervisor restarts it) or the server stopped."""
        if self.engine.is_dead or self.lifecycle.engine_dead.is_set():
            return ProbeResult(False, "the engine died")
        if self.lifecycle.state == STOPPED:
            return ProbeResult(False, "stopped")
        return ProbeResult(True, "live")

    def load(self) -> LoadSnapshot:
        lc = self.lifecycle
        return LoadSnapshot(lc.admitted, lc.queued, lc.uploading, lc.max_admitted)

    async def _set_health(self) -> None:
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        status = serving if self.readiness().ok else not_serving
        for name in READINESS_SERVICES:
            await self.health.set(name, status)
        await self.health.set("", serving if self.liveness().ok else not_serving)

    def health_changed(self) -> asyncio.Task:
        """Lifecycle callback (synchronous): refresh the health statuses soon, in order;
        returns the update (``Lifecycle.settled`` awaits it)."""
        previous = self._health_update

        async def update() -> None:
            if previous is not None:
                await asyncio.shield(previous)
            await self._set_health()

        self._health_update = asyncio.get_running_loop().create_task(update())
        return self._health_update

    async def set_state(self, state: str) -> None:
        self.lifecycle.set_state(state)
        await self._set_health()

    async def mark_serving(self) -> None:
        await self.set_state(SERVING)
        self._watch = asyncio.create_task(self._watch_engine())

    async def _watch_engine(self) -> None:
        """Notices the engine's death within ENGINE_DEATH_POLL_S: health NOT_SERVING,
        uploads in progress fail UNAVAILABLE at once, and ``engine_died`` tells the
        process to exit so its supervisor restarts it."""
        loop = asyncio.get_running_loop()
        next_rpc = loop.time() + ENGINE_HEALTH_INTERVAL_S
        while self.lifecycle.state in (SERVING, DRAINING):
            dead = self.engine.is_dead
            if not dead and loop.time() >= next_rpc:
                dead = not await self.engine.check_health()
                next_rpc = loop.time() + ENGINE_HEALTH_INTERVAL_S
            if dead:
                log.error("the inference engine is dead; reporting NOT_SERVING and failing in-flight calls")
                self.lifecycle.mark_engine_dead()
                await self._set_health()
                return
            await asyncio.sleep(ENGINE_DEATH_POLL_S)

    async def withdraw_readiness(self) -> None:
        """Readiness NOT_SERVING (gRPC health, ``/ready``) while calls are still served: the
        first step of a drain, and what SIGUSR1 does on its own (a Kubernetes preStop hook)."""
        if self.lifecycle.withdraw():
            await self._set_health()
            log.info("readiness withdrawn (NOT_SERVING); calls are still accepted until the drain refuses them")

    async def drain_and_stop(self, grace_s: float | None = None, *, readiness_grace_s: float | None = None) -> bool:
        """SIGTERM path: readiness NOT_SERVING at once; calls still accepted until
        ``readiness_grace_s`` (default ``settings.drain_readiness_grace_s``) after readiness was
        withdrawn, so balancers take this replica out before it refuses anything; then new calls
        get UNAVAILABLE, in-flight calls finish within ``grace_s`` (``settings.drain_grace_s``),
        and the server stops. True if every call finished in time."""
        grace = self.settings.drain_grace_s if grace_s is None else grace_s
        readiness_grace = self.settings.drain_readiness_grace_s if readiness_grace_s is None else readiness_grace_s
        await self.withdraw_readiness()
        assert self.lifecycle.withdrawn_at is not None
        loop = asyncio.get_running_loop()
        if (wait := self.lifecycle.withdrawn_at + readiness_grace - loop.time()) > 0:
            log.info("draining: still accepting calls for %.1fs while balancers see NOT_SERVING", wait)
            await asyncio.sleep(wait)
        await self.set_state(DRAINING)
        log.info("draining: new calls refused; %d request(s) in flight, grace %.0fs", self.lifecycle.in_flight, grace)
        clean = await self.lifecycle.wait_idle(grace)
        if not clean:
            log.warning("drain grace of %.0fs ran out: cutting %d call(s)", grace, self.lifecycle.in_flight)
            await self.lifecycle.cut(
                f"the server stopped (shutdown; its drain grace of {grace:g} s ran out) before this call "
                "finished; retry it on another replica"
            )
        # The cut calls' statuses are on their way out: gRPC's grace lets them go (a grace
        # of 0 would replace them with its own "Cancelling all calls").
        await self.stop(grace=0 if clean else CUT_STATUS_GRACE_S)
        return clean

    async def stop(self, grace: float | None = 0) -> None:
        await self.set_state(STOPPED)
        if self._watch is not None:
            self._watch.cancel()
        await self.server.stop(grace)
        for extra in (self.admin, self.health_server):
            if extra is not None:
                await extra.stop(0)  # health watches and operator calls: nothing to finish
        self.inference.close()


# PlanBudget and RunDummyProfile list media items (up to 1024 a modality, each with its
# frame indices or times: profiling.request_bounds), more than service.malformed's
# SMALL_REQUEST_BYTES allows; 1 MiB holds 1024 videos of 40 frame indices each and parses
# in milliseconds.
PROFILING_REQUEST_BYTES = 1 << 20


def _profiling_prechecks() -> dict[str, Precheck]:
    """The larger Profiling requests' size limit, by method path (the others: the
    malformed-request interceptor's ``SMALL_REQUEST_BYTES``)."""
    name = profiling_pb2.DESCRIPTOR.services_by_name["Profiling"].full_name
    paths = (f"/{name}/{method}" for method in ("PlanBudget", "RunDummyProfile"))
    return {path: size_limit(path, PROFILING_REQUEST_BYTES) for path in paths}


def server_options(settings: ServerSettings, max_receive_bytes: int | None = None) -> list[tuple[str, int]]:
    """``max_receive_bytes``: a smaller receive limit than ``--max-message-bytes`` (the
    health-only port's), so gRPC refuses a larger message before reading it all."""
    return [
        ("grpc.max_receive_message_length", max_receive_bytes or settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", int(settings.reuse_port)),
        # A stream can be silent for long stretches: queued behind max_num_seqs, a long
        # video prefill, a client pausing its upload. gRPC Core's defaults count every
        # client keepalive PING in such a stretch as a strike and, after two, send
        # GOAWAY(too_many_pings), failing every call on that connection. Accept pings
        # (as vLLM's own gRPC server does) instead of killing accepted requests.
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as ``--host`` / ``--admin-host`` take it) reaches only this machine."""
    if host.startswith("unix:") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(settings: ServerSettings, token_sets: dict[Role, TokenSet], *, warn: bool = True) -> None:
    """Refuses to serve the operator surface beyond loopback without operator tokens, and warns
    about an inference port open to the network without TLS or tokens."""
    admin_env = TOKEN_ENV["admin"]
    if "admin" not in token_sets:
        if settings.admin_port is not None and not is_loopback(settings.admin_host):
            raise InvalidArgument(
                f"--admin-host {settings.admin_host} is reachable from other machines: the operator surface "
                f"needs operator tokens there (--admin-token-file or {admin_env}), or bind it to 127.0.0.1"
            )
        if settings.profiling_on_inference_port and not is_loopback(settings.host):
            raise InvalidArgument(
                f"--profiling-on-inference-port with --host {settings.host}: the operator surface needs operator "
                f"tokens (--admin-token-file or {admin_env}); better, serve it on --admin-port instead"
            )
    if warn and not is_loopback(settings.host):
        if settings.tls is None:
            log.warning("the inference port %s is plaintext: use --tls-cert-file/--tls-key-file", settings.host)
        if "inference" not in token_sets:
            log.warning(
                "the inference port %s accepts anyone: use --inference-token-file or %s",
                settings.host,
                TOKEN_ENV["inference"],
            )


def _grpc_server(
    settings: ServerSettings,
    interceptors: list[grpc.aio.ServerInterceptor] | None = None,
    prechecks: Mapping[str, Precheck] | None = None,
    max_receive_bytes: int | None = None,
) -> grpc.aio.Server:
    """Every gRPC server nanovl builds (inference, admin, health-only port) comes from here:
    undecodable request bytes are refused first, with INVALID_ARGUMENT naming the message
    type and no traceback (``service.malformed``), whatever else the server serves;
    ``prechecks`` see a method's request bytes before they are parsed (a method without
    one is held to a small size, ``service.malformed.SMALL_REQUEST_BYTES``)."""
    return grpc.aio.server(
        interceptors=rejecting_malformed(interceptors or (), prechecks),
        options=server_options(settings, max_receive_bytes),
    )


def _interceptors(
    tracer_provider, token_sets: dict[Role, TokenSet], rules: dict[str, frozenset[Role]], surface: str
) -> list[grpc.aio.ServerInterceptor]:
    # Tracing first (after _grpc_server's malformed-request check), so calls refused by
    # auth still appear as spans with their status.
    interceptors = list(server_interceptors(tracer_provider))
    if token_sets:
        interceptors.append(AuthInterceptor(Authenticator(rules, token_sets), surface=surface))
    return interceptors


async def build_server(
    engine: Engine,
    settings: ServerSettings,
    *,
    tracer_provider=None,
    metrics: ServiceMetrics | None = None,
    profiling_servicer: profiling_pb2_grpc.ProfilingServicer | None = None,
) -> NanovlServer:
    """Build and start listening (readiness NOT_SERVING until ``mark_serving``).

    ``profiling_servicer`` is served on the admin port (``settings.admin_port``), and on the
    inference port only with ``settings.profiling_on_inference_port``; otherwise nowhere."""
    token_sets = load_token_sets(settings.auth)
    check_exposure(settings, token_sets)
    any_token: frozenset[Role] = frozenset({"inference", "admin"})
    admin_only: frozenset[Role] = frozenset({"admin"})
    on_inference_port = profiling_servicer is not None and settings.profiling_on_inference_port
    rules: dict[str, frozenset[Role]] = {INFERENCE: frozenset({"inference"})}
    if on_inference_port:
        rules[PROFILING] = admin_only
    if settings.auth.reflection_requires_token:
        rules[REFLECTION_RULE] = any_token
    lifecycle = Lifecycle(
        max_admitted=settings.max_concurrent_requests,
        max_uploading=settings.max_concurrent_uploads,
        max_uploading_per_peer=settings.max_uploads_per_peer,
    )
    health_servicer = HealthServicer()
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
    prechecks = inference.prechecks() | (_profiling_prechecks() if on_inference_port else {})
    server = _grpc_server(settings, _interceptors(tracer_provider, token_sets, rules, "inference"), prechecks)
    inference_pb2_grpc.add_InferenceServicer_to_server(inference, server)
    services = [INFERENCE, health.SERVICE_NAME]
    if on_inference_port:
        profiling_pb2_grpc.add_ProfilingServicer_to_server(profiling_servicer, server)
        services.insert(1, PROFILING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(services, server)  # v1 and v1alpha
    serve_unimplemented(server, [*services, REFLECTION_V1, REFLECTION_V1ALPHA])
    port = listen(server, f"{settings.host}:{settings.port}", "--port", settings.tls)

    admin, admin_port = None, None
    if settings.admin_port is not None:
        admin_rules: dict[str, frozenset[Role]] = {PROFILING: admin_only}
        if settings.auth.reflection_requires_token:
            admin_rules[REFLECTION_RULE] = admin_only
        admin = _grpc_server(
            settings, _interceptors(tracer_provider, token_sets, admin_rules, "admin"), _profiling_prechecks()
        )
        admin_services = [health.SERVICE_NAME]
        if profiling_servicer is not None:
            profiling_pb2_grpc.add_ProfilingServicer_to_server(profiling_servicer, admin)
            admin_services.insert(0, PROFILING)
        # One health servicer, so both ports report the same states.
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, admin)
        enable_reflection(admin_services, admin)
        serve_unimplemented(admin, [*admin_services, REFLECTION_V1, REFLECTION_V1ALPHA])
        admin_port = listen(admin, f"{settings.admin_host}:{settings.admin_port}", "--admin-port", settings.tls)
    elif profiling_servicer is not None and not on_inference_port:
        log.info("the Profiling service is not served: pass --admin-port to serve it to operators")

    health_server, health_port = None, None
    if settings.health_port is not None:
        # Kubernetes' gRPC probes speak neither TLS nor metadata; this port says only
        # SERVING / NOT_SERVING, so it needs neither.
        # Plaintext and unauthenticated: gRPC refuses a message over a health check's size
        # before reading it (verify-10d F3: 4 x 60 MB checks stalled health 2.9 s).
        health_server = _grpc_server(settings, max_receive_bytes=HEALTH_REQUEST_BYTES)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        serve_unimplemented(health_server, [f"{health.SERVICE_NAME} only (reflection is on --port)"])
        health_port = listen(health_server, f"{settings.host}:{settings.health_port}", "--health-port")

    nanovl = NanovlServer(
        engine,
        settings,
        server,
        port,
        lifecycle,
        health_servicer,
        inference,
        admin,
        admin_port,
        health_server,
        health_port,
    )
    lifecycle.on_change = nanovl.health_changed
    if metrics is not None:
        # /ready, /live and the load gauges of the HTTP endpoint (--metrics-port).
        metrics.set_probes(ready=nanovl.readiness, live=nanovl.liveness)
        metrics.set_load_source(nanovl.load)
    await nanovl._set_health()
    await inference.start()
    await server.start()
    for extra, name, at in ((admin, "admin (operator)", nanovl.admin_target), (health_server, "health", health_port)):
        if extra is not None:
            await extra.start()
            log.info("%s port listening on %s", name, at)
    log.info(
        "listening on %s:%d (%s%s)",
        settings.host,
        port,
        "plaintext" if settings.tls is None else ("mTLS" if settings.tls.mutual else "TLS"),
        ", tokens: " + "+".join(sorted(token_sets)) if token_sets else ", no tokens",
    )
    return nanovl
