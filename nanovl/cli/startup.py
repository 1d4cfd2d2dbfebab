"""``nanovl serve``'s start-up as the operator sees it: one line per phase with its
duration, and progress while a long phase runs.

Progress is a rich spinner on a terminal (text logs), and otherwise (not a TTY, or
``--log-format json``) a plain log line every ``PLAIN_EVERY_S`` seconds. The current step
of the engine's start comes from the engine's own log records (``engine_logs``), which
this process sees for every engine process.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

log = logging.getLogger("nanovl.startup")

PLAIN_EVERY_S = 15.0

# Engine log messages (prefixes) that end a step of the engine's start, and the step
# that follows them.
ENGINE_STEPS: tuple[tuple[str, str], ...] = (
    ("Resolved architecture", "starting the engine core process"),
    ("Initializing a V1 LLM engine", "starting the worker process"),
    ("Starting to load model", "loading weights"),
    ("Loading weights took", "memory profile and KV cache"),
    ("init engine (profile, create kv cache", "connecting to the engine core"),
)


@dataclass
class Phase:
    name: str
    step: str = ""  # what is happening now (progress display)
    detail: str = ""  # said after the duration when the phase ends
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class StartupReport:
    """Times the phases of a start-up and shows progress on the long ones."""

    def __init__(self, *, live: bool) -> None:
        self.live = live
        self.started = time.monotonic()
        self.durations: dict[str, float] = {}
        self._current: Phase | None = None

    def on_engine_record(self, record: logging.LogRecord) -> None:
        """Listener for engine log records: advances the current phase's step."""
        phase = self._current
        if phase is None:
            return
        message = str(record.msg)
        for prefix, step in ENGINE_STEPS:
            if message.startswith(prefix):
                phase.step = step

    @contextlib.contextmanager
    def phase(self, name: str, step: str = "", *, progress: bool = True) -> Iterator[Phase]:
        """``with report.phase("engine start") as p:`` logs ``engine start: 12.3 s`` when the
        block ends (``— p.detail`` after it when set); an exception ends it unlogged."""
        phase = Phase(name, step)
        self._current = phase
        stop = threading.Event()
        ticker = None
        live = None
        if progress and self.live:
            from rich.console import Console
            from rich.live import Live
            from rich.spinner import Spinner

            from profiling.telemetry.logs import set_live_console

            spinner = Spinner("dots", self._status_text(phase))
            # No redirection: log lines go through console.print (set_live_console), unwrapped.
            live = Live(
                spinner, console=Console(stderr=True), transient=True, redirect_stdout=False, redirect_stderr=False
            )
            live.start()
            set_live_console(live.console)
            ticker = threading.Thread(target=self._tick_live, args=(phase, spinner, stop), daemon=True)
        elif progress:
            ticker = threading.Thread(target=self._tick_plain, args=(phase, stop), daemon=True)
        if ticker is not None:
            ticker.start()
        try:
            yield phase
        finally:
            stop.set()
            if ticker is not None:
                ticker.join(1.0)
            if live is not None:
                from profiling.telemetry.logs import set_live_console

                set_live_console(None)
                live.stop()
            self._current = None
        elapsed = phase.elapsed
        self.durations[name] = elapsed
        log.info("%s: %.1f s%s", name, elapsed, f" — {phase.detail}" if phase.detail else "")

    @staticmethod
    def _status_text(phase: Phase) -> str:
        step = f" — {phase.step}" if phase.step else ""
        return f"{phase.name}: {phase.elapsed:.0f} s{step}"

    def _tick_live(self, phase: Phase, spinner, stop: threading.Event) -> None:  # noqa: ANN001
        while not stop.wait(0.5):
            spinner.update(text=self._status_text(phase))

    def _tick_plain(self, phase: Phase, stop: threading.Event) -> None:
        while not stop.wait(PLAIN_EVERY_S):
            log.info(
                "%s: still running after %.0f s%s", phase.name, phase.elapsed, f" ({phase.step})" if phase.step else ""
            )

    def summary(self) -> str:
        total = time.monotonic() - self.started
        parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.durations.items())
        return f"{total:.1f} s ({parts})" if parts else f"{total:.1f} s"
