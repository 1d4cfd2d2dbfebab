"""``nanovl serve --frontend-processes N``: N gRPC server processes over one engine core.

One Python process streaming every token of every request caps a server (gRPC, protobuf,
detokenisation and the event loop all run on one core). vLLM's answer is several API-server
processes in front of one engine core (``vllm serve --api-server-count``,
``vllm/entrypoints/cli/serve.py::run_multi_api_server``); this module is the same pattern,
built from the same vLLM pieces rather than a copy of them:

- this (parent) process binds the engine's ZMQ listeners (``bind_engine_zmq_listeners``),
  starts the engine core (``launch_core_engines``) and the N frontends
  (``APIServerProcessManager`` with :func:`frontend_main` as each process's entry point);
- each frontend is a whole ``nanovl serve`` (gRPC server, admission, drain, tracing,
  metrics) whose ``AsyncLLM`` is a client of that engine core
  (``Engine.start(client_config=…)``), and all of them listen on ``--port`` with
  SO_REUSEPORT, so the kernel spreads connections over them;
- frontend 0 also serves the admin (Profiling) and health ports; frontend *i* serves
  /metrics on ``--metrics-port`` + *i* (one scrape target per process, told apart by
  Prometheus' ``instance`` label);
- SIGTERM/SIGINT here is passed to every frontend, each drains its own calls; the exit
  status is the worst of theirs (4 engine died > 3 drain cut calls > 1 a frontend failed > 0).
  A frontend that exits on its own (the engine died, or it crashed) stops the others.
  After a ``kill -9`` of this process the frontends and the engine processes stop by
  themselves (``service.server_watch``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.settings import ServerSettings

log = logging.getLogger("nanovl.serve")

EXIT_FRONTEND_FAILED = 1
# After the drain grace, how long a frontend may take to stop before it is killed.
STOP_MARGIN_S = 30.0


@dataclass(frozen=True)
class FrontendRole:
    """This process's place among ``count`` frontends: what differs from a lone ``nanovl serve``."""

    index: int
    count: int
    # vLLM's per-API-server connection data (ZMQ addresses, client_count, client_index).
    client_config: Mapping[str, Any]
    ready_queue: Any  # a spawn-context multiprocessing.Queue: frontend index, once serving

    def settings(self, settings: ServerSettings) -> ServerSettings:
        """Every frontend shares the inference port; only frontend 0 serves the admin and health ports."""
        if self.index == 0:
            return replace(settings, reuse_port=True)
        return replace(settings, reuse_port=True, admin_port=None, health_port=None)

    def ready(self, target: str, summary: str) -> None:
        log.info("frontend %d/%d ready on %s in %s", self.index, self.count, target, summary)
        self.ready_queue.put(self.index)


def frontend_main(listen_address: str, sock: Any, args: argparse.Namespace, client_config: dict[str, Any]) -> None:
    """Entry point of one frontend process (``APIServerProcessManager``'s ``target_server_fn``
    signature; ``listen_address`` and ``sock`` are vLLM's HTTP socket, unused here)."""
    from nanovl import event_loop
    from nanovl.cli import serve
    from nanovl.cli.startup import StartupReport
    from profiling.telemetry import logs
    from service import server_watch

    logs.setup_logging(logs.LoggingSettings.from_args(args))
    role = FrontendRole(
        index=int(client_config["client_index"]),
        count=int(client_config["client_count"]),
        client_config=client_config,
        ready_queue=args.frontend_ready,
    )
    # The parent's pid is in NANOVL_SERVER_PID: if it is killed, this process drains and exits.
    server_watch.start()
    sys.exit(event_loop.run(serve._serve(args, StartupReport(live=False), role), loop=args.event_loop))


def _port_in_use(host: str, port: int) -> OSError | None:
    # The frontends bind with SO_REUSEPORT, which would share a port another server holds
    # with the same option: check that it is free first, as a lone `nanovl serve` does.
    # SO_REUSEADDR, as gRPC's own listeners: connections of a server that just stopped
    # (TIME_WAIT) do not hold the port, a listener does (verify-drain: a restart within a
    # minute was refused).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc
    return None


def _exit_status(codes: Mapping[int, int | None]) -> int:
    from nanovl.cli.serve import EXIT_DRAIN_CUT, EXIT_DRAINED, EXIT_ENGINE_DIED

    values = set(codes.values())
    for worst in (EXIT_ENGINE_DIED, EXIT_DRAIN_CUT):
        if worst in values:
            return worst
    return EXIT_DRAINED if values <= {EXIT_DRAINED} else EXIT_FRONTEND_FAILED


