"""A py-spy capture of a server process, and what it says costs the time.

The capture runs during an extra, unmeasured pass (sampling slows the target a little),
in speedscope format (open it at https://www.speedscope.app); the summary is the share
of samples in which each package is on the stack, and the share in which each function
is the innermost frame (py-spy leaves idle threads out by default).
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

__all__ = ["PySpy", "py_spy_path", "summarize_speedscope"]

_SITE = "site-packages/"


def py_spy_path() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class PySpy:
    pid: int
    out: Path
    rate: int = 100
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = py_spy_path()
        if exe is None:
            raise RuntimeError("py-spy is not installed")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        # --nonblocking: never pause the target (lower overhead; a few torn stacks are fine).
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(self.pid),
                "--format",
                "speedscope",
                "--output",
                str(self.out),
                "--rate",
                str(self.rate),
                "--nonblocking",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

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
            raise RuntimeError(f"py-spy wrote no profile: {output.decode(errors='replace')[-500:]}")


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


def summarize_speedscope(path: Path, top: int = 12) -> tuple[float, tuple[ProfileEntry, ...], tuple[ProfileEntry, ...]]:
    """(sampled seconds, packages by inclusive share, functions by self share). py-spy
    weights each sample by its interval in seconds."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    packages: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0.0
    for profile in data["profiles"]:
        for stack, weight in zip(profile.get("samples", ()), profile.get("weights", ()), strict=False):
            if not stack:
                continue
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
