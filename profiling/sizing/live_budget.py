"""GetBudget: the running engine's budgets, caches and memory, read from the engine itself.

Settings come from the front end's ``VllmConfig``; the KV cache, encoder budget, Mamba
state, weights and device memory from the worker (``NanovlWorkerExtension
.nanovl_budget_facts`` through ``collective_rpc``), i.e. from the objects vLLM actually
built; process memory from psutil over this process and its children. nanovl's exact
per-item maximum comes from the budget planner (``profiling.sizing.budget``) for the same
engine settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from model.token_accounting import ItemTokens, audio_tokens, image_tokens, video_tokens
from nanovl.errors import NanovlError, OutOfRange, Unavailable
from nanovl.modalities import MODALITIES, Modality
from profiling.request_bounds import MIN_AUDIO_S
from profiling.sizing.budget import AudioItems, ImageItems, PlanRequest, VideoItems, plan_budget
from profiling.sizing.exact_sizing import EncoderSizing, ExactSizingReport, item_reports, vllm_default_sizing
from profiling.telemetry.metrics import EncoderBudgetSnapshot
from service.media import DEFAULT_MEDIA_LIMITS, MediaLimits

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.engine.arg_utils import EngineArgs

    from service.engine import Engine

ProcessRole = Literal["server", "engine_core", "worker"]
MediaItem = ImageItems | VideoItems | AudioItems

# vLLM's CPU worker skips its start-up profile run in exactly this case (see
# CPUWorker._should_warm_up_model); the GPU worker always profiles.
EAGER_CPU_NOTE = (
    "vLLM skipped its start-up dummy profile: eager mode (enforce_eager) on CPU with an explicit "
    "KV cache size runs no warm-up; compile mode (or a GPU) profiles it"
)


# ------------------------------------------------------------------------ results


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    role: ProcessRole
    name: str
    rss_bytes: int


@dataclass(frozen=True)
class GpuMemory:
    allocated_bytes: int
    reserved_bytes: int
    peak_allocated_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class KvCache:
    num_blocks: int
    block_size: int
    bytes: int  # the one backing allocation all KV cache groups share
    capacity_tokens: int  # vLLM's group-aware capacity (Mamba blocks set aside)
    max_concurrency: float

    @property
    def tokens(self) -> int:
        return self.num_blocks * self.block_size


@dataclass(frozen=True)
class EncoderBudget:
    """vLLM's encoder budget as its model runner holds it (``MultiModalBudget``)."""

    max_tokens_per_item: Mapping[str, int]
    max_items_per_batch: Mapping[str, int]
    compute_budget_tokens: int
    cache_size_tokens: int
    bytes_per_token: int  # LLM hidden size x dtype bytes (one embedding)
    profile_modality: Modality | None  # what vLLM's profile uses for these settings
    profile_items: int
    profiled: bool  # whether that profile actually ran at start-up
    profile_note: str  # why not, when it did not

    @property
    def compute_budget_bytes(self) -> int:
        return self.compute_budget_tokens * self.bytes_per_token

    @property
    def cache_size_bytes(self) -> int:
        return self.cache_size_tokens * self.bytes_per_token

    def sizing(self) -> EncoderSizing:
        """The applied sizing, in the form GetBudget sets beside vLLM's default."""
        return EncoderSizing(
            max_tokens_per_item=dict(self.max_tokens_per_item),
            compute_budget_tokens=self.compute_budget_tokens,
            cache_size_tokens=self.cache_size_tokens,
            cache_size_bytes=self.cache_size_bytes,
            profile_modality=self.profile_modality,
            profile_items=self.profile_items,
        )

    def snapshot(self) -> EncoderBudgetSnapshot:
        return EncoderBudgetSnapshot(
            budget_tokens=self.compute_budget_tokens,
            cache_size_tokens=self.cache_size_tokens,
            cache_size_bytes=self.cache_size_bytes,
        )


