"""RunDummyProfile: synthetic items of given sizes through the live engine's encoders.

Each entry (one modality, ``count`` items of one size) is processed by vLLM's own
multimodal processor inside the worker and encoded the way the model runner encodes a
prompt's items, timed and memory-metered there
(``NanovlWorkerExtension.nanovl_encode_dummy_prompt``; :meth:`DummyProfiler.run_mix` puts
several modalities in one prompt). Next to it: the exact tokens and the encoder memory
``profiling.sizing.memory_model`` predicts for the same items and engine settings.

The pass runs inside the engine between scheduler steps (``collective_rpc``), so live
requests pause while it runs; entries run one at a time.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nanovl.errors import FailedPrecondition, InvalidArgument, NanovlError, OutOfRange, Unavailable
from nanovl.modalities import Modality
from profiling.sizing.budget import AudioItems, ImageItems, PlanRequest, VideoItems, plan_budget
from service.media import DEFAULT_MEDIA_LIMITS, MediaLimits

if TYPE_CHECKING:
    from vllm.engine.arg_utils import EngineArgs

    from service.engine import Engine

DummyItems = ImageItems | VideoItems | AudioItems

# Raw media a dummy entry may allocate (pixels of one image / all frames of one video /
# samples of one clip): a safety cap, since the pass runs inside the serving worker.
MAX_DUMMY_MEDIA_BYTES = 1 << 30
MAX_DUMMY_ITEMS = 64


def modality_of(items: DummyItems) -> Modality:
    if isinstance(items, ImageItems):
        return "image"
    if isinstance(items, VideoItems):
        return "video"
    return "audio"


@dataclass(frozen=True)
class DummyProfile:
    """Measured vs predicted for one entry (all ``count`` items together)."""

    modality: Modality
    items: DummyItems
    preprocess_s: float  # vLLM's multimodal processor
    encoder_s: float  # embed_multimodal, all items
    tokens: int  # encoder embeddings produced
    prompt_tokens: int  # placeholder tokens the items take in a prompt
    peak_memory_increase_bytes: int
    memory_source: str  # "cuda" or "cpu_tensors"
    peak_rss_increase_bytes: int
    predicted_tokens: int
    predicted_prompt_tokens: int
    predicted_memory_bytes: int

    @property
    def count(self) -> int:
        return self.items.count


@dataclass(frozen=True)
class _Prediction:
    tokens_per_item: int  # the largest item's (for the encoder cache check)
    tokens: int  # all items
    prompt_tokens: int
    memory_bytes: int


def _raw_bytes(items: DummyItems, sampling_rate: int | None) -> int:
    if isinstance(items, ImageItems):
        return (items.width or 0) * (items.height or 0) * 3
    if isinstance(items, VideoItems):
        return items.num_frames * items.width * items.height * 3
    return int(items.seconds * (sampling_rate or 0)) * 4


def validate(engine: Engine, items: DummyItems) -> None:
    """Reject entries the engine cannot take or that could hurt the serving worker."""
    modality = modality_of(items)
    limit = engine.summary.limits.get(modality)
    if limit is None:
        raise FailedPrecondition(f"this server's model does not accept {modality} input")
    if limit == 0:
        raise FailedPrecondition(
            f"{modality} input is disabled on this server (--limit-mm-per-prompt {modality}=0): "
            "there is no encoder pass to profile"
        )
    if not 1 <= items.count <= MAX_DUMMY_ITEMS:
        raise InvalidArgument(f"{modality} count must be 1 to {MAX_DUMMY_ITEMS}, got {items.count}")
    if isinstance(items, ImageItems):
        if not (items.width and items.height and items.width > 0 and items.height > 0):
            raise InvalidArgument(f"an image needs a positive width and height, got {items.width}x{items.height}")
    elif isinstance(items, VideoItems):
        if min(items.num_frames, items.width, items.height) <= 0:
            raise InvalidArgument(
                f"a video needs positive num_frames, width and height, got "
                f"{items.num_frames} frames of {items.width}x{items.height}"
            )
    elif not (items.seconds > 0 and math.isfinite(items.seconds)):
        raise InvalidArgument(f"an audio item needs a positive length in seconds, got {items.seconds}")
    raw = _raw_bytes(items, engine.summary.audio_sample_rate)
    if raw > MAX_DUMMY_MEDIA_BYTES:
        raise InvalidArgument(
            f"one {modality} item of this size is {raw / 2**20:.0f} MiB of raw media, over the dummy "
            f"profile's cap of {MAX_DUMMY_MEDIA_BYTES / 2**20:.0f} MiB; profile a smaller item"
        )


def _predict(
    engine: Engine, engine_args: EngineArgs, items: DummyItems, media_limits: MediaLimits = DEFAULT_MEDIA_LIMITS
) -> _Prediction:
    """Exact tokens and predicted encoder memory for the entry, for the live settings."""
    return _predict_mix(engine, engine_args, [items], media_limits)


def _predict_mix(
    engine: Engine,
    engine_args: EngineArgs,
    entries: Sequence[DummyItems],
    media_limits: MediaLimits = DEFAULT_MEDIA_LIMITS,
) -> _Prediction:
    """Exact tokens and the memory model's encoder peak for one prompt carrying ``entries``."""
    request = PlanRequest(
        max_model_len=engine.summary.max_model_len,
        media_limits=media_limits,
        **{modality_of(items): items for items in entries},
    )
    plan = plan_budget(request, engine.summary.model, engine_args=engine_args)
    plans = [plan.modality(modality_of(items)) for items in entries]
    return _Prediction(
        tokens_per_item=max(p.item.encoder_tokens for p in plans if p.item is not None),
        tokens=sum(p.encoder_tokens for p in plans),
        prompt_tokens=sum(p.prompt_tokens for p in plans),
        memory_bytes=plan.encoder_peak_bytes,
    )


