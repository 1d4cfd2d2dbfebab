"""Start/StopTorchProfile: vLLM's own torch profiler (``AsyncLLM.start_profile`` /
``stop_profile``), bounded so that a session can never hurt the engine.

vLLM's profiler is available when the operator started the server with it configured:
``--profiler-config.profiler=torch --profiler-config.torch_profiler_dir=/abs/dir`` (or
``AsyncEngineArgs(profiler_config={"profiler": "torch", "torch_profiler_dir": ...})``).
Traces land in that directory on the server; Stop lists the files this session wrote.

Why bounds: vLLM's worker keeps every recorded event in memory until the profile stops,
and then exports the trace (and, when it records CPU activity only, builds a summary
table over every event) inside the engine, between two steps: nothing else runs in the
engine meanwhile, and a step that waits longer than ``VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS``
(300 s) kills it. With vLLM's defaults (``torch_profiler_with_stack=True``: torch's Python
tracer records every Python call of the worker, between steps too) a 20 s session on an
idle CPU server grew the worker by more than 4.4 GiB when it stopped, and the stop had not
finished after 3 minutes; the worker's memory did not grow while recording, so no memory
watch can catch it. On CPU such a config is therefore refused (FAILED_PRECONDITION), and
nanovl's defaults turn it off. Every session has three bounds (``TorchProfileBounds``),
and whichever is reached first ends it:

- engine steps: passed to vLLM as ``max_iterations`` (vLLM's worker stops itself);
- time: the server calls ``stop_profile`` itself after ``max_duration_s``;
- memory: the server samples the resident memory of the processes that record (the
  worker, and the server when vLLM's front-end profiler is on) and stops the session
  early when one has grown by ``max_memory_growth_bytes`` (the trace is then truncated
  and Stop says so).

nanovl's defaults for vLLM's profiler (``service.engine.bounded_profiler_config``) keep
each step's trace small on CPU. A session that ended by itself is collected by the next
StopTorchProfile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nanovl.errors import FailedPrecondition, InvalidArgument, NanovlError
from nanovl.units import format_bytes
from profiling.profilers.limits import TorchProfileBounds, TorchProfileLimits
from profiling.sizing.live_budget import ProcessMemory, engine_processes

if TYPE_CHECKING:
    from service.engine import Engine

ENABLE_HINT = (
    "restart the server with vLLM's torch profiler configured: "
    "--profiler-config.profiler=torch --profiler-config.torch_profiler_dir=/absolute/trace/dir"
)

TorchProfileEnd = Literal["stopped", "steps", "duration", "memory"]

# How often the server checks a running session's time, memory and trace files.
WATCH_INTERVAL_S = 0.2
# torch.profiler.tensorboard_trace_handler's file names end so (".gz" with vLLM's default gzip).
_TRACE_MARK = ".pt.trace.json"


@dataclass(frozen=True)
class TorchProfileRequest:
    prefix: str | None = None
    delay_iterations: int | None = None
    max_iterations: int | None = None  # None: the server's default; 0 is refused
    max_duration_s: float | None = None  # None: the server's maximum


@dataclass(frozen=True)
class TorchProfileResult:
    trace_dir: str
    files: tuple[str, ...]  # written by this session, relative to trace_dir
    ended_by: TorchProfileEnd
    duration_s: float  # start to the end of recording
    peak_memory_growth_bytes: int
    trace_bytes: int
    warning: str = ""


@dataclass
class _Session:
    bounds: TorchProfileBounds
    before: dict[str, float]  # trace_dir's files and mtimes at start
    baseline: dict[int, ProcessMemory]  # the watched processes at start, by pid
    started: float = field(default_factory=time.monotonic)
    peak_growth: int = 0
    grown: ProcessMemory | None = None  # the process whose growth ended the session
    ending: asyncio.Task[TorchProfileResult] | None = None
    watcher: asyncio.Task[None] | None = None


def _snapshot(trace_dir: Path) -> dict[str, float]:
    if not trace_dir.is_dir():
        return {}
    return {str(p.relative_to(trace_dir)): p.stat().st_mtime for p in trace_dir.rglob("*") if p.is_file()}


def _new_files(before: dict[str, float], after: dict[str, float]) -> list[str]:
    return sorted(name for name, mtime in after.items() if before.get(name) != mtime)


def watched_processes(processes: tuple[ProcessMemory, ...], frontend: bool) -> tuple[ProcessMemory, ...]:
    """The processes whose memory a session grows: the workers (or the engine core when the
    worker runs inside it), and the server when vLLM's front-end profiler records there."""
    workers = tuple(p for p in processes if p.role == "worker")
    recorders = workers or tuple(p for p in processes if p.role == "engine_core")
    if frontend:
        recorders += tuple(p for p in processes if p.role == "server")
    return recorders