@dataclass(frozen=True)
class WorkerFacts:
    """What ``nanovl_budget_facts`` reports from one worker."""

    pid: int
    rank: int
    kv_cache: KvCache
    mamba_state_bytes_per_seq: int
    weights_bytes: int
    encoder: EncoderBudget | None  # None: text-only engine
    gpu: GpuMemory | None

    @classmethod
    def from_rpc(cls, facts: Mapping[str, Any], *, bytes_per_token: int) -> WorkerFacts:
        enc = facts["encoder"]
        encoder = None
        if enc.get("enabled"):
            encoder = EncoderBudget(
                max_tokens_per_item=dict(enc["max_tokens_per_item"]),
                max_items_per_batch=dict(enc["max_items_per_batch"]),
                compute_budget_tokens=int(enc["compute_budget_tokens"]),
                cache_size_tokens=int(enc["cache_size_tokens"]),
                bytes_per_token=bytes_per_token,
                profile_modality=enc["profile_modality"],
                profile_items=int(enc["profile_items"]),
                profiled=bool(enc["profiled"]),
                profile_note="" if enc["profiled"] else _profile_note(enc),
            )
        gpu = facts.get("gpu")
        return cls(
            pid=int(facts["pid"]),
            rank=int(facts["rank"]),
            kv_cache=KvCache(
                num_blocks=int(facts["num_blocks"]),
                block_size=int(facts["block_size"]),
                bytes=int(facts["kv_cache_bytes"]),
                capacity_tokens=int(facts["kv_capacity_tokens"]),
                max_concurrency=float(facts["kv_max_concurrency"]),
            ),
            mamba_state_bytes_per_seq=int(facts["mamba_state_bytes_per_seq"]),
            weights_bytes=int(facts["weights_bytes"]),
            encoder=encoder,
            gpu=GpuMemory(int(gpu["allocated"]), int(gpu["reserved"]), int(gpu["peak"]), int(gpu["total"]))
            if gpu
            else None,
        )


def _profile_note(enc: Mapping[str, Any]) -> str:
    if not enc["max_tokens_per_item"] or enc["compute_budget_tokens"] <= 0:
        return "no modality is enabled: nothing to profile"
    return EAGER_CPU_NOTE


@dataclass(frozen=True)
class LargestItem:
    """The largest single item of a modality that fits the context alone."""

    item: MediaItem
    tokens: ItemTokens


@dataclass(frozen=True)
class ModalityBudget:
    modality: Modality
    item_limit: int
    vllm_max_tokens_per_item: int
    largest: LargestItem | None  # None when the modality is disabled (or nothing fits)

    @property
    def nanovl_max_tokens_per_item(self) -> int:
        return self.largest.tokens.encoder_tokens if self.largest else 0


@dataclass(frozen=True)
class LiveBudget:
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    limit_mm_per_prompt: Mapping[str, int]
    modalities: tuple[ModalityBudget, ...]
    encoder: EncoderBudget | None
    kv_cache: KvCache
    mamba_state_bytes_per_seq: int
    weights_bytes: int
    processes: tuple[ProcessMemory, ...]
    gpu: GpuMemory | None
    exact_sizing: ExactSizingReport | None = None  # None: text-only engine


# ------------------------------------------------------------------------ processes


def _role_of(proc: Any, depth: int) -> ProcessRole | None:
    """vLLM titles its processes ``VLLM::EngineCore`` / ``VLLM::Worker...`` (setproctitle);
    without a title, a spawned child of the server is the engine core and its
    descendants are workers."""
    import psutil

    try:
        title = " ".join(proc.cmdline()) or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if "DecodeWorker" in title:  # nanovl's media decoders (service.decode_workers), not vLLM's
        return None
    if "EngineCore" in title:
        return "engine_core"
    if "Worker" in title and "VLLM" in title:
        return "worker"
    if "spawn_main" in title and "resource_tracker" not in title:
        return "engine_core" if depth == 1 else "worker"
    return None  # resource trackers, profilers, other helpers


def engine_processes() -> tuple[ProcessMemory, ...]:
    """This server process and the vLLM engine processes under it, with their RSS."""
    import psutil

    me = psutil.Process()
    out = [ProcessMemory(me.pid, "server", me.name(), me.memory_info().rss)]

    def walk(proc: Any, depth: int) -> None:
        try:
            children = proc.children()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return
        for child in children:
            role = _role_of(child, depth)
            if role is not None:
                try:
                    title = (child.cmdline() or [child.name()])[0]
                    out.append(ProcessMemory(child.pid, role, title.strip(), child.memory_info().rss))
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            walk(child, depth + 1)

    walk(me, 1)
    return tuple(out)


# ------------------------------------------------------------------------ exact maxima


