"""A py-spy capture of a server process, and what it says costs the time.

The capture runs during an extra, unmeasured pass (sampling slows the target), in
speedscope format (open it at https://www.speedscope.app). With ``native=True`` py-spy
also unwinds native frames (``--native``: gRPC's C core and Cython layer, protobuf's upb,
uvloop/libuv, tokenizers) — it must pause the process for each sample, so it cannot be
combined with ``--nonblocking``; it needs ptrace access to the target, which a child of
the benchmark gives. Idle threads are left out (py-spy's default), so every sample is a
thread on a CPU.

Two summaries:

- :func:`summarize_speedscope`: the share of samples in which each package is on the
  stack, and the share in which each function is the innermost frame;
- :func:`split_speedscope`: every sample attributed to exactly one *owner* — the
  innermost frame that belongs to gRPC, protobuf, vLLM's output processor, its
  detokenizer, its input processing, nanovl's own code, nanovl's tracing, its metrics or
  the event loop (:func:`frame_owner`). Frames of other libraries (libc, the interpreter,
  numpy, PIL, tokenizers, ZMQ, msgspec, …) count for the code that called them, so
  ``tokenizers`` under vLLM's detokenizer is detokenization and a memcpy under protobuf's
  serialiser is protobuf. The shares add up to 100 %.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.results import ProfileEntry

__all__ = [
    "OWNERS",
    "PySpy",
    "frame_owner",
    "is_waiting",
    "py_spy_path",
    "split_speedscope",
    "summarize_speedscope",
    "waiting_seconds",
]

_SITE = "site-packages/"
_REPO = Path(__file__).resolve().parent.parent

GRPC = "gRPC (C core, Cython, grpc.aio)"
PROTOBUF = "protobuf"
VLLM_OUTPUT = "vLLM output processor (engine client, ZMQ, vLLM's own stats and Prometheus metrics)"
VLLM_DETOK = "vLLM detokenizer"
VLLM_INPUT = "vLLM input processing (renderer, tokenizer, multimodal)"
NANOVL = "nanovl's own code (service/, model/, nanovl/)"
TRACING = "nanovl tracing (profiling/telemetry/tracing.py, OpenTelemetry traces)"
METRICS = "nanovl metrics (profiling/telemetry/metrics.py, OpenTelemetry metrics SDK)"
LOOP = "event loop (uvloop / asyncio)"
OTHER = "other (interpreter, threads' own frames, unattributed native code)"
# Display order.
OWNERS: tuple[str, ...] = (GRPC, PROTOBUF, VLLM_OUTPUT, VLLM_DETOK, VLLM_INPUT, NANOVL, TRACING, METRICS, LOOP, OTHER)

# vLLM modules of the output path (vllm/v1/engine/async_llm.py's output handler, the
# output processor, the ZMQ engine-core client, per-iteration stats) and of detokenization.
_VLLM_DETOK = ("v1/engine/detokenizer.py", "tokenizers/detokenizer_utils.py", "transformers_utils/detokenizer")
_VLLM_OUTPUT = (
    "v1/engine/output_processor.py",
    "v1/engine/async_llm.py",
    "v1/engine/core_client.py",
    "v1/engine/__init__.py",
    "v1/engine/logprobs.py",
    "v1/metrics/",
    "v1/serial_utils.py",
    "outputs.py",
)
_GRPC_SYMBOLS = ("grpc_", "grpc::", "grpc_core::", "grpc_event_engine::", "gpr_", "absl::", "__pyx_pw_4grpc")
# vLLM modules used from everywhere: they count for their caller.
_VLLM_TRANSPARENT = ("envs.py", "utils/", "logger.py")

# Blocking calls (libc, CPython): a sample whose innermost native frames include one is a
# thread waiting, not running. py-spy --native pauses the process to unwind it, so it
# cannot tell a waiting thread from a running one by the thread's state; the stack can.
_WAIT_CALLS = frozenset(
    {
        "epoll_wait",
        "epoll_pwait",
        "epoll_pwait2",
        "poll",
        "ppoll",
        "__poll",
        "select",
        "pselect",
        "pselect6",
        "nanosleep",
        "clock_nanosleep",
        "__clock_nanosleep",
        "pthread_cond_wait",
        "pthread_cond_timedwait",
        "pthread_cond_clockwait",
        "sem_wait",
        "sem_timedwait",
        "sem_clockwait",
        "pthread_join",
        "accept",
        "accept4",
        "pause",
        "sigwaitinfo",
        "sigtimedwait",
        "wait4",
        "waitpid",
        "PyThread_acquire_lock_timed",  # a Python lock (and queue.get, Event.wait)
        "take_gil",  # waiting for the GIL
    }
)
_WAIT_DEPTH = 8  # native frames looked at, from the innermost


def py_spy_path() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class PySpy:
    pid: int
    out: Path
    rate: int = 100
    native: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        exe = py_spy_path()
        if exe is None:
            raise RuntimeError("py-spy is not installed")
        argv = [exe, "record", "--pid", str(self.pid), "--format", "speedscope", "--output", str(self.out)]
        argv += ["--rate", str(self.rate), "--full-filenames"]
        # --native pauses the target for each sample; without it, never pause (lower
        # overhead; a few torn stacks are fine).
        argv.append("--native" if self.native else "--nonblocking")
        return argv

    def start(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.unlink(missing_ok=True)
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def failed_early(self) -> str | None:
        """py-spy's output if it has already exited (it could not attach), else None."""
        if self.proc is None or self.proc.poll() is None:
            return None
        output = self.proc.stdout.read() if self.proc.stdout is not None else b""
        return output.decode(errors="replace").strip()[-500:] or f"py-spy exited with code {self.proc.returncode}"

    def stop(self, timeout_s: float = 60.0) -> None:
        """Ctrl-C makes py-spy write its output and exit."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            output, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            output, _ = self.proc.communicate()
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote no profile: {(output or b'').decode(errors='replace')[-500:]}")


def _package(file: str) -> str:
    """``.../site-packages/grpc/aio/_call.py`` → ``grpc``; a checkout file → its top folder."""
    if _SITE in file:
        rest = file.split(_SITE, 1)[1]
        return rest.split("/", 1)[0].removesuffix(".py")
    if "/lib/python" in file:
        return "stdlib:" + Path(file).stem
    if "torchinductor" in file:  # code torch.compile generated (file named by a hash)
        return "torch (compiled)"
    parts = Path(file).parts
    for top in ("service", "model", "profiling", "loadtest", "bench", "nanovl"):
        if top in parts:
            return top
    return Path(file).stem or file


def _repo_relative(file: str) -> str | None:
    """The path inside this checkout (``service/server.py``), or None."""
    root = str(_REPO) + "/"
    if file.startswith(root):
        return file[len(root) :]
    # py-spy may report paths relative to the server's working directory (the checkout).
    if not file.startswith("/") and file.split("/", 1)[0] in ("service", "model", "profiling", "nanovl"):
        return file
    return None


def frame_owner(name: str, file: str) -> str | None:
    """Which owner a frame belongs to (one of :data:`OWNERS` but ``OTHER``), or None for a
    frame that counts for its caller (other libraries, libc, the interpreter)."""
    f = file.replace("\\", "/")
    if name.startswith(_GRPC_SYMBOLS) or "grpc/_cython" in f or "/cygrpc" in f or f.startswith("src/core/"):
        return GRPC
    if name.startswith(("upb_", "_upb_", "PyUpb")) or "google/_upb" in f:
        return PROTOBUF
    if name.startswith(("uv_", "uv__")) or "uvloop" in f or "libuv" in f:
        return LOOP
    if _SITE in f:
        rest = f.split(_SITE, 1)[1]
        top = rest.split("/", 1)[0]
        if top.startswith("grpc"):  # grpc, grpc_health, grpc_reflection, grpc_status
            return GRPC
        if rest.startswith("google/protobuf/"):
            return PROTOBUF
        if top == "vllm":
            sub = rest[len("vllm/") :]
            if sub.startswith(_VLLM_TRANSPARENT):
                return None
            if sub.startswith(_VLLM_DETOK):
                return VLLM_DETOK
            if sub.startswith(_VLLM_OUTPUT):
                return VLLM_OUTPUT
            return VLLM_INPUT
        if top == "opentelemetry":
            return METRICS if ("metrics" in rest or "prometheus" in rest) else TRACING
        # prometheus_client counts for its caller: vLLM's stat logger or nanovl's exporter.
        return None
    rel = _repo_relative(f)
    if rel is not None:
        if rel == "profiling/telemetry/tracing.py":
            return TRACING
        if rel == "profiling/telemetry/metrics.py":
            return METRICS
        if rel.startswith(("nanovl/cli/", "nanovl/event_loop.py")):
            return None  # the process's entry point, under everything
        if rel.startswith(("service/", "model/", "nanovl/", "profiling/")):
            return NANOVL
        return None
    if "/lib/python3" in f and ("/asyncio/" in f or f.endswith("/selectors.py")):
        return LOOP
    return None


def _is_python(file: str) -> bool:
    return file.endswith(".py") or file.startswith("<")


def is_waiting(names: list[str], files: list[str]) -> bool:
    """Whether a stack (innermost frame first) is a thread blocked in a wait: one of its
    innermost native frames, before the first Python frame, is a blocking call."""
    for name, file in list(zip(names, files, strict=True))[:_WAIT_DEPTH]:
        if _is_python(file):
            return False
        if name in _WAIT_CALLS:
            return True
    return False


def _load(path: Path) -> tuple[list[dict[str, str]], list[tuple[list[int], float]], float]:
    """(frames, busy samples, seconds of waiting samples left out)."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    names = [f.get("name", "") for f in frames]
    files = [f.get("file", "") for f in frames]
    samples = []
    waiting = 0.0
    for profile in data["profiles"]:
        for stack, weight in zip(profile.get("samples", ()), profile.get("weights", ()), strict=False):
            if not stack:
                continue
            inner = stack[::-1][:_WAIT_DEPTH]
            if is_waiting([names[i] for i in inner], [files[i] for i in inner]):
                waiting += float(weight)
                continue
            samples.append((stack, float(weight)))
    return frames, samples, waiting


