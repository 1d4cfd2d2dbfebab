"""What ``make bench`` measures: sides, workloads, load levels and the one engine configuration.

Every side runs the engine with the same arguments. They are written down once here
(:class:`EngineSettings`) and turned into ``AsyncEngineArgs`` overrides for the
in-process side and into CLI flags for the three servers; :func:`bench.servers.check_flags`
parses those flags back with vLLM's own parser and refuses to run if any field differs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from nanovl.errors import InvalidArgument

__all__ = [
    "ALL_SIDES",
    "FULL_REQUESTS",
    "SIDE_LABELS",
    "WORKLOADS",
    "BenchConfig",
    "EngineSettings",
    "Side",
    "WorkloadSpec",
]

Side = Literal["inprocess", "nanovl", "vllm-http", "vllm-grpc"]
ALL_SIDES: tuple[Side, ...] = ("inprocess", "nanovl", "vllm-http", "vllm-grpc")
SIDE_LABELS: Mapping[Side, str] = {
    "inprocess": "(a) AsyncLLM in-process",
    "nanovl": "(b) nanovl gRPC",
    "vllm-http": "(c) vLLM OpenAI HTTP",
    "vllm-grpc": "(d) vLLM gRPC (smg)",
}


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

# Requests measured per concurrency level in the full run: a few closed-loop rounds per
# level while the whole run stays within ~25 minutes on a 2-core machine.
FULL_REQUESTS: Mapping[int, int] = {1: 8, 8: 32, 32: 64}


@dataclass(frozen=True)
class EngineSettings:
    """The engine arguments every side runs with (besides nanovl's CPU defaults, which
    :meth:`engine_kwargs` adds from ``service.engine``)."""

    max_model_len: int = 2048
    limit_mm_per_prompt: Mapping[str, int] = field(default_factory=lambda: {"image": 1, "video": 1, "audio": 1})
    # Pinned, not left to vLLM: its defaults depend on the usage context, so `vllm serve`
    # (OPENAI_API_SERVER) and AsyncLLM.from_engine_args (ENGINE_CONTEXT) would differ.
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
    sides: tuple[Side, ...] = ALL_SIDES
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
    # Every point is measured this many times, with fresh prompts each time; the report
    # keeps the fastest pass (other processes on a shared machine only ever slow one down)
    # and shows them all.
    passes: int = 2
    engine: EngineSettings = EngineSettings()
    # vLLM's gRPC server takes token ids and no raw media: text only.
    grpc_text_only: bool = True
    # py-spy the nanovl server during one extra (unmeasured) pass of its weakest level.
    profile: bool = True
    quick: bool = False

    def __post_init__(self) -> None:
        unknown = [w for w in self.workloads if w not in WORKLOADS]
        if unknown:
            raise InvalidArgument(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
        bad_sides = [s for s in self.sides if s not in ALL_SIDES]
        if bad_sides:
            raise InvalidArgument(f"unknown side(s) {bad_sides}; choose from {', '.join(ALL_SIDES)}")
        if not self.levels or any(c < 1 or n < 1 for c, n in self.levels):
            raise InvalidArgument(f"levels must be (concurrency >= 1, requests >= 1) pairs, got {self.levels}")
        if self.passes < 1:
            raise InvalidArgument(f"passes must be >= 1, got {self.passes}")
        if self.max_tokens < 2:
            raise InvalidArgument("max_tokens must be >= 2 (inter-token latency needs two tokens)")

    @staticmethod
    def quick_config(**overrides: Any) -> BenchConfig:
        """One workload, c=1 and 4, 4 requests each, sides (a) and (b): for iterating."""
        base = BenchConfig(
            sides=("inprocess", "nanovl"),
            workloads=("image",),
            levels=((1, 4), (4, 4)),
            passes=1,
            profile=False,
            quick=True,
        )
        return replace(base, **overrides)

    def workloads_for(self, side: Side) -> tuple[str, ...]:
        if side == "vllm-grpc" and self.grpc_text_only:
            return tuple(w for w in self.workloads if w == "text")
        return self.workloads