def largest_items(
    model_path: str | os.PathLike[str],
    modalities: tuple[Modality, ...],
    *,
    engine_args: EngineArgs | None = None,
    max_model_len: int | None = None,
    max_num_tiles: int | None = None,
    video_pruning_rate: float | None = None,
    media_limits: MediaLimits = DEFAULT_MEDIA_LIMITS,
) -> dict[Modality, LargestItem | None]:
    """For each modality, the largest single item a prompt can carry alone (count 1, no
    text) under ``max_model_len`` and within the server's ``media_limits`` (so the
    server accepts it), and its exact tokens. Images: the tiler's largest grid (or the
    dynamic tiler's largest square); video: the most frames at vLLM's dummy frame size
    and timing (2 fps from frame 0); audio: the longest clip, at 10 ms resolution.
    Blocking (vLLM's config and processor are built): run it off the event loop."""
    base = PlanRequest(
        max_model_len=max_model_len,
        max_num_tiles=max_num_tiles,
        video_pruning_rate=video_pruning_rate,
        media_limits=media_limits,
    )
    geom = plan_budget(base, model_path, engine_args=engine_args).geometry
    side = geom.image_size
    probes: dict[Modality, PlanRequest] = {
        "image": dataclasses.replace(base, image=ImageItems(1)),
        "video": dataclasses.replace(base, video=VideoItems(1, 1, side, side)),
        # One 16 kHz sample: within any --exact-mm-sizing declaration (verify-13b N1).
        "audio": dataclasses.replace(base, audio=AudioItems(1, MIN_AUDIO_S)),
    }
    out: dict[Modality, LargestItem | None] = {}
    for m in modalities:
        if m == "audio" and not geom.supports_audio:
            out[m] = None
            continue
        rec = plan_budget(probes[m], model_path, engine_args=engine_args).recommendation
        item = {"image": rec.largest_image, "video": rec.largest_video, "audio": rec.largest_audio}[m]
        out[m] = None if item is None else LargestItem(item, item_tokens(geom, item))
    return out


def is_unsized(request: PlanRequest, modality: Modality) -> bool:
    """Whether the request asks for ``modality`` without giving any item size."""
    if modality == "image":
        it = request.image
        return it.count > 0 and not it.width and not it.height
    if modality == "video":
        v = request.video
        return v.count > 0 and not (v.num_frames or v.width or v.height)
    return request.audio.count > 0 and not request.audio.seconds


def resolve_unsized(
    request: PlanRequest, model_path: str | os.PathLike[str], *, engine_args: EngineArgs | None = None
) -> PlanRequest:
    """``request`` with every unsized modality set to its largest item that fits alone
    (:func:`largest_items`), keeping the counts. Blocking."""
    unsized = tuple(m for m in MODALITIES if is_unsized(request, m))
    if not unsized:
        return request
    largest = largest_items(
        model_path,
        unsized,
        engine_args=engine_args,
        max_model_len=request.max_model_len,
        max_num_tiles=request.max_num_tiles,
        video_pruning_rate=request.video_pruning_rate,
        media_limits=request.media_limits,
    )
    updates: dict[str, MediaItem] = {}
    for m in unsized:
        found = largest[m]
        if found is None:
            raise OutOfRange(
                f"no single {m} item fits the context (max_model_len {request.max_model_len or 'default'}) "
                f"even alone: raise max_model_len or give the {m} size explicitly"
            )
        updates[m] = dataclasses.replace(found.item, count=getattr(request, m).count)
    return dataclasses.replace(request, **updates)


def item_tokens(geom: Any, item: MediaItem) -> ItemTokens:
    """Exact tokens of one item alone in its prompt."""
    if isinstance(item, ImageItems):
        assert item.width is not None and item.height is not None
        return image_tokens(geom, item.width, item.height)
    if isinstance(item, VideoItems):
        return video_tokens(
            geom, item.num_frames, item.width, item.height, fps=item.fps, frame_indices=item.frame_indices
        )
    return audio_tokens(geom, seconds=item.seconds)


# ------------------------------------------------------------------------ reader


def bytes_per_token(vllm_config: VllmConfig) -> int:
    """Bytes of one encoder embedding as the encoder cache stores it."""
    mc = vllm_config.model_config
    return int(mc.get_hidden_size()) * mc.dtype.itemsize


def frontend_encoder_snapshot(vllm_config: VllmConfig) -> EncoderBudgetSnapshot | None:
    """vLLM's encoder budget for this config, computed in this process (no engine call)."""
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.encoder_budget import MultiModalBudget

    if not vllm_config.model_config.is_multimodal_model:
        return None
    budget = MultiModalBudget(vllm_config, MULTIMODAL_REGISTRY, enable_cache=False)
    if not budget.mm_max_toks_per_item:
        return None
    tokens = int(budget.encoder_cache_size)
    return EncoderBudgetSnapshot(
        budget_tokens=int(budget.encoder_compute_budget),
        cache_size_tokens=tokens,
        cache_size_bytes=tokens * bytes_per_token(vllm_config),
    )