class TorchProfiler:
    """One bounded profiling session at a time over one engine."""

    def __init__(
        self,
        engine: Engine,
        limits: TorchProfileLimits | None = None,
        *,
        read_processes: Callable[[], tuple[ProcessMemory, ...]] = engine_processes,
    ) -> None:
        self._engine = engine
        self._limits = limits or TorchProfileLimits()
        self._read_processes = read_processes
        self._lock = asyncio.Lock()
        self._session: _Session | None = None
        self._result: TorchProfileResult | None = None  # ended by itself, not yet collected

    @property
    def running(self) -> bool:
        return self._session is not None

    def config(self) -> Any:
        """vLLM's ``ProfilerConfig`` of the engine; FAILED_PRECONDITION unless it is torch."""
        config = self._engine.llm.vllm_config.profiler_config
        if config is None or config.profiler != "torch":
            current = "off" if config is None or config.profiler is None else f"set to {config.profiler!r}"
            raise FailedPrecondition(f"vLLM's torch profiler is {current} on this server; {ENABLE_HINT}")
        return config

    def trace_dir(self) -> Path:
        return Path(self.config().torch_profiler_dir)

    def check_boundable(self, config: Any) -> None:
        """FAILED_PRECONDITION for a profiler config whose trace no bound here can keep small."""
        if config.torch_profiler_with_stack and self._on_cpu():
            raise FailedPrecondition(
                "this server's torch profiler records Python stacks (--profiler-config.torch_profiler_with_stack="
                "true), which on CPU turns on torch's Python tracer in the engine's worker: it records every Python "
                "call, between engine steps too, and no step, time or memory bound keeps its export small (a 20 s "
                "idle session grew the worker by more than 4.4 GiB and blocked the engine for minutes when it "
                "stopped). Restart the server without that flag (nanovl's default is false)"
            )

    @staticmethod
    def _on_cpu() -> bool:
        from service.engine import on_cpu

        return on_cpu()

    async def start(self, request: TorchProfileRequest) -> TorchProfileBounds:
        """Starts a session; returns the bounds it runs under."""
        config = self.config()
        self.check_boundable(config)
        trace_dir = Path(config.torch_profiler_dir)
        bounds = self._limits.bounds(request.max_iterations, request.max_duration_s)
        async with self._lock:
            if self._session is not None:
                raise FailedPrecondition("a torch profile is already running; call StopTorchProfile first")
            processes = await asyncio.to_thread(self._read_processes)
            watched = watched_processes(processes, bool(config.should_profile_frontend))
            if not any(p.role in ("worker", "engine_core") for p in watched):
                raise FailedPrecondition(
                    "cannot bound a torch profile here: the server cannot see the engine's worker processes "
                    "(their memory is what a profile grows), so it will not start one"
                )
            before = await asyncio.to_thread(_snapshot, trace_dir)
            # Shielded, and the session registered by the task itself: a caller that goes
            # away mid-start (vLLM's start may still take effect) leaves a bounded session.
            starting = asyncio.create_task(self._start_engine(request, bounds, before, watched, trace_dir))
            return await asyncio.shield(starting)

    async def _start_engine(
        self,
        request: TorchProfileRequest,
        bounds: TorchProfileBounds,
        before: dict[str, float],
        watched: tuple[ProcessMemory, ...],
        trace_dir: Path,
    ) -> TorchProfileBounds:
        from vllm.exceptions import ProfilerAlreadyActiveError

        try:
            await self._engine.llm.start_profile(
                request.prefix, delay_iterations=request.delay_iterations, max_iterations=bounds.max_steps
            )
        except ProfilerAlreadyActiveError as exc:
            raise FailedPrecondition(
                "vLLM reports a torch profile already running (started outside this API?); call StopTorchProfile first"
            ) from exc
        except ValueError as exc:  # vLLM's prefix / iteration-bound validation
            raise InvalidArgument(f"vLLM rejected the profile options: {exc}") from exc
        except Exception as exc:
            raise NanovlError(f"vLLM could not start its torch profiler: {exc}") from exc
        session = _Session(bounds=bounds, before=before, baseline={p.pid: p for p in watched})
        self._session, self._result = session, None
        session.watcher = asyncio.create_task(self._watch(session, trace_dir))
        return bounds

    async def stop(self) -> TorchProfileResult:
        """Stops the running session, or collects one that ended by itself."""
        session = self._session
        if session is not None:
            result = await self._end(session, "stopped")
            self._result = None
            return result
        if self._result is not None:
            result, self._result = self._result, None
            return result
        self.config()  # a server without the profiler says so first
        raise FailedPrecondition("no torch profile is running; call StartTorchProfile first")

    async def _end(self, session: _Session, reason: TorchProfileEnd) -> TorchProfileResult:
        """Ends the session once (later callers wait for the same end). Shielded: a caller
        that goes away does not leave vLLM's profiler half stopped."""
        if session.ending is None:
            session.ending = asyncio.create_task(self._stop_engine(session, reason))
        return await asyncio.shield(session.ending)

    async def _stop_engine(self, session: _Session, reason: TorchProfileEnd) -> TorchProfileResult:
        """vLLM's stop_profile, then the files; the session counts as running until both
        are done (the watcher sees ``session.ending`` and exits by itself)."""
        ended = time.monotonic()
        trace_dir = self.trace_dir()
        try:
            try:
                await self._engine.llm.stop_profile()
            except Exception as exc:
                raise NanovlError(f"vLLM could not stop its torch profiler: {exc}") from exc
            after = await asyncio.to_thread(_snapshot, trace_dir)
            files = tuple(_new_files(session.before, after))
            result = TorchProfileResult(
                trace_dir=os.fspath(trace_dir),
                files=files,
                ended_by=reason,
                duration_s=ended - session.started,
                peak_memory_growth_bytes=session.peak_growth,
                trace_bytes=await asyncio.to_thread(_sizes, trace_dir, files),
                warning=self._warning(session, reason, files),
            )
            self._result = result
            return result
        finally:
            self._session = None

    def _warning(self, session: _Session, reason: TorchProfileEnd, files: tuple[str, ...]) -> str:
        if reason == "memory" and session.grown is not None:
            return (
                f"the trace is truncated: the {session.grown.role} process (pid {session.grown.pid}) grew by "
                f"{format_bytes(session.peak_growth)} while recording, the server's bound is "
                f"{format_bytes(session.bounds.max_memory_growth_bytes)} (nanovl serve --max-torch-profile-memory); "
                "record fewer steps, or turn off torch_profiler_with_stack / record_shapes / with_memory"
            )
        if not any(_TRACE_MARK in f for f in files):
            return "no trace file was written: no engine step ran while the profile was on (the engine was idle)"
        return ""

    async def _watch(self, session: _Session, trace_dir: Path) -> None:
        """Ends the session at its time or memory bound, or when vLLM's worker has stopped
        itself after its steps (its trace file appears)."""
        with contextlib.suppress(asyncio.CancelledError):
            while session.ending is None:
                await asyncio.sleep(WATCH_INTERVAL_S)
                if time.monotonic() - session.started >= session.bounds.max_duration_s:
                    reason: TorchProfileEnd = "duration"
                elif await asyncio.to_thread(self._grew_too_much, session):
                    reason = "memory"
                elif await asyncio.to_thread(self._worker_trace_written, session, trace_dir):
                    reason = "steps"
                else:
                    continue
                if session.ending is None:
                    with contextlib.suppress(Exception):  # Stop reports any failure to its caller
                        await self._end(session, reason)
                return

    def _grew_too_much(self, session: _Session) -> bool:
        now = {p.pid: p for p in self._read_processes()}
        for pid, base in session.baseline.items():
            current = now.get(pid)
            if current is None:
                continue
            growth = current.rss_bytes - base.rss_bytes
            if growth > session.peak_growth:
                session.peak_growth = growth
                if growth >= session.bounds.max_memory_growth_bytes:
                    session.grown = current
                    return True
        return False

    @staticmethod
    def _worker_trace_written(session: _Session, trace_dir: Path) -> bool:
        """vLLM's worker writes its trace when it stops itself after ``max_iterations``
        steps; the front end writes its own only at stop_profile."""
        after = _snapshot(trace_dir)
        return any(_TRACE_MARK in f and "async_llm" not in f for f in _new_files(session.before, after))


def _sizes(trace_dir: Path, files: tuple[str, ...]) -> int:
    total = 0
    for f in files:
        with contextlib.suppress(OSError):
            total += (trace_dir / f).stat().st_size
    return total
