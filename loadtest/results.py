"""What a load test produces: typed, frozen records, from one request up to a whole run.

Every time is in seconds and measured on the client with ``time.perf_counter()``.
Definitions (stated once, used everywhere):

- **TTFT**: request sent → first ``Delta`` that carries at least one token.
- **E2E latency**: request sent → end of the response stream (after ``Final``).
- **ITL** (inter-token latency), per token: a ``Delta`` carrying ``k`` tokens that arrives
  ``gap`` after the previous token-bearing ``Delta`` contributes ``k`` samples of
  ``gap / k``. The server may coalesce several tokens into one ``Delta`` under load; this
  spreads the gap evenly instead of reporting ``k - 1`` zero gaps and one large one, and
  ``tokens_per_delta`` shows how much coalescing happened. Extra tokens in the *first*
  ``Delta`` get no sample: they arrived with the first token (their cost is in TTFT).
- **TPOT** (time per output token), per request: ``(E2E - TTFT) / (output_tokens - 1)``,
  vLLM's ``bench serve`` definition, so the two are comparable.
- **Throughput** over a level's window: first request sent → last response finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loadtest.config import LoadLevel, LoadTestConfig

__all__ = [
    "SCHEMA_VERSION",
    "ClientHealth",
    "ErrorCount",
    "GroupStats",
    "LatencySummary",
    "LevelResult",
    "LoadTestResult",
    "MediaPoolInfo",
    "RequestRecord",
    "ServerInfo",
    "TargetStats",
]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RequestRecord:
    """One measured request. Times are seconds from the level's start."""

    index: int
    kind: str  # the mix entry ("text", "image", "image+audio", ...)
    start_s: float  # when it was sent
    scheduled_s: float  # when it was meant to be sent (open loop; == start_s closed loop)
    latency_s: float  # E2E on success; time to the failure otherwise
    ttft_s: float | None
    output_tokens: int
    prompt_tokens: int
    deltas: int  # token-bearing Deltas received
    error_code: str | None = None  # gRPC status name, or FINISH_<reason> for a failed Final
    error_message: str | None = None
    server_ttft_s: float | None = None  # Final.timings, for client-vs-server overhead
    server_queue_s: float | None = None
    server_decode_s: float | None = None  # Final.timings.decode_media_s
    # Per-token ITL samples (see module doc). Large: kept in memory, not written to JSON.
    itl_s: tuple[float, ...] = field(default=(), repr=False)
    target: str = ""  # the HOST:PORT it was sent to ("" in results written before targets were recorded)

    @property
    def ok(self) -> bool:
        return self.error_code is None

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.latency_s - self.ttft_s) / (self.output_tokens - 1)


@dataclass(frozen=True)
class LatencySummary:
    """Distribution of one latency, in seconds; all None when there were no samples."""

    count: int
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    min: float | None
    max: float | None


@dataclass(frozen=True)
class ErrorCount:
    code: str
    count: int
    first_message: str


@dataclass(frozen=True)
class GroupStats:
    """Statistics over a group of requests of one level: all of them (kind "all") or one
    mix entry. Rates use the level's window, so per-kind rates add up to the total."""

    kind: str
    requests: int
    succeeded: int
    failed: int
    output_tokens: int
    prompt_tokens: int
    requests_per_s: float
    output_tokens_per_s: float
    prompt_tokens_per_s: float
    ttft: LatencySummary
    itl: LatencySummary
    tpot: LatencySummary
    e2e: LatencySummary
    tokens_per_delta: float | None
    errors: tuple[ErrorCount, ...]


@dataclass(frozen=True)
class ClientHealth:
    """Whether the load generator itself kept up (a busy client inflates latencies)."""

    cpu_s: float  # client process CPU time during the level (all client processes)
    cpu_util: float  # cpu_s / window_s: 1.0 = one core fully busy
    processes: int
    send_lag_p99_s: float | None  # open loop: how late requests left vs their schedule
    send_lag_max_s: float | None


@dataclass(frozen=True)
class TargetStats:
    """Statistics of the requests one target got (a run over several ``--target``s); rates
    use the level's window, so the targets' rates add up to the level's."""

    target: str
    stats: GroupStats


@dataclass(frozen=True)
class LevelResult:
    level: LoadLevel
    window_s: float
    overall: GroupStats
    by_kind: tuple[GroupStats, ...]
    client: ClientHealth
    requests: tuple[RequestRecord, ...]
    by_target: tuple[TargetStats, ...] = ()  # only with more than one target


@dataclass(frozen=True)
class ServerInfo:
    """What the target said about itself (GetModelInfo)."""

    model_name: str
    architecture: str
    max_model_len: int
    max_num_seqs: int
    vllm_version: str
    nanovl_version: str


@dataclass(frozen=True)
class MediaPoolInfo:
    """How many distinct prompts were prepared for a kind and how often they were sent.
    ``sent > unique`` means some were repeated and may have hit the server's caches."""

    kind: str
    unique: int
    sent: int
    mean_media_bytes: float


@dataclass(frozen=True)
class LoadTestResult:
    name: str
    target: str
    started_at: str  # ISO 8601, UTC
    config: LoadTestConfig
    command_line: str  # the equivalent `nanovl loadtest` arguments, for people
    server: ServerInfo | None
    client_host: str
    client_cpus: int
    warmup_requests: int
    media: tuple[MediaPoolInfo, ...]
    levels: tuple[LevelResult, ...]
    schema_version: int = SCHEMA_VERSION

    @property
    def total_errors(self) -> int:
        return sum(level.overall.failed for level in self.levels)
