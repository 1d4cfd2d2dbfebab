"""What ``make bench`` measures: sides, workloads, load levels, passes, the upload case,
the profile points and the one engine configuration.

Every side runs the engine with the same arguments. They are written down once here
(:class:`EngineSettings`) and turned into ``AsyncEngineArgs`` overrides for the
in-process side and into CLI flags for the servers; :func:`bench.servers.inprocess_overrides`
parses those flags back with vLLM's own parser and refuses to run if any field differs.

A side is a :class:`SideSpec`: the kind of frontend (``inprocess``, ``nanovl``,
``vllm-http``, ``vllm-grpc``, ``vllm-rust``), its label and any flags of its own on top of
the shared engine flags. nanovl variants (``--nanovl-variant ID=FLAGS``, e.g.
``x2=--frontend-processes 2``) are nanovl sides with extra ``nanovl serve`` flags; a
server that does not know a flag is skipped with the reason recorded.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from nanovl.errors import InvalidArgument

__all__ = [
    "BUILTIN_SIDES",
    "DEFAULT_SIDES",
    "FULL_REQUESTS",
    "PROFILE_POINTS",
    "WORKLOADS",
    "BenchConfig",
    "EngineSettings",
    "PassPolicy",
    "Side",
    "SideKind",
    "SideSpec",
    "UploadSpec",
    "WorkloadSpec",
    "parse_variant",
]

# A side's id (a key of BenchConfig.side_specs).
Side = str
SideKind = Literal["inprocess", "nanovl", "vllm-http", "vllm-grpc", "vllm-rust"]
PEER_KINDS: tuple[SideKind, ...] = ("vllm-http", "vllm-grpc", "vllm-rust")


@dataclass(frozen=True)
class SideSpec:
    """One side of the benchmark.

    ``extra_flags`` go after the shared engine flags on the server's command line (nanovl
    variants); ``text_only`` sides take token ids or text and no raw media, so they run
    the text workload only."""

    id: Side
    kind: SideKind
    label: str
    extra_flags: tuple[str, ...] = ()
    text_only: bool = False

    @property
    def is_peer(self) -> bool:
        """A frontend nanovl is compared with (vLLM's servers), not nanovl or no frontend."""
        return self.kind in PEER_KINDS

    @property
    def frontend_processes(self) -> int:
        """``N`` of a nanovl side's ``--frontend-processes N`` (1 without it)."""
        flags = list(self.extra_flags)
        value = "1"
        for i, flag in enumerate(flags):
            if flag == "--frontend-processes" and i + 1 < len(flags):
                value = flags[i + 1]
            elif flag.startswith("--frontend-processes="):
                value = flag.partition("=")[2]
        return int(value) if value.isdigit() else 1  # a bad value: the server refuses it

    @property
    def connections(self) -> int:
        """Channels the load tester opens to this side: 1, or 16 per frontend process when
        there are several. They share one port (SO_REUSEPORT) and the kernel deals each
        connection to a process independently, never the calls of one, so one channel would
        keep all but one process idle and a few split the load unevenly (verify-16b: 8
        connections over 2 processes split 10/30 twice in six runs); with 16 N the split is
        near even and a process left idle has probability about N (1 - 1/N)^(16 N). The
        split still varies: the report shows the busiest process's share."""
        n = self.frontend_processes
        return 1 if n <= 1 else 16 * n


BUILTIN_SIDES: Mapping[Side, SideSpec] = {
    s.id: s
    for s in (
        SideSpec("inprocess", "inprocess", "(a) AsyncLLM in-process"),
        SideSpec("nanovl", "nanovl", "(b) nanovl gRPC"),
        # `nanovl serve --frontend-processes 2` (issue 16), driven over 32 connections.
        SideSpec("nanovl-x2", "nanovl", "(b2) nanovl gRPC, 2 frontend processes", ("--frontend-processes", "2")),
        SideSpec("vllm-http", "vllm-http", "(c) vLLM OpenAI HTTP"),
        # Token ids in, no raw media: text only.
        SideSpec("vllm-grpc", "vllm-grpc", "(d) vLLM gRPC (smg)", text_only=True),
        # vLLM's Rust frontend (`VLLM_USE_RUST_FRONTEND=1 vllm serve --grpc-port`): only in the
        # GPU `vllm` wheels; detected as unavailable (and skipped) where its binary is absent.
        SideSpec("vllm-rust", "vllm-rust", "(e) vLLM Rust frontend gRPC", text_only=True),
    )
}
DEFAULT_SIDES: tuple[Side, ...] = tuple(BUILTIN_SIDES)


def parse_variant(text: str, index: int = 0) -> SideSpec:
    """``ID=FLAGS`` (e.g. ``x2=--frontend-processes 2``) → a nanovl side ``nanovl-ID`` with
    those extra ``nanovl serve`` flags. Raises ``InvalidArgument`` on a malformed value."""
    name, sep, flags = text.partition("=")
    name = name.strip()
    if not sep or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise InvalidArgument(f"a nanovl variant is ID=FLAGS (e.g. x2=--frontend-processes 2), got {text!r}")
    args = tuple(shlex.split(flags))
    if not args or not args[0].startswith("--"):
        raise InvalidArgument(f"nanovl variant {name!r} needs at least one --flag, got {flags!r}")
    side = name if name.startswith("nanovl-") else f"nanovl-{name}"
    return SideSpec(side, "nanovl", f"(b{index + 3}) nanovl gRPC {' '.join(args)}", args)


@dataclass(frozen=True)
class WorkloadSpec:
    """One workload: a ``nanovl loadtest`` mix (every prompt also carries a text part)."""

    name: str
    mix: str
    description: str


WORKLOADS: Mapping[str, WorkloadSpec] = {
    w.name: w
    for w in (
        WorkloadSpec("text", "text=1", "text only"),
        WorkloadSpec("image", "image=1", "one image + text per request"),
        WorkloadSpec(
            "mixed",
            "text=1,image=1,video=1,audio=1",
            "equal shares of text, image, video and audio requests (one media item + text each)",
        ),
    )
}

# Requests measured per concurrency level in the full run: at least two closed-loop rounds
# at c >= 8, while the whole run (5 engine starts, adaptive passes, the upload case and
# three native profiles) stays within ~30 minutes on a quiet 2-core machine.
FULL_REQUESTS: Mapping[int, int] = {1: 8, 8: 32, 32: 96, 128: 256}

# nanovl frontend profiled with py-spy --native (issue 16): (workload, concurrency).
PROFILE_POINTS: tuple[tuple[str, int], ...] = (("text", 8), ("text", 32), ("mixed", 8))


@dataclass(frozen=True)
class PassPolicy:
    """How many times each point is measured.

    Every point gets ``min_passes`` interleaved passes (all levels once, then again). A
    point is *settled* when its two fastest error-free passes agree within
    ``agree_within`` (relative to the fastest): interference from other processes only
    slows a pass down, so two fast passes that agree are the undisturbed figure. An
    unsettled point gets another pass, up to ``max_passes``, while the side has spent less
    than ``extra_budget_s`` seconds on extra passes (the same rule and budget for every side).
    """

    min_passes: int = 2
    max_passes: int = 4
    agree_within: float = 0.10
    extra_budget_s: float = 150.0

    def __post_init__(self) -> None:
        if self.min_passes < 1 or self.max_passes < self.min_passes:
            raise InvalidArgument(
                f"passes: need 1 <= min_passes <= max_passes, got {self.min_passes} and {self.max_passes}"
            )
        if not 0 < self.agree_within < 1:
            raise InvalidArgument(f"agree_within must be in (0, 1), got {self.agree_within}")


@dataclass(frozen=True)
class UploadSpec:
    """The chunked-upload case (issue 16): one large video through ``StreamGenerate`` in
    ``chunk_size`` chunks against the same kind of request sent with ``Generate``, whose
    server-side TTFT starts with the whole video already in the server's memory.

    The video (H.264 MP4, ``width``×``height`` at ``fps``, keyframe every ``gop`` frames) is
    film-grain noise over moving smooth colour fields, seeded, so it does not compress to
    nothing: frames are added until the file reaches ``target_bytes``."""

    enabled: bool = True
    target_bytes: int = 20 * 1024 * 1024
    chunk_size: int = 64 * 1024
    repeats: int = 5  # requests per variant, each with its own video
    width: int = 1280
    height: int = 720
    fps: int = 24
    gop: int = 48
    grain: int = 7  # luma grain amplitude (uniform, ±grain on 0-255; chroma a third of it)
    num_frames: int = 8  # frames the server samples (Video.num_frames)
    max_tokens: int = 8


@dataclass(frozen=True)
class EngineSettings:
    """The engine arguments every side runs with (besides nanovl's CPU defaults, which
    :meth:`engine_kwargs` adds from ``service.engine``)."""

    max_model_len: int = 2048
    limit_mm_per_prompt: Mapping[str, int] = field(default_factory=lambda: {"image": 1, "video": 1, "audio": 1})
    # Pinned, not left to vLLM: its defaults depend on the usage context, so `vllm serve`
    # (OPENAI_API_SERVER) and AsyncLLM.from_engine_args (ENGINE_CONTEXT) would differ.
    # 128: the highest concurrency level, so every request of it is in flight at once.
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048

    def engine_kwargs(self) -> dict[str, Any]:
        """``AsyncEngineArgs`` fields, exactly as nanovl's ``default_engine_args`` sets them."""
        from service.engine import CPU_ENGINE_DEFAULTS, WORKER_EXTENSION_CLS, on_cpu

        kwargs: dict[str, Any] = {
            "trust_remote_code": True,
            "worker_extension_cls": WORKER_EXTENSION_CLS,
        }
        if on_cpu():
            kwargs.update(CPU_ENGINE_DEFAULTS)
        kwargs.update(
            max_model_len=self.max_model_len,
            limit_mm_per_prompt=dict(self.limit_mm_per_prompt),
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
        )
        return kwargs

    def overrides(self) -> dict[str, Any]:
        """What ``default_engine_args(model, **overrides)`` needs on top of its defaults."""
        return {
            "max_model_len": self.max_model_len,
            "limit_mm_per_prompt": dict(self.limit_mm_per_prompt),
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
        }

    def cli_flags(self) -> list[str]:
        """The same arguments as vLLM CLI flags (``--no-x`` for a false boolean)."""
        flags: list[str] = []
        for name, value in self.engine_kwargs().items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                flags.append(flag)
            elif value is False:
                flags.append("--no-" + name.replace("_", "-"))
            elif isinstance(value, Mapping):
                flags += [flag, json.dumps(dict(value), separators=(",", ":"))]
            else:
                flags += [flag, str(value)]
        return flags


@dataclass(frozen=True)
class BenchConfig:
    sides: tuple[Side, ...] = DEFAULT_SIDES
    # nanovl variants added with --nanovl-variant (besides the built-in sides).
    variants: tuple[SideSpec, ...] = ()
    workloads: tuple[str, ...] = ("text", "image", "mixed")
    # (concurrency, measured requests) per level, in order.
    levels: tuple[tuple[int, int], ...] = tuple(FULL_REQUESTS.items())
    max_tokens: int = 32
    prompt_words: int = 16
    # Small media, so the run fits in its time budget on 2 cores.
    image_size: tuple[int, int] = (448, 336)
    video_frames: int = 4
    video_size: tuple[int, int] = (160, 112)
    video_fps: float = 4.0
    audio_seconds: float = 2.0
    seed: int = 1234
    passes: PassPolicy = PassPolicy()
    engine: EngineSettings = EngineSettings()
    # py-spy --native on the nanovl server during extra (unmeasured) passes of these points.
    profile: bool = True
    profile_points: tuple[tuple[str, int], ...] = PROFILE_POINTS
    # Requests of a profiled pass, per unit of concurrency (long enough for ~1000s of samples).
    profile_requests_per_slot: int = 12
    upload: UploadSpec = UploadSpec()
    quick: bool = False

    def __post_init__(self) -> None:
        unknown = [w for w in self.workloads if w not in WORKLOADS]
        if unknown:
            raise InvalidArgument(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
        specs = self.side_specs
        bad_sides = [s for s in self.sides if s not in specs]
        if bad_sides:
            raise InvalidArgument(f"unknown side(s) {bad_sides}; choose from {', '.join(specs)}")
        if len(set(self.sides)) != len(self.sides):
            raise InvalidArgument(f"a side is listed twice: {self.sides}")
        if not self.levels or any(c < 1 or n < 1 for c, n in self.levels):
            raise InvalidArgument(f"levels must be (concurrency >= 1, requests >= 1) pairs, got {self.levels}")
        if len({c for c, _ in self.levels}) != len(self.levels):
            raise InvalidArgument(f"a concurrency is listed twice: {self.levels}")
        if self.max_tokens < 2:
            raise InvalidArgument("max_tokens must be >= 2 (inter-token latency needs two tokens)")
        bad_profile = [w for w, _ in self.profile_points if w not in WORKLOADS]
        if bad_profile:
            raise InvalidArgument(f"unknown profile workload(s) {bad_profile}")

    @property
    def side_specs(self) -> dict[Side, SideSpec]:
        """Every side this config can name: the built-in ones and the variants."""
        specs = dict(BUILTIN_SIDES)
        for v in self.variants:
            if v.id in specs:
                raise InvalidArgument(f"nanovl variant {v.id!r} clashes with a built-in side")
            specs[v.id] = v
        return specs

    def spec(self, side: Side) -> SideSpec:
        return self.side_specs[side]

    def label(self, side: Side) -> str:
        spec = self.side_specs.get(side)
        return spec.label if spec is not None else side

    @staticmethod
    def quick_config(**overrides: Any) -> BenchConfig:
        """One workload, c=1 and 4, 4 requests each, one pass, sides (a) and (b), no
        profile and no upload case: for iterating."""
        base = BenchConfig(
            sides=("inprocess", "nanovl"),
            workloads=("image",),
            levels=((1, 4), (4, 4)),
            passes=PassPolicy(min_passes=1, max_passes=1),
            profile=False,
            upload=replace(UploadSpec(), enabled=False, repeats=2),
            quick=True,
        )
        return replace(base, **overrides)

    def workloads_for(self, side: Side) -> tuple[str, ...]:
        if self.spec(side).text_only:
            return tuple(w for w in self.workloads if w == "text")
        return self.workloads

    @property
    def concurrencies(self) -> tuple[int, ...]:
        return tuple(c for c, _ in self.levels)
