"""Engine processes never outlive the server.

``nanovl serve`` puts its pid in ``NANOVL_SERVER_PID`` before vLLM starts the engine core
and workers, which inherit it. :func:`start` (called when vLLM imports nanovl's worker
extension inside its worker process) watches that process and, when it is gone — even
after a ``kill -9``, which runs no cleanup — stops this process with SIGTERM, so vLLM's
own shutdown runs and frees its shared memory, then SIGKILL if that hangs. vLLM's
workers already follow their engine core (its death pipe); an engine core whose workers
stop shuts down too.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import psutil

log = logging.getLogger(__name__)

ENV = "NANOVL_SERVER_PID"
POLL_S = 1.0
KILL_AFTER_S = 3.0

_started = False


def _alive(pid: int, create_time: float) -> bool:
    try:
        # The create time guards against the pid being reused by another process.
        return psutil.Process(pid).create_time() == create_time
    except psutil.Error:
        return False


def _stop_self(pid: int) -> None:
    log.error("the nanovl server (pid %d) is gone; stopping this engine process", pid)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(KILL_AFTER_S)
    os.kill(os.getpid(), signal.SIGKILL)


def start(environ: dict[str, str] | os._Environ[str] = os.environ, poll_s: float = POLL_S) -> bool:
    """Watch the server named by ``NANOVL_SERVER_PID`` from a daemon thread. Returns
    False (and does nothing) outside a nanovl engine process or if already watching."""
    global _started
    value = environ.get(ENV, "")
    if _started or not value.isdigit() or int(value) == os.getpid():
        return False
    pid = int(value)
    try:
        create_time = psutil.Process(pid).create_time()
    except psutil.Error:
        create_time = None
    _started = True

    def watch() -> None:
        while create_time is not None and _alive(pid, create_time):
            time.sleep(poll_s)
        _stop_self(pid)

    threading.Thread(target=watch, name="nanovl-server-watch", daemon=True).start()
    return True
