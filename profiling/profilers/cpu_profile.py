"""CaptureCpuProfile: py-spy on the server and engine processes, one file per process.

py-spy samples a running process from outside (ptrace), so it needs the right to trace
the server's processes: root, or ``CAP_SYS_PTRACE`` (containers: ``--cap-add
SYS_PTRACE``), or ``kernel.yama.ptrace_scope=0`` for the same user.

Python stacks are sampled ``--nonblocking``: the served process is never paused. Native
stacks cannot be read that way (py-spy: "Can't get native stack traces with the
--nonblocking option"), so a native capture runs py-spy in its default mode, which stops
the process for each sample while it unwinds; the server caps its rate
(``--max-native-profile-rate-hz``) to bound that pause.

py-spy leaves out threads that are idle (waiting on a lock, I/O or a sleep) unless
``include_idle`` is set; a process that ran no Python code in the window therefore yields
0 samples. The capture says so (``CpuProfileFile.warning``) rather than returning an empty
file in silence.

Every file is named by role, pid and the capture's start time (UTC, milliseconds), so
captures never share a name.

Operator bounds: the server's own maxima (``CpuProfileLimits``) cap what a caller may ask
for, and the server's directories (virtualenv, standard library, application, working and
home directories) are replaced by placeholders such as ``$SITE/`` in the returned files, so
no server path reaches the caller.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import shutil
import site
import sys
import sysconfig
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
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

log = logging.getLogger(__name__)

CpuProfileFormat = Literal["speedscope", "flamegraph"]

CHUNK_BYTES = 1 * MiB
# py-spy needs a moment to attach and to write its file after the sampling window.
_PY_SPY_SLACK_S = 30.0
# Runs of py-spy per process when it crashes (see _record).
PY_SPY_ATTEMPTS = 4

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
    file_name: str  # "<role>-<pid>-<UTC start, ms>Z<suffix>": unique per capture
    content_type: str
    data: bytes
    samples: int = 0  # stacks py-spy recorded ("Samples: N" of its summary line)
    errors: int = 0  # samples py-spy could not read ("Errors: N")
    warning: str = ""  # set when the file needs explaining (0 samples, read errors)


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


# py-spy's last line: "Wrote speedscope file to 'x'. Samples: 412 Errors: 0".
_SUMMARY = re.compile(r"Samples: (\d+) Errors: (\d+)")
_NO_STACKS = "No stack counts found"


def record_args(py_spy: str, pid: int, request: CpuProfileRequest, out: Path) -> list[str]:
    """py-spy's command line for one process. Python-only sampling is ``--nonblocking``
    (the process never pauses); native sampling cannot be (py-spy refuses), so it runs in
    py-spy's default mode, which pauses the process for each sample."""
    args = [py_spy, "record", "--pid", str(pid), "--duration", str(request.whole_seconds)]
    args += ["--rate", str(request.rate_hz), "--format", request.format, "--output", str(out)]
    args.append("--native" if request.native else "--nonblocking")
    if request.include_idle:
        args.append("--idle")
    return args


def capture_stamp(when: datetime) -> str:
    """``20261130T101500.123Z``: a capture's start in UTC, to the millisecond."""
    when = when.astimezone(UTC)
    return when.strftime("%Y%m%dT%H%M%S.") + f"{when.microsecond // 1000:03d}Z"


def file_name(process: ProcessMemory, request: CpuProfileRequest, stamp: str) -> str:
    return f"{process.role}-{process.pid}-{stamp}{_SUFFIX[request.format]}"


def sample_warning(process: ProcessMemory, request: CpuProfileRequest, samples: int, errors: int) -> str:
    """What a caller should know about a file's counts ("" when nothing)."""
    who = f"the {process.role} process (pid {process.pid})"
    if samples == 0:
        idle = (
            "it ran no Python code in the window (idle threads are left out unless include_idle is set)"
            if not request.include_idle
            else "py-spy read no stack in the window"
        )
        return f"0 samples from {who}: {idle}; the file has no stacks"
    if errors and errors * 10 >= samples:
        return (
            f"py-spy could not read {errors} of {samples + errors} samples of {who} "
            "(its stacks changed while being read); the profile may be incomplete"
        )
    return ""


async def _run_py_spy(args: list[str], timeout_s: float) -> tuple[int | None, str]:
    """One py-spy run: its exit status (negative: the signal that ended it) and output."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except (TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, output.decode(errors="replace")


async def _record(
    py_spy: str, process: ProcessMemory, request: CpuProfileRequest, out: Path, name: str
) -> CpuProfileFile:
    args = record_args(py_spy, process.pid, request, out)
    for attempt in range(1, PY_SPY_ATTEMPTS + 1):
        returncode, text = await _run_py_spy(args, request.whole_seconds + _PY_SPY_SLACK_S)
        # py-spy 0.4.3 itself sometimes dies of SIGSEGV while attaching to a busy process
        # (before its first line of output): measured on nanovl serve, 1 in 60 process
        # captures idle and 8 of 20 captures under load, the "no output" failures. The
        # crash is py-spy's, not the target's (which runs on untouched), so run it again.
        if returncode is not None and returncode < 0 and not out.is_file() and attempt < PY_SPY_ATTEMPTS:
            log.info("py-spy died of signal %d on pid %d (attempt %d); retrying", -returncode, process.pid, attempt)
            continue
        break
    summary = _SUMMARY.search(text)
    samples, errors = (int(summary.group(1)), int(summary.group(2))) if summary else (0, 0)
    # With no samples py-spy's flame graph writer (inferno) fails ("No stack counts found")
    # after writing an SVG that says so: that is a 0-sample file, not a failed capture.
    empty_flamegraph = request.format == "flamegraph" and _NO_STACKS in text and out.is_file()
    if (returncode != 0 or not out.is_file()) and not empty_flamegraph:
        raise FailedPrecondition(_explain_failure(process, text, returncode))
    return CpuProfileFile(
        pid=process.pid,
        role=process.role,
        file_name=name,
        content_type=_CONTENT_TYPE[request.format],
        data=redact_paths(out.read_bytes()),
        samples=samples,
        errors=errors,
        warning=sample_warning(process, request, samples, errors),
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


def _explain_failure(process: ProcessMemory, output: str, returncode: int | None) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip() and not ln.lstrip()[:1].isdigit()]
    error = next((ln for ln in lines if ln.startswith("Error")), lines[0] if lines else None)
    if error is None and returncode is not None and returncode < 0:
        error = f"py-spy crashed (signal {-returncode}) {PY_SPY_ATTEMPTS} times in a row without output"
    elif error is None:
        error = f"py-spy exited with status {returncode} and wrote nothing"
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
    stamp = capture_stamp(datetime.now(UTC))
    with tempfile.TemporaryDirectory(prefix="nanovl-py-spy-") as tmp:
        tasks = []
        for p in processes:
            name = file_name(p, request, stamp)
            tasks.append(asyncio.create_task(_record(py_spy, p, request, Path(tmp) / name, name)))
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
