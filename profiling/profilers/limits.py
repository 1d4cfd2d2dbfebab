"""The bounds of CaptureCpuProfile: the API's own, and the server's maxima (``nanovl serve
--max-cpu-profile-s`` / ``--max-cpu-profile-rate-hz``). Light: ``nanovl serve --help`` imports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nanovl.errors import InvalidArgument

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


@dataclass(frozen=True)
class CpuProfileLimits:
    """What this server lets a caller ask for (``nanovl serve`` flags)."""

    max_duration_s: float = DEFAULT_SERVER_MAX_DURATION_S
    max_rate_hz: int = DEFAULT_SERVER_MAX_RATE_HZ

    def __post_init__(self) -> None:
        if not (0 < self.max_duration_s <= MAX_DURATION_S):
            raise InvalidArgument(
                f"--max-cpu-profile-s must be in (0, {MAX_DURATION_S:.0f}], got {self.max_duration_s}"
            )
        if not (1 <= self.max_rate_hz <= MAX_RATE_HZ):
            raise InvalidArgument(f"--max-cpu-profile-rate-hz must be 1 to {MAX_RATE_HZ}, got {self.max_rate_hz}")

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
