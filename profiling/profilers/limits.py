"""The bounds of the profilers: the API's own, and the server's maxima (``nanovl serve``
flags). Light: ``nanovl serve --help`` imports it.

CaptureCpuProfile: ``--max-cpu-profile-s``, ``--max-cpu-profile-rate-hz``,
``--max-native-profile-rate-hz``. Start/StopTorchProfile: ``--max-torch-profile-steps``,
``--max-torch-profile-s``, ``--max-torch-profile-memory``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nanovl.errors import InvalidArgument
from nanovl.units import MiB, format_bytes

if TYPE_CHECKING:
    from profiling.profilers.cpu_profile import CpuProfileRequest

DEFAULT_DURATION_S = 10.0
MAX_DURATION_S = 300.0
DEFAULT_RATE_HZ = 100
MAX_RATE_HZ = 1000
# The server's own maxima unless the operator says otherwise: at 1000 Hz py-spy halves the
# throughput of a 2-core server, at 100 Hz its cost is small.
DEFAULT_SERVER_MAX_DURATION_S = 60.0
DEFAULT_SERVER_MAX_RATE_HZ = 100
# Native stacks: py-spy cannot unwind them without pausing the process ("Can't get native
# stack traces with the --nonblocking option"), so every native sample stops every thread
# of the process while it reads and unwinds them. py-spy spent 1.0-1.7 ms of CPU per native
# sample of a busy 9-thread process (an upper bound on the pause): at 20 Hz the process is
# stopped at most ~2-4 % of the time, at 100 Hz ~10 % (docs/profiling.md).
DEFAULT_SERVER_MAX_NATIVE_RATE_HZ = 20


@dataclass(frozen=True)
class CpuProfileLimits:
    """What this server lets a caller ask of CaptureCpuProfile (``nanovl serve`` flags)."""

    max_duration_s: float = DEFAULT_SERVER_MAX_DURATION_S
    max_rate_hz: int = DEFAULT_SERVER_MAX_RATE_HZ
    max_native_rate_hz: int = DEFAULT_SERVER_MAX_NATIVE_RATE_HZ

    def __post_init__(self) -> None:
        if not (0 < self.max_duration_s <= MAX_DURATION_S):
            raise InvalidArgument(
                f"--max-cpu-profile-s must be in (0, {MAX_DURATION_S:.0f}], got {self.max_duration_s}"
            )
        if not (1 <= self.max_rate_hz <= MAX_RATE_HZ):
            raise InvalidArgument(f"--max-cpu-profile-rate-hz must be 1 to {MAX_RATE_HZ}, got {self.max_rate_hz}")
        if not (1 <= self.max_native_rate_hz <= MAX_RATE_HZ):
            raise InvalidArgument(
                f"--max-native-profile-rate-hz must be 1 to {MAX_RATE_HZ}, got {self.max_native_rate_hz}"
            )

    def default_rate_hz(self, native: bool) -> int:
        """The rate of a request that names none."""
        return min(DEFAULT_RATE_HZ, self.max_native_rate_hz if native else self.max_rate_hz)

    def check(self, request: CpuProfileRequest) -> None:
        if request.duration_s > self.max_duration_s:
            raise InvalidArgument(
                f"duration_s {request.duration_s:g} is above this server's maximum of {self.max_duration_s:g} s "
                "(nanovl serve --max-cpu-profile-s)"
            )
        if request.rate_hz > self.max_rate_hz:
            raise InvalidArgument(
                f"rate_hz {request.rate_hz} is above this server's maximum of {self.max_rate_hz} Hz "
                "(nanovl serve --max-cpu-profile-rate-hz)"
            )
        if request.native and request.rate_hz > self.max_native_rate_hz:
            raise InvalidArgument(
                f"rate_hz {request.rate_hz} is above this server's maximum for native sampling, "
                f"{self.max_native_rate_hz} Hz (nanovl serve --max-native-profile-rate-hz): py-spy pauses the "
                "process for every native sample; ask for a lower rate or leave rate_hz unset"
            )


# ------------------------------------------------------------------------ torch profiler

# Engine steps one torch profile session records unless the caller says otherwise, and the
# server's maximum. On CPU, with nanovl's profiler defaults (no stacks, shapes or memory),
# 50 steps of the tiny model under load grew the worker by 43 MiB while recording and by
# 180 MiB at its export (834 KiB of gzipped trace); the export runs in the engine, between
# steps, so the maximum keeps it to a few hundred MiB and seconds (docs/profiling.md). A
# larger model records more ops per step: lower --max-torch-profile-steps for it.
DEFAULT_TORCH_PROFILE_STEPS = 50
DEFAULT_SERVER_MAX_TORCH_PROFILE_STEPS = 200
# vLLM's executor gives a step 300 s (VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS) before it
# declares the engine dead; a session ends long before that.
DEFAULT_SERVER_MAX_TORCH_PROFILE_S = 60.0
MAX_TORCH_PROFILE_S = 600.0
# The growth of any engine process's resident memory at which the server ends a session.
DEFAULT_SERVER_MAX_TORCH_PROFILE_MEMORY = 512 * MiB
MIN_TORCH_PROFILE_MEMORY = 16 * MiB


@dataclass(frozen=True)
class TorchProfileBounds:
    """The bounds one torch profile session runs under."""

    max_steps: int
    max_duration_s: float
    max_memory_growth_bytes: int


@dataclass(frozen=True)
class TorchProfileLimits:
    """What this server lets a caller ask of StartTorchProfile (``nanovl serve`` flags)."""

    max_steps: int = DEFAULT_SERVER_MAX_TORCH_PROFILE_STEPS
    max_duration_s: float = DEFAULT_SERVER_MAX_TORCH_PROFILE_S
    max_memory_growth_bytes: int = DEFAULT_SERVER_MAX_TORCH_PROFILE_MEMORY

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise InvalidArgument(f"--max-torch-profile-steps must be at least 1, got {self.max_steps}")
        if not (0 < self.max_duration_s <= MAX_TORCH_PROFILE_S):
            raise InvalidArgument(
                f"--max-torch-profile-s must be in (0, {MAX_TORCH_PROFILE_S:.0f}], got {self.max_duration_s}"
            )
        if self.max_memory_growth_bytes < MIN_TORCH_PROFILE_MEMORY:
            raise InvalidArgument(
                f"--max-torch-profile-memory must be at least {format_bytes(MIN_TORCH_PROFILE_MEMORY)}, "
                f"got {format_bytes(self.max_memory_growth_bytes)}"
            )

    def bounds(self, max_steps: int | None, max_duration_s: float | None) -> TorchProfileBounds:
        """The session's bounds from the request's (None: the server's defaults).

        Raises ``InvalidArgument`` for 0 steps (vLLM's "no limit"), a non-positive or
        non-finite duration, and anything above the server's maxima (naming its flag)."""
        if max_steps is None:
            steps = min(DEFAULT_TORCH_PROFILE_STEPS, self.max_steps)
        elif max_steps == 0:
            raise InvalidArgument(
                "max_iterations 0 means no limit to vLLM, and a torch profile is always bounded here: "
                f"ask for 1 to {self.max_steps} engine steps (or leave it unset: {DEFAULT_TORCH_PROFILE_STEPS})"
            )
        elif max_steps > self.max_steps:
            raise InvalidArgument(
                f"max_iterations {max_steps} is above this server's maximum of {self.max_steps} engine steps "
                "(nanovl serve --max-torch-profile-steps)"
            )
        else:
            steps = max_steps
        if max_duration_s is None:
            duration = self.max_duration_s
        elif not math.isfinite(max_duration_s) or max_duration_s <= 0:
            raise InvalidArgument(f"max_duration_s must be a positive number of seconds, got {max_duration_s}")
        elif max_duration_s > self.max_duration_s:
            raise InvalidArgument(
                f"max_duration_s {max_duration_s:g} is above this server's maximum of {self.max_duration_s:g} s "
                "(nanovl serve --max-torch-profile-s)"
            )
        else:
            duration = max_duration_s
        return TorchProfileBounds(steps, duration, self.max_memory_growth_bytes)


@dataclass(frozen=True)
class OperatorLimits:
    """What the operator surface may do on this server."""

    # Directories PlanBudget.model_path may point into (resolved; symlinks followed).
    plan_model_dirs: tuple[Path, ...] = ()
    cpu_profile: CpuProfileLimits = field(default_factory=CpuProfileLimits)
    torch_profile: TorchProfileLimits = field(default_factory=TorchProfileLimits)

    def __post_init__(self) -> None:
        object.__setattr__(self, "plan_model_dirs", tuple(Path(os.path.realpath(d)) for d in self.plan_model_dirs))
