"""Start/StopTorchProfile: vLLM's own torch profiler (``AsyncLLM.start_profile`` /
``stop_profile``), available when the operator started the server with it configured:
``--profiler-config.profiler=torch --profiler-config.torch_profiler_dir=/abs/dir`` (or
``AsyncEngineArgs(profiler_config={"profiler": "torch", "torch_profiler_dir": ...})``).
Traces land in that directory on the server; Stop lists the files this session wrote.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nanovl.errors import FailedPrecondition, InvalidArgument, NanovlError

if TYPE_CHECKING:
    from service.engine import Engine

ENABLE_HINT = (
    "restart the server with vLLM's torch profiler configured: "
    "--profiler-config.profiler=torch --profiler-config.torch_profiler_dir=/absolute/trace/dir"
)


@dataclass(frozen=True)
class TorchProfileResult:
    trace_dir: str
    files: tuple[str, ...]  # written by this session, relative to trace_dir


def _snapshot(trace_dir: Path) -> dict[str, float]:
    if not trace_dir.is_dir():
        return {}
    return {str(p.relative_to(trace_dir)): p.stat().st_mtime for p in trace_dir.rglob("*") if p.is_file()}


class TorchProfiler:
    """One profiling session at a time over one engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = asyncio.Lock()
        self._before: dict[str, float] | None = None  # set while a session runs

    def trace_dir(self) -> Path:
        config = self._engine.llm.vllm_config.profiler_config
        if config is None or config.profiler != "torch":
            current = "off" if config is None or config.profiler is None else f"set to {config.profiler!r}"
            raise FailedPrecondition(f"vLLM's torch profiler is {current} on this server; {ENABLE_HINT}")
        return Path(config.torch_profiler_dir)

    async def start(
        self, *, prefix: str | None = None, delay_iterations: int | None = None, max_iterations: int | None = None
    ) -> str:
        from vllm.exceptions import ProfilerAlreadyActiveError

        trace_dir = self.trace_dir()
        async with self._lock:
            if self._before is not None:
                raise FailedPrecondition("a torch profile is already running; call StopTorchProfile first")
            before = await asyncio.to_thread(_snapshot, trace_dir)
            try:
                await self._engine.llm.start_profile(
                    prefix, delay_iterations=delay_iterations, max_iterations=max_iterations
                )
            except ProfilerAlreadyActiveError as exc:
                raise FailedPrecondition(
                    "vLLM reports a torch profile already running (started outside this API?); "
                    "call StopTorchProfile first"
                ) from exc
            except ValueError as exc:  # vLLM's prefix / iteration-bound validation
                raise InvalidArgument(f"vLLM rejected the profile options: {exc}") from exc
            except Exception as exc:
                raise NanovlError(f"vLLM could not start its torch profiler: {exc}") from exc
            self._before = before
            return str(trace_dir)

    async def stop(self) -> TorchProfileResult:
        trace_dir = self.trace_dir()
        async with self._lock:
            if self._before is None:
                raise FailedPrecondition("no torch profile is running; call StartTorchProfile first")
            try:
                await self._engine.llm.stop_profile()
            except Exception as exc:
                raise NanovlError(f"vLLM could not stop its torch profiler: {exc}") from exc
            before, self._before = self._before, None
            after = await asyncio.to_thread(_snapshot, trace_dir)
            files = tuple(sorted(name for name, mtime in after.items() if before.get(name) != mtime))
            return TorchProfileResult(trace_dir=os.fspath(trace_dir), files=files)
