"""The engine processes a server started, and a bound on how long its exit may take.

vLLM stops its engine core with SIGTERM and kills it after a timeout
(``vllm.v1.utils.shutdown``), but the rest of an exit is unbounded: a worker whose engine
core was killed is re-parented away from the server, and interpreter teardown joins
threads. ``nanovl serve`` snapshots its process tree once the engine runs
(:class:`ProcessTree`), and arms :func:`exit_within` when it starts to shut down: past the
bound, every process of the snapshot still running is killed and the server exits with
the status it had decided on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable

import psutil

log = logging.getLogger(__name__)


# How long a SIGKILLed engine process may take to be gone before this process exits
# anyway (freeing a worker's memory takes a moment on a loaded machine). Part of the exit
# margin (nanovl.cli.serve.EXIT_MARGIN_S).
KILL_WAIT_S = 2.0


def seconds_left() -> float | None:
    """Time until the bound :func:`exit_within` armed fires (None: not armed)."""
    left = signal.getitimer(signal.ITIMER_REAL)[0]
    return left if left > 0 else None


class ProcessTree:
    """This process's descendants at construction (engine core, workers, helpers)."""

    def __init__(self) -> None:
        try:
            children = psutil.Process().children(recursive=True)
        except psutil.Error:
            children = []
        # multiprocessing's resource tracker unlinks leaked shared memory when this process
        # exits: it must outlive the engine, never be killed with it.
        self.processes = [p for p in children if not _is_resource_tracker(p)]

    def alive(self) -> list[psutil.Process]:
        # is_running() compares the create time: a reused pid is not ours.
        return [p for p in self.processes if _running(p)]

    def kill(self, wait_s: float = 0.0) -> list[int]:
        """SIGKILL every process of the snapshot still running; their pids. With ``wait_s``,
        then wait up to that long until they are gone (a zombie counts as gone: a worker
        re-parented away from this process is reaped by its new parent), so that none
        outlives this process's exit (verify-10b: a worker killed as the server exited was
        seen 10-20 s later)."""
        killed, victims = [], []
        for p in self.alive():
            try:
                p.kill()
                killed.append(p.pid)
                victims.append(p)
            except psutil.Error:
                pass
        if wait_s > 0 and victims:
            _, left = psutil.wait_procs(victims, timeout=wait_s)
            if left := [p.pid for p in left if _running(p)]:
                log.error("engine processes %s still running %.1fs after SIGKILL", left, wait_s)
        return killed


def _is_resource_tracker(p: psutil.Process) -> bool:
    try:
        return any("resource_tracker" in arg for arg in p.cmdline())
    except psutil.Error:
        return False


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def exit_within(seconds: float, status: Callable[[], int], tree: ProcessTree) -> None:
    """Bounds the rest of this process's life: ``seconds`` from now, whatever it is doing —
    vLLM's shutdown, interpreter teardown joining threads and child processes — what is
    left of ``tree`` is killed and the process exits at once with ``status()``.

    A real-time interval timer (SIGALRM) rather than a thread: daemon threads stop running
    once the interpreter starts finalizing, and that teardown is one of the slow parts.
    Main thread only; arming again moves the deadline."""

    def expired(signum: int, frame: object) -> None:
        killed = tree.kill(wait_s=KILL_WAIT_S)
        log.error("shutdown ran past its bound of %.0fs: killed %s; exiting now", seconds, killed or "nothing")
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(status())

    signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))


def exit_if_bounded(status: int) -> None:
    """When :func:`exit_within` is armed (a server shutting down), exit now with ``status``,
    logs flushed: interpreter teardown (joining threads and helper processes, seconds) would
    otherwise run into the bound, where Python signal handlers are already gone and SIGALRM
    would end the process with its own status (142) instead."""
    if signal.getitimer(signal.ITIMER_REAL)[0] <= 0:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