def summarize_speedscope(path: Path, top: int = 12) -> tuple[float, tuple[ProfileEntry, ...], tuple[ProfileEntry, ...]]:
    """(busy sampled seconds, packages by inclusive share, functions by self share). py-spy
    weights each sample by its interval in seconds; waiting samples are left out."""
    frames, samples, _ = _load(path)
    packages: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0.0
    for stack, weight in samples:
        total += weight
        for pkg in {_package(frames[i].get("file", "")) for i in stack}:
            packages[pkg] += weight
        leaf = frames[stack[-1]]
        leaves[f"{leaf.get('name', '?')} ({_package(leaf.get('file', ''))})"] += weight
    if total == 0:
        return 0.0, (), ()

    def entries(counter: Counter[str]) -> tuple[ProfileEntry, ...]:
        return tuple(ProfileEntry(name, round(100.0 * w / total, 1)) for name, w in counter.most_common(top))

    return round(total, 2), entries(packages), entries(leaves)


def waiting_seconds(path: Path) -> float:
    """Seconds of samples left out as waiting (a thread blocked in a wait)."""
    return round(_load(path)[2], 2)


def _is_otel(file: str) -> bool:
    return f"{_SITE}opentelemetry/" in file


def split_speedscope(path: Path) -> tuple[ProfileEntry, ...]:
    """Every owner's share of the busy samples (:data:`OWNERS` order, all of them, adding
    up to 100 %): each sample goes to the owner of its innermost owned frame (speedscope
    stacks run from the root to the innermost frame). Within OpenTelemetry the outermost
    of its frames decides tracing or metrics (a metrics exemplar filter reads the
    current span through the tracing API: that is metrics' cost)."""
    frames, samples, _ = _load(path)
    files = [f.get("file", "") for f in frames]
    owners = [frame_owner(f.get("name", ""), f.get("file", "")) for f in frames]
    shares: Counter[str] = Counter()
    total = 0.0
    for stack, weight in samples:
        total += weight
        owner = OTHER
        for pos in range(len(stack) - 1, -1, -1):
            i = stack[pos]
            if owners[i] is None:
                continue
            owner = owners[i]
            if _is_otel(files[i]):
                for j in reversed(stack[:pos]):
                    if _is_otel(files[j]):
                        owner = owners[j] or owner
                    elif owners[j] is not None:
                        break
            break
        shares[owner] += weight
    if total == 0:
        return ()
    return tuple(ProfileEntry(o, round(100.0 * shares[o] / total, 1)) for o in OWNERS)
