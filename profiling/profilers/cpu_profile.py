"""CaptureCpuProfile: py-spy on the server and engine processes, one file per process.

py-spy samples a running process from outside (ptrace), so it needs the right to trace
the server's processes: root, or ``CAP_SYS_PTRACE`` (containers: ``--cap-add
SYS_PTRACE``), or ``kernel.yama.ptrace_scope=0`` for the same user. Sampling runs
``--nonblocking`` so the served process is never paused.

Operator bounds: the server's own maxima (``CpuProfileLimits``: ``--max-cpu-profile-s``,
``--max-cpu-profile-rate-hz``) cap what a caller may ask for, and the server's directories
(virtualenv, standard library, application, working and home directories) are replaced by
placeholders such as ``$SITE/`` in the returned files, so no server path reaches the caller.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import site
import sys
import sysconfig
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nanovl.errors import FailedPrecondition, InvalidArgument, NanovlError
from nanovl.units import MiB
from profiling.profilers.limits import (  # noqa: F401 - re-exported
    DEFAULT_DURATION_S,
    DEFAULT_RATE_HZ,
    MAX_DURATION_S,
    MAX_RATE_HZ,
    CpuProfileLimits,
)
from profiling.sizing.live_budget import ProcessMemory, ProcessRole, engine_processes

CpuProfileFormat = Literal["speedscope", "flamegraph"]

CHUNK_BYTES = 1 * MiB
# py-spy needs a moment to attach and to write its file after the sampling window.
_PY_SPY_SLACK_S = 30.0

_SUFFIX = {"speedscope": ".speedscope.json", "flamegraph": ".svg"}
_CONTENT_TYPE = {"speedscope": "application/json", "flamegraph": "image/svg+xml"}


@dataclass(frozen=True)
class CpuProfileRequest:
    duration_s: float = DEFAULT_DURATION_S
    rate_hz: int = DEFAULT_RATE_HZ
    format: CpuProfileFormat = "speedscope"
    roles: frozenset[ProcessRole] = field(default_factory=frozenset)  # empty: every process
    native: bool = False
    include_idle: bool = False

    @property
    def whole_seconds(self) -> int:
        """py-spy samples for whole seconds."""
        return max(1, math.ceil(self.duration_s))


@dataclass(frozen=True)
class CpuProfileFile:
    pid: int
    role: ProcessRole
    file_name: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class CpuProfileChunk:
    file_index: int
    file: CpuProfileFile
    data: bytes
    first: bool
    last: bool


def validate(request: CpuProfileRequest) -> None:
    if not (0 < request.duration_s <= MAX_DURATION_S):
        raise InvalidArgument(f"duration_s must be in (0, {MAX_DURATION_S:.0f}] seconds, got {request.duration_s}")
    if not (1 <= request.rate_hz <= MAX_RATE_HZ):
        raise InvalidArgument(f"rate_hz must be 1 to {MAX_RATE_HZ}, got {request.rate_hz}")
    if request.format not in _SUFFIX:
        raise InvalidArgument(f"format must be one of {', '.join(_SUFFIX)}, got {request.format!r}")


def py_spy_path() -> str:
    """The py-spy binary: on PATH, or installed beside this interpreter (a venv's bin/)."""
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    raise FailedPrecondition(
        "py-spy is not installed on the server: install the `py-spy` package into the server's "
        "environment (it is a nanovl dependency)"
    )


def select_processes(request: CpuProfileRequest) -> tuple[ProcessMemory, ...]:
    processes = tuple(p for p in engine_processes() if not request.roles or p.role in request.roles)
    if not processes:
        wanted = ", ".join(sorted(request.roles))
        raise FailedPrecondition(f"no running process has the requested role(s): {wanted}")
    return processes


async def _record(py_spy: str, process: ProcessMemory, request: CpuProfileRequest, out: Path) -> CpuProfileFile:
    args = [
        py_spy,
        "record",
        "--pid",
        str(process.pid),
        "--duration",
        str(request.whole_seconds),
        "--rate",
        str(request.rate_hz),
        "--format",
        request.format,
        "--output",
        str(out),
        "--nonblocking",
    ]
    if request.native:
        args.append("--native")
    if request.include_idle:
        args.append("--idle")
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), request.whole_seconds + _PY_SPY_SLACK_S)
    except (TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    text = output.decode(errors="replace")
    if proc.returncode != 0 or not out.is_file():
        raise FailedPrecondition(_explain_failure(process, text))
    return CpuProfileFile(
        pid=process.pid,
        role=process.role,
        file_name=f"{process.role}-{process.pid}{_SUFFIX[request.format]}",
        content_type=_CONTENT_TYPE[request.format],
        data=redact_paths(out.read_bytes()),
    )


def _server_directories() -> list[tuple[str, str]]:
    """(directory, placeholder), longest first, for :func:`redact_paths`."""
    dirs: list[tuple[str, str]] = []
    for d in [*site.getsitepackages(), site.getusersitepackages(), sysconfig.get_paths().get("purelib", "")]:
        dirs.append((d, "$SITE"))
    for key in ("stdlib", "platstdlib"):
        dirs.append((sysconfig.get_paths().get(key, ""), "$STDLIB"))
    dirs += [
        (str(Path(__file__).resolve().parents[2]), "$APP"),
        (sys.prefix, "$PREFIX"),
        (sys.base_prefix, "$PREFIX"),
        (os.getcwd(), "$CWD"),
        (str(Path.home()), "~"),
        (tempfile.gettempdir(), "$TMP"),
    ]
    seen: dict[str, str] = {}
    for d, name in dirs:
        d = d.rstrip("/")
        if len(d) > 1 and d not in seen:
            seen[d] = name
    return sorted(seen.items(), key=lambda kv: len(kv[0]), reverse=True)


def redact_paths(data: bytes) -> bytes:
    """The profile with the server's directories replaced by placeholders (``$SITE/...``):
    a caller sees module paths, never where the server is installed. The placeholders are
    safe inside JSON strings and SVG text."""
    for directory, name in _server_directories():
        data = data.replace(directory.encode() + b"/", name.encode() + b"/")
    return data


def _explain_failure(process: ProcessMemory, output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip() and not ln.lstrip()[:1].isdigit()]
    error = next((ln for ln in lines if ln.startswith("Error")), lines[0] if lines else "no output")
    hint = ""
    if "ermission" in output or "ptrace" in output.lower() or "Operation not permitted" in output:
        hint = (
            "; py-spy needs ptrace rights over the server's processes: run the server as root or with "
            "CAP_SYS_PTRACE (docker: --cap-add SYS_PTRACE), or set kernel.yama.ptrace_scope=0"
        )
    return f"py-spy could not sample the {process.role} process (pid {process.pid}): {error}{hint}"


async def capture_cpu_profile(request: CpuProfileRequest) -> list[CpuProfileFile]:
    """Sample every selected process at once for the requested window."""
    validate(request)
    py_spy = py_spy_path()
    processes = select_processes(request)
    with tempfile.TemporaryDirectory(prefix="nanovl-py-spy-") as tmp:
        tasks = [
            asyncio.create_task(_record(py_spy, p, request, Path(tmp) / f"{p.role}-{p.pid}{_SUFFIX[request.format]}"))
            for p in processes
        ]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise


def iter_chunks(files: Sequence[CpuProfileFile], chunk_bytes: int = CHUNK_BYTES) -> Iterator[CpuProfileChunk]:
    """Each file in order, cut into chunks of at most ``chunk_bytes``."""
    if chunk_bytes <= 0:
        raise NanovlError(f"chunk_bytes must be positive, got {chunk_bytes}")
    for index, f in enumerate(files):
        size = len(f.data)
        starts = range(0, max(size, 1), chunk_bytes)
        for i, start in enumerate(starts):
            yield CpuProfileChunk(
                file_index=index,
                file=f,
                data=f.data[start : start + chunk_bytes],
                first=i == 0,
                last=start + chunk_bytes >= size,
            )
