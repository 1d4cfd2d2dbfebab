"""Where the machine's CPU time went during a level: the server's frontend process, its
engine processes, the client, and everything else on the machine (other people's work,
which on a shared 2-core machine is the main source of noise)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

__all__ = ["CpuMeter", "CpuUsage"]


@dataclass(frozen=True)
class CpuUsage:
    """CPU seconds over one level's measured requests (warm-up excluded)."""

    window_s: float
    frontend_s: float  # the server's own process (in-process side: the engine client + the benchmark loop)
    engine_s: float  # its child processes (vLLM engine core and worker)
    client_s: float  # the benchmark process (0 for the in-process side: it is the frontend)
    other_s: float  # every other process on the machine

    @property
    def other_cores(self) -> float:
        """Average number of cores other processes kept busy."""
        return self.other_s / self.window_s if self.window_s > 0 else 0.0


def _busy_s() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def _cpu_s(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


class CpuMeter:
    """``start()`` and ``stop()`` around a level. ``server_pid`` is the frontend process
    (its children are the engine); ``client_pid`` the load generator, when separate."""

    def __init__(self, server_pid: int, client_pid: int | None = None) -> None:
        self._server = psutil.Process(server_pid)
        self._client = psutil.Process(client_pid) if client_pid is not None and client_pid != server_pid else None
        self._start: tuple[float, float, dict[int, float], float, float] | None = None
        self.usage: CpuUsage | None = None

    def _children(self) -> dict[int, float]:
        try:
            kids = self._server.children(recursive=True)
        except psutil.Error:
            return {}
        return {p.pid: _cpu_s(p) for p in kids}

    def start(self) -> None:
        client = _cpu_s(self._client) if self._client is not None else 0.0
        self._start = (time.perf_counter(), _cpu_s(self._server), self._children(), client, _busy_s())

    def stop(self) -> CpuUsage:
        assert self._start is not None, "stop() before start()"
        t0, front0, kids0, client0, busy0 = self._start
        kids1 = self._children()
        engine = sum(v - kids0.get(pid, 0.0) for pid, v in kids1.items())
        frontend = _cpu_s(self._server) - front0
        client = (_cpu_s(self._client) - client0) if self._client is not None else 0.0
        busy = _busy_s() - busy0
        self.usage = CpuUsage(
            window_s=time.perf_counter() - t0,
            frontend_s=frontend,
            engine_s=engine,
            client_s=client,
            other_s=max(0.0, busy - frontend - engine - client),
        )
        return self.usage


def own_meter() -> CpuMeter:
    """This process as the frontend (the in-process side)."""
    return CpuMeter(os.getpid())