async def worker_facts(engine: Engine) -> WorkerFacts:
    """The first worker's facts (tensor-parallel ranks hold identical budgets)."""
    try:
        facts = await engine.llm.collective_rpc("nanovl_budget_facts")
    except Exception as exc:  # the engine answers with plain exceptions
        if engine.is_dead:
            raise Unavailable(f"the inference engine has stopped ({exc}); the server must be restarted") from exc
        raise NanovlError(f"the engine could not report its budget: {exc}") from exc
    return WorkerFacts.from_rpc(facts[0], bytes_per_token=bytes_per_token(engine.llm.vllm_config))


class LiveBudgetReader:
    """Reads :class:`LiveBudget` from the live engine.

    The exact per-modality maxima depend only on the settings, so they are computed once
    (a few seconds, off the event loop); KV cache, memory and processes are read on every
    call. :meth:`encoder_snapshot` feeds the metrics gauges.
    """

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
        self._largest: dict[Modality, LargestItem | None] | None = None
        self._largest_lock = asyncio.Lock()
        self._encoder: EncoderBudget | None = None
        self._snapshot_lock = threading.Lock()
        self._frontend_snapshot: tuple[EncoderBudgetSnapshot | None] | None = None
        self._exact: tuple[EncoderSizing, str, tuple] | None = None

    def encoder_snapshot(self) -> EncoderBudgetSnapshot | None:
        """The encoder budget for the metrics gauges (None for a text-only engine).

        Runs on the metrics collection thread, so it never calls the engine: it returns
        the budget last read from the worker or, before the first read, computes it once
        with vLLM's own ``MultiModalBudget`` from the front end's config (the same class
        and config the worker's model runner uses). Thread-safe; cheap after the first call.
        """
        encoder = self._encoder
        if encoder is None:
            with self._snapshot_lock:
                if self._frontend_snapshot is None:
                    self._frontend_snapshot = (frontend_encoder_snapshot(self._engine.llm.vllm_config),)
            return self._frontend_snapshot[0]
        return encoder.snapshot()

    async def _largest_items(self) -> dict[Modality, LargestItem | None]:
        async with self._largest_lock:
            if self._largest is None:
                summary = self._engine.summary
                enabled = tuple(m for m in MODALITIES if summary.limits.get(m, 0) > 0)

                def compute() -> dict[Modality, LargestItem | None]:
                    with self._plan_lock:  # vLLM's config building is not re-entrant
                        return largest_items(
                            summary.model,
                            enabled,
                            engine_args=self._engine_args,
                            max_model_len=summary.max_model_len,
                            media_limits=self._media_limits,
                        )

                self._largest = await asyncio.to_thread(compute)
            return self._largest

    async def _exact_sizing(self, applied: EncoderBudget | None) -> ExactSizingReport | None:
        """vLLM's default sizing (computed once) beside the worker's applied one."""
        if applied is None:
            return None
        async with self._largest_lock:
            if self._exact is None:
                config = self._engine.llm.vllm_config
                limits = dict(self._engine.summary.limits)

                def compute() -> tuple[EncoderSizing, str, tuple]:
                    with self._plan_lock:  # vLLM's config building is not re-entrant
                        default = vllm_default_sizing(self._engine_args, bytes_per_token(config))
                        setting, items = item_reports(config, limits)
                    return default, setting, items

                self._exact = await asyncio.to_thread(compute)
        default, setting, items = self._exact
        return ExactSizingReport(setting=setting, vllm_default=default, applied=applied.sizing(), items=items)

    async def read(self) -> LiveBudget:
        config = self._engine.llm.vllm_config
        facts = await worker_facts(self._engine)
        self._encoder = facts.encoder
        largest = await self._largest_items()
        limits = dict(self._engine.summary.limits)
        vllm_max = facts.encoder.max_tokens_per_item if facts.encoder else {}
        modalities = tuple(
            ModalityBudget(m, limits[m], int(vllm_max.get(m, 0)), largest.get(m)) for m in MODALITIES if m in limits
        )
        processes = await asyncio.to_thread(engine_processes)
        return LiveBudget(
            max_model_len=int(config.model_config.max_model_len),
            max_num_seqs=int(config.scheduler_config.max_num_seqs),
            max_num_batched_tokens=int(config.scheduler_config.max_num_batched_tokens),
            limit_mm_per_prompt=limits,
            modalities=modalities,
            encoder=facts.encoder,
            kv_cache=facts.kv_cache,
            mamba_state_bytes_per_seq=facts.mamba_state_bytes_per_seq,
            weights_bytes=facts.weights_bytes,
            processes=processes,
            gpu=facts.gpu,
            exact_sizing=await self._exact_sizing(facts.encoder),
        )
