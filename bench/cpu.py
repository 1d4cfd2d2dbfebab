"""Where the machine's CPU time went during a level: the server's frontend processes, its
engine processes, the client, and everything else on the machine (other people's work,
which on a shared 2-core machine is the main source of noise).

A server's process tree is split by vLLM's process titles (``vllm.utils.system_utils.
set_process_title``: ``VLLM::EngineCore``, ``VLLM::Worker_…``, ``VLLM::DPCoordinator``):
those and their descendants are the engine; the server process and every other
descendant (vLLM's ``VLLM::APIServer_N``, the Rust frontend ``vllm-rs``, several nanovl
frontend processes, helper processes) are the frontend.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import psutil

__all__ = ["ENGINE_TITLES", "CpuMeter", "CpuUsage", "is_engine_process", "own_meter"]

# Process-title prefixes of vLLM's engine-side processes (vllm/v1/engine/core.py,
# vllm/v1/executor/multiproc_executor.py, vllm/v1/engine/coordinator.py).
ENGINE_TITLES: tuple[str, ...] = ("VLLM::EngineCore", "VLLM::Worker", "VLLM::DPCoordinator")


@dataclass(frozen=True)
class CpuUsage:
    """CPU seconds over one level's measured requests (warm-up excluded)."""

    window_s: float
    frontend_s: float  # the server's frontend processes (in-process side: the engine client + the benchmark loop)
    engine_s: float  # its engine processes (vLLM engine core and worker)
    client_s: float  # the benchmark process (0 for the in-process side: it is the frontend)
    other_s: float  # every other process on the machine
    # Frontend processes that were busy (>= 1 % of a core over the window): the server
    # process and any non-engine descendant doing real work (several frontends).
    frontend_processes: int = 1
    # The busiest frontend process alone: how close one process came to a whole core.
    busiest_frontend_s: float = 0.0

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


def _title(proc: psutil.Process) -> str:
    try:
        cmd = proc.cmdline()
        return " ".join(cmd) if cmd else proc.name()
    except psutil.Error:
        return ""


def is_engine_process(pid: int, titles: Mapping[int, str], parents: Mapping[int, int]) -> bool:
    """Whether ``pid`` or one of its ancestors (``parents``: pid → parent pid, within the
    server's tree) carries an engine process title."""
    seen = set()
    while pid in titles and pid not in seen:
        if titles[pid].startswith(ENGINE_TITLES):
            return True
        seen.add(pid)
        pid = parents.get(pid, -1)
    return False


class CpuMeter:
    """``start()`` and ``stop()`` around a level. ``server_pid`` is the server's main
    process (its descendants are split into engine and frontend); ``client_pid`` the load
    generator, when separate."""

    def __init__(self, server_pid: int, client_pid: int | None = None) -> None:
        self._server = psutil.Process(server_pid)
        self._client = psutil.Process(client_pid) if client_pid is not None and client_pid != server_pid else None
        self._start: tuple[float, dict[int, tuple[float, bool]], float, float] | None = None
        self._engine: dict[int, bool] = {}  # pid → engine?, decided once per process
        self.usage: CpuUsage | None = None

    def _tree(self) -> dict[int, tuple[float, bool]]:
        """pid → (CPU seconds, engine?) for the server and every descendant."""
        try:
            kids = self._server.children(recursive=True)
        except psutil.Error:
            kids = []
        procs = {self._server.pid: self._server, **{p.pid: p for p in kids}}
        new = [pid for pid in procs if pid not in self._engine]
        if new:
            titles = {pid: _title(p) for pid, p in procs.items()}
            parents = {}
            for pid, p in procs.items():
                try:
                    parents[pid] = p.ppid()
                except psutil.Error:
                    pass
            for pid in new:
                self._engine[pid] = pid != self._server.pid and is_engine_process(pid, titles, parents)
        return {pid: (_cpu_s(p), self._engine[pid]) for pid, p in procs.items()}

    def start(self) -> None:
        client = _cpu_s(self._client) if self._client is not None else 0.0
        self._start = (time.perf_counter(), self._tree(), client, _busy_s())

    def stop(self) -> CpuUsage:
        assert self._start is not None, "stop() before start()"
        t0, tree0, client0, busy0 = self._start
        tree1 = self._tree()
        window = time.perf_counter() - t0
        engine = frontend = 0.0
        busy_frontends = 0
        busiest = 0.0
        for pid, (cpu, is_engine) in tree1.items():
            delta = cpu - tree0.get(pid, (0.0, is_engine))[0]
            if is_engine:
                engine += delta
            else:
                frontend += delta
                busy_frontends += delta >= 0.01 * window
                busiest = max(busiest, delta)
        client = (_cpu_s(self._client) - client0) if self._client is not None else 0.0
        busy = _busy_s() - busy0
        self.usage = CpuUsage(
            window_s=window,
            frontend_s=frontend,
            engine_s=engine,
            client_s=client,
            other_s=max(0.0, busy - frontend - engine - client),
            frontend_processes=max(1, busy_frontends),
            busiest_frontend_s=busiest,
        )
        return self.usage


def own_meter() -> CpuMeter:
    """This process as the frontend (the in-process side)."""
    return CpuMeter(os.getpid())
