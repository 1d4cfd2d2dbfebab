"""Per-request chat templates run as someone else's code: in a separate process.

A Jinja template is a program. transformers renders chat templates in Jinja's sandbox,
which stops attribute tricks but not a loop of 10^8 iterations or a string of 10 GB, and a
thread cannot be stopped. So a template that came with a request is rendered in a process
forked from a clean fork server (``multiprocessing``'s ``forkserver``, with transformers'
chat-template module preloaded), at the lowest CPU priority, under an address-space cap,
and killed when it runs past the time limit. The server's event loop only waits on a pipe.

Only per-request templates take this path (``--allow-request-chat-template``); the
checkpoint's own template is the operator's and renders in the decode thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing as mp
import os
import resource
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection

import psutil

from model.prompt import TemplateJob, render_template
from nanovl.errors import DeadlineExceeded, NanovlError, ResourceExhausted
from nanovl.units import GiB

log = logging.getLogger(__name__)

DEFAULT_MEMORY_BYTES = 1 * GiB


# How often the fork server checks that the server which started it is still there.
PARENT_CHECK_S = 0.5


def _render_in_child(conn: Connection, job: TemplateJob, memory_bytes: int, cpu_seconds: int) -> None:
    os.nice(19)  # never compete with the engine's threads for a core
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # The server kills a render at its time limit; this bounds one whose server is gone
    # (kill -9, the OOM killer): SIGXCPU past the limit (verify-10d F6).
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    try:
        conn.send(("ok", render_template(job)))
    except NanovlError as exc:
        conn.send(("error", exc))
    except MemoryError:
        conn.send(("error", ResourceExhausted("the chat template needed more memory than this server allows")))
    finally:
        conn.close()


# A render stopped at its time limit with less than this share of it in CPU time was
# starved by load: its message says retry, not only simplify.
BUSY_CPU_SHARE = 0.1


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds process ``pid`` has used (None: it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.Error, ValueError):
        return None
    return times.user + times.system


def timed_out(timeout_s: float, cpu_s: float | None) -> DeadlineExceeded:
    """The error for a render stopped at its ``timeout_s`` (wall clock) after ``cpu_s``
    seconds of CPU (None: unknown). The limit is wall-clock, so on a saturated machine a
    harmless template runs out of it too, and a render at the lowest priority starves first
    (verify-10e): with less than ``BUSY_CPU_SHARE`` of the limit in CPU the message says the
    server is busy and to retry; the status stays the time limit's."""
    if cpu_s is not None and cpu_s < timeout_s * BUSY_CPU_SHARE:
        return DeadlineExceeded(
            f"the request's chat template did not finish within this server's limit of {timeout_s:g} s "
            f"(--chat-template-timeout-s) and was stopped, having had only {cpu_s:.2f} s of CPU: the server is "
            "busy; retry with backoff (a template that loops will fail again: simplify it)"
        )
    return DeadlineExceeded(
        f"the request's chat template ran longer than this server's limit of {timeout_s:g} s "
        "(--chat-template-timeout-s) and was stopped; simplify the template"
    )


def _in_fork_server() -> bool:
    """Whether this import runs inside multiprocessing's fork server (its ``main`` imports
    the preload modules), not in the server process."""
    from multiprocessing import forkserver

    frame = sys._getframe()
    while frame is not None:
        if frame.f_code is forkserver.main.__code__:
            return True
        frame = frame.f_back
    return False


def _exit_with_parent() -> None:
    """In the fork server: exit at once when the server that started it is gone. Left
    alone it waits for its parent's end of a pipe to close, which a process forked from the
    server can hold, and then for Python's shutdown of what it preloaded; after a kill -9
    of the server it was still running 102 s later (verify-10d F6)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="nanovl-template-parent-watch", daemon=True).start()


if _in_fork_server():
    _exit_with_parent()


class TemplateSandbox:
    """Renders :class:`TemplateJob` s in short-lived processes; one per render.

    ``render`` raises ``DeadlineExceeded`` past ``timeout_s`` (the process is killed),
    ``ResourceExhausted`` past ``memory_bytes``, ``InvalidArgument`` for a template that
    fails."""

    def __init__(self, timeout_s: float, *, memory_bytes: int = DEFAULT_MEMORY_BYTES, max_concurrent: int = 2) -> None:
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        self._slots = asyncio.Semaphore(max_concurrent)
        self._ctx = mp.get_context("forkserver")
        # The fork server imports this once; every render then forks in milliseconds.
        # This module too: in the fork server it watches for the server's end.
        self._ctx.set_forkserver_preload(["transformers.utils.chat_template_utils", "service.template_sandbox"])

    def start(self) -> None:
        """Start the fork server now (it takes seconds to import transformers), not on
        the first request. Blocking: call it from a thread."""
        from multiprocessing import forkserver

        forkserver.ensure_running()

    def stop(self) -> None:
        """Kill the fork server and any render still running, so that no process of this
        server outlives it (left alone, the fork server sees its parent gone and exits only
        after Python's shutdown of the modules it preloaded: seconds). multiprocessing has no
        public stop; its fork server's pid is read from the module's singleton
        (``multiprocessing.forkserver._forkserver``, Python 3.8-3.13;
        tests/service/test_template_sandbox.py fails if that changes). Not reaped here:
        ``ensure_running`` reaps a dead fork server itself if the sandbox starts again."""
        from multiprocessing import forkserver

        pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
        if pid is None:
            return
        try:
            server = psutil.Process(pid)
            for process in (*server.children(recursive=True), server):
                process.send_signal(signal.SIGKILL)
        except psutil.Error:  # it exited meanwhile
            pass

    async def render(self, job: TemplateJob) -> str:
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeout_s)
        except TimeoutError:
            raise ResourceExhausted(
                "every chat-template sandbox is busy with other requests' templates; retry with backoff"
            ) from None
        try:
            return await self._render(job)
        finally:
            self._slots.release()

    async def _render(self, job: TemplateJob) -> str:
        loop = asyncio.get_running_loop()
        receiver, sender = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=_render_in_child,
            args=(sender, job, self.memory_bytes, math.ceil(self.timeout_s) + 1),
            name="nanovl-template",
            daemon=True,
        )
        try:
            await loop.run_in_executor(None, process.start)
            sender.close()
            ready = await loop.run_in_executor(None, receiver.poll, self.timeout_s)
            if not ready:
                raise timed_out(self.timeout_s, _cpu_seconds(process.pid))
            try:
                kind, value = receiver.recv()
            except EOFError:
                # The child died without answering: the address-space cap (or a crash).
                raise ResourceExhausted(
                    "the request's chat template was stopped: it needed more than "
                    f"{self.memory_bytes // 2**20} MiB of memory"
                ) from None
            if kind == "error":
                raise value
            return value
        finally:
            receiver.close()
            if process.is_alive():
                process.kill()
            await loop.run_in_executor(None, process.join, 5)