class DummyProfiler:
    """Runs dummy entries one at a time against one engine."""

    def __init__(
        self,
        engine: Engine,
        engine_args: EngineArgs,
        *,
        plan_lock: threading.Lock | None = None,
        media_limits: MediaLimits = DEFAULT_MEDIA_LIMITS,
    ) -> None:
        self._engine = engine
        self._engine_args = engine_args
        self._media_limits = media_limits
        self._plan_lock = plan_lock or threading.Lock()
        self._run_lock = asyncio.Lock()

    def _predict(self, items: DummyItems) -> _Prediction:
        with self._plan_lock:  # vLLM's config building is not re-entrant
            return _predict(self._engine, self._engine_args, items, self._media_limits)

    async def _encoder_cache_size(self) -> int:
        from profiling.sizing.live_budget import worker_facts

        facts = await worker_facts(self._engine)
        return facts.encoder.cache_size_tokens if facts.encoder else 0

    async def run(self, entries: Sequence[DummyItems]) -> tuple[DummyProfile, ...]:
        if not entries:
            raise InvalidArgument("give at least one item entry to profile")
        for items in entries:
            validate(self._engine, items)
        predictions = [await asyncio.to_thread(self._predict, items) for items in entries]
        # A larger item can never be admitted here (vLLM's encoder cache check), and
        # encoding it anyway would only risk the serving worker's memory.
        cache_limit = await self._encoder_cache_size()
        for items, pred in zip(entries, predictions, strict=True):
            if pred.tokens_per_item > cache_limit:
                raise OutOfRange(
                    f"one {modality_of(items)} item of this size takes {pred.tokens_per_item} encoder tokens, "
                    f"more than this server's encoder cache holds ({cache_limit}); the engine would reject "
                    "it, so there is nothing to profile: use a smaller item"
                )
        async with self._run_lock:  # concurrent passes would distort each other's numbers
            results = []
            for items, pred in zip(entries, predictions, strict=True):
                measured = await self._encode(items)
                results.append(_combine(items, measured, pred))
            return tuple(results)

    async def run_mix(self, entries: Sequence[DummyItems]) -> DummyProfile:
        """One prompt carrying every entry (at most one per modality), encoded as the model
        runner encodes a prompt's items; measured vs predicted for the whole prompt.
        The profile's ``modality``/``items`` are the first entry's."""
        if not entries or len({modality_of(e) for e in entries}) != len(entries):
            raise InvalidArgument("a mixed prompt takes one entry per modality")
        for items in entries:
            validate(self._engine, items)
        with self._plan_lock:
            prediction = _predict_mix(self._engine, self._engine_args, entries, self._media_limits)
        async with self._run_lock:
            measured = await self._encode(*entries)
        return _combine(entries[0], measured, prediction)

    async def _encode(self, *entries: DummyItems) -> dict[str, Any]:
        prompt = [_entry(items) for items in entries]
        what = " + ".join(modality_of(items) for items in entries)
        try:
            (first, *_) = await self._engine.llm.collective_rpc("nanovl_encode_dummy_prompt", args=(prompt,))
        except Exception as exc:  # the worker's exception arrives as a plain error
            if self._engine.is_dead:
                raise Unavailable(f"the inference engine has stopped ({exc}); the server must be restarted") from exc
            raise NanovlError(f"the dummy {what} encoder pass failed in the engine: {exc}") from exc
        return first


def _entry(items: DummyItems) -> dict[str, Any]:
    """One entry as ``NanovlWorkerExtension.nanovl_encode_dummy_prompt`` takes it."""
    entry: dict[str, Any] = {"modality": modality_of(items), "count": items.count}
    if isinstance(items, ImageItems):
        entry.update(width=items.width, height=items.height)
    elif isinstance(items, VideoItems):
        entry.update(
            num_frames=items.num_frames,
            width=items.width,
            height=items.height,
            fps=items.fps,
            frame_indices=list(items.indices()),
        )
    else:
        entry.update(seconds=items.seconds)
    return entry


def _combine(items: DummyItems, measured: dict[str, Any], pred: _Prediction) -> DummyProfile:
    return DummyProfile(
        modality=modality_of(items),
        items=items,
        preprocess_s=float(measured["preprocess_s"]),
        encoder_s=float(measured["encoder_s"]),
        tokens=int(sum(measured["tokens_per_item"])),
        prompt_tokens=int(sum(measured["prompt_tokens_per_item"])),
        peak_memory_increase_bytes=int(measured["peak_memory_increase_bytes"]),
        memory_source=str(measured["memory_source"]),
        peak_rss_increase_bytes=int(measured["peak_rss_increase_bytes"]),
        predicted_tokens=pred.tokens,
        predicted_prompt_tokens=pred.prompt_tokens,
        predicted_memory_bytes=pred.memory_bytes,
    )