def run_frontends(args: argparse.Namespace) -> int:
    """Start the engine core and ``args.frontend_processes`` frontends; return once all of
    them have stopped, with the exit status of ``nanovl serve``."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.utils import bind_engine_zmq_listeners, launch_core_engines
    from vllm.v1.executor import Executor
    from vllm.v1.utils import APIServerProcessManager

    from nanovl.cli import serve

    count, report = args.frontend_processes, args.startup
    if err := _port_in_use(args.host, args.port):
        log.error("cannot serve on %s:%d (%s); choose a free --port", args.host, args.port, err.strerror)
        return serve.EXIT_OPERATOR_ERROR
    serve.prepare_model(args, report)
    # The engine core and its workers watch this process (service.server_watch), and so do the frontends.
    os.environ["NANOVL_SERVER_PID"] = str(os.getpid())
    engine_args = AsyncEngineArgs.from_cli_args(args)
    serve.apply_exact_sizing(args, engine_args)  # the engine core is sized as the frontends expect
    engine_args._api_process_count, engine_args._api_process_rank = count, -1
    vllm_config = engine_args.create_engine_config(UsageContext.ENGINE_CONTEXT)

    spawn = multiprocessing.get_context("spawn")  # what APIServerProcessManager starts them with
    ready = spawn.Queue()
    child_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in ("engine_logs", "startup")})
    child_args.frontend_ready = ready

    stop_requested: list[int] = []
    manager: APIServerProcessManager | None = None

    def on_signal(signum: int, _frame: Any) -> None:
        if not stop_requested:
            stop_requested.append(signum)
        if manager is None:
            raise SystemExit(serve.EXIT_DRAINED)  # still starting: nothing is in flight

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    def on_withdraw(signum: int, _frame: Any) -> None:
        # SIGUSR1 (a preStop hook): every frontend withdraws its readiness.
        for p in manager.processes if manager is not None else ():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGUSR1)

    signal.signal(signal.SIGUSR1, on_withdraw)

    listeners = bind_engine_zmq_listeners(vllm_config, count)
    launch = None
    try:
        with report.phase("engine start", f"starting vLLM's engine core and {count} frontends") as phase:
            with launch_core_engines(
                vllm_config, Executor.get_class(vllm_config), not engine_args.disable_log_stats, listeners.addresses
            ) as launch:
                coordinator = launch.coordinator
                manager = APIServerProcessManager(
                    listen_address=f"{args.host}:{args.port}",
                    sock=None,
                    args=child_args,
                    num_servers=count,
                    input_listeners=listeners.inputs,
                    output_listeners=listeners.outputs,
                    target_server_fn=frontend_main,
                    stats_update_address=coordinator.get_stats_publish_address() if coordinator else None,
                    tensor_queue=launch.tensor_queue,
                )
                # vLLM aborts the start-up if a frontend dies before the engine is up.
                launch.watched_frontend_processes = manager.processes
            phase.detail = f"{count} frontend processes (pids {', '.join(str(p.pid) for p in manager.processes)})"
        return _supervise(manager.processes, ready, stop_requested, args, report)
    finally:
        if manager is not None:
            manager.shutdown(timeout=STOP_MARGIN_S)
        if launch is not None:
            if launch.engine_manager is not None:
                launch.engine_manager.shutdown()
            if launch.coordinator is not None:
                launch.coordinator.shutdown()
        for listener in (*listeners.inputs, *listeners.outputs):
            with contextlib.suppress(Exception):
                listener.cleanup()


def _supervise(procs: list, ready: Any, stop_requested: list[int], args: argparse.Namespace, report) -> int:
    """Wait for every frontend to stop; pass a stop request on to all of them, and stop the
    others when one exits on its own. Returns the exit status."""
    from nanovl.cli.serve import EXIT_DRAIN_CUT

    codes: dict[int, int | None] = {}
    waiting_ready = set(range(len(procs)))
    forwarded = False
    kill_at: float | None = None
    while len(codes) < len(procs):
        running = [p for p in procs if p.pid not in codes]
        wait([p.sentinel for p in running], timeout=0.2)
        for p in running:
            if p.exitcode is not None:
                codes[p.pid] = p.exitcode
                if not stop_requested:
                    log.error(
                        "frontend %s (pid %d) exited with status %s: stopping the others", p.name, p.pid, p.exitcode
                    )
                    stop_requested.append(signal.SIGTERM)
        with contextlib.suppress(queue.Empty):
            while waiting_ready:
                waiting_ready.discard(ready.get_nowait())
                if not waiting_ready:
                    log.info(
                        "serving on %s:%d with %d frontend processes: ready in %s",
                        args.host,
                        args.port,
                        len(procs),
                        report.summary(),
                    )
        if stop_requested and not forwarded:
            forwarded = True
            log.info(
                "shutdown: stopping %d frontend processes (each drains for up to %.0fs)", len(procs), args.drain_grace_s
            )
            for p in procs:
                if p.pid not in codes:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGTERM)
            # Each frontend gets SIGTERM: its readiness grace, then its drain grace.
            kill_at = time.monotonic() + args.drain_readiness_grace_s + args.drain_grace_s + STOP_MARGIN_S
        if kill_at is not None and time.monotonic() > kill_at:
            for p in procs:
                if p.pid not in codes:
                    log.error("frontend %s (pid %d) did not stop: killing it", p.name, p.pid)
                    p.kill()
                    p.join(5)
                    codes[p.pid] = EXIT_DRAIN_CUT
    status = _exit_status(codes)
    log.info("all frontends stopped (statuses %s): exiting with %d", sorted(codes.values(), key=str), status)
    return status
