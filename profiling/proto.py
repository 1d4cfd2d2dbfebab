"""``nanovl.v1`` Profiling messages <-> the profiling layer's dataclasses.

Shared by the servicer and by ``nanovl profile`` (which renders an offline plan through
the same messages, so online and offline output are identical).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from nanovl.errors import InvalidArgument
from nanovl.modalities import MODALITIES, Modality
from nanovl.modalities import modality_to_pb as modality_pb
from nanovl.v1 import inference_pb2
from nanovl.v1 import profiling_pb2 as pb
from profiling.profilers.cpu_profile import DEFAULT_DURATION_S, DEFAULT_RATE_HZ, CpuProfileChunk, CpuProfileRequest
from profiling.profilers.limits import TorchProfileBounds
from profiling.profilers.torch_profile import TorchProfileRequest, TorchProfileResult
from profiling.sizing.budget import DEFAULT_VIDEO_FPS, AudioItems, ImageItems, MemoryPlan, Plan, PlanRequest, VideoItems
from profiling.sizing.dummy import DummyItems, DummyProfile
from profiling.sizing.exact_sizing import EncoderSizing, ExactSizingReport
from profiling.sizing.live_budget import LiveBudget, MediaItem

ROLE_TO_PB: dict[str, int] = {
    "server": pb.PROCESS_ROLE_SERVER,
    "engine_core": pb.PROCESS_ROLE_ENGINE_CORE,
    "worker": pb.PROCESS_ROLE_WORKER,
}
ROLE_FROM_PB = {v: k for k, v in ROLE_TO_PB.items()}
CONSTRAINT_TO_PB: dict[str, int] = {
    "tokens": pb.PLAN_CONSTRAINT_TOKENS,
    "encoder_cache": pb.PLAN_CONSTRAINT_ENCODER_CACHE,
    "memory": pb.PLAN_CONSTRAINT_MEMORY,
}
FORMAT_FROM_PB = {
    pb.CPU_PROFILE_FORMAT_UNSPECIFIED: "speedscope",
    pb.CPU_PROFILE_FORMAT_SPEEDSCOPE: "speedscope",
    pb.CPU_PROFILE_FORMAT_FLAMEGRAPH_SVG: "flamegraph",
}


# ------------------------------------------------------------------------ media items


def media_items_from_pb(m: pb.MediaItems, *, where: str) -> MediaItem:
    """One ``MediaItems`` as the planner's dataclass; zero sizes stay zero (unsized)."""
    kind = m.WhichOneof("item")
    if kind is None:
        raise InvalidArgument(f"{where}: set one of image, video or audio")
    if kind == "image":
        return ImageItems(m.count, m.image.width or None, m.image.height or None)
    if kind == "video":
        return video_items_from_pb(m.count, m.video, where=f"{where}.video")
    return AudioItems(m.count, m.audio.seconds)


def video_items_from_pb(count: int, v: pb.VideoItem, *, where: str) -> VideoItems:
    """A ``VideoItem`` with its timing (``fps`` + ``frame_indices``, or ``frame_times_s``)."""
    if v.frame_times_s:
        if v.HasField("fps") or v.frame_indices:
            raise InvalidArgument(f"{where}: give frame_times_s, or fps and frame_indices, not both")
        if v.num_frames not in (0, len(v.frame_times_s)):
            raise InvalidArgument(
                f"{where}: num_frames is {v.num_frames} but frame_times_s has {len(v.frame_times_s)} times"
            )
        return VideoItems.at_times(count, list(v.frame_times_s), v.width, v.height)
    fps = v.fps if v.HasField("fps") else DEFAULT_VIDEO_FPS
    if not (math.isfinite(fps) and fps > 0):
        raise InvalidArgument(f"{where}.fps must be a positive number of frames per second, got {fps}")
    indices = tuple(int(i) for i in v.frame_indices) or None
    if indices is not None and len(indices) != v.num_frames:
        raise InvalidArgument(f"{where}: num_frames is {v.num_frames} but frame_indices has {len(indices)} entries")
    return VideoItems(count, v.num_frames, v.width, v.height, fps, indices)


def media_items_to_pb(items: MediaItem) -> pb.MediaItems:
    if isinstance(items, ImageItems):
        return pb.MediaItems(count=items.count, image=pb.ImageItem(width=items.width or 0, height=items.height or 0))
    if isinstance(items, VideoItems):
        return pb.MediaItems(
            count=items.count,
            video=pb.VideoItem(
                num_frames=items.num_frames,
                width=items.width,
                height=items.height,
                fps=items.fps,
                frame_indices=list(items.indices()),
            ),
        )
    return pb.MediaItems(count=items.count, audio=pb.AudioItem(seconds=items.seconds))


def modality_of(items: MediaItem) -> Modality:
    if isinstance(items, ImageItems):
        return "image"
    return "video" if isinstance(items, VideoItems) else "audio"


# ------------------------------------------------------------------------ GetBudget


def encoder_sizing_to_pb(e: EncoderSizing) -> pb.EncoderSizing:
    return pb.EncoderSizing(
        max_tokens_per_item=dict(e.max_tokens_per_item),
        compute_budget_tokens=e.compute_budget_tokens,
        cache_size_tokens=e.cache_size_tokens,
        cache_size_bytes=e.cache_size_bytes,
        profile_modality=modality_pb(e.profile_modality) if e.profile_modality else inference_pb2.MODALITY_UNSPECIFIED,
        profile_items=e.profile_items,
    )


def exact_sizing_to_pb(x: ExactSizingReport) -> pb.ExactSizing:
    out = pb.ExactSizing(
        setting=x.setting, vllm_default=encoder_sizing_to_pb(x.vllm_default), applied=encoder_sizing_to_pb(x.applied)
    )
    for it in x.items:
        entry = out.items.add(
            modality=modality_pb(it.modality),
            declared=it.declared,
            derived_from_media_limits=it.derived,
            exact_tokens=it.exact_tokens,
            vllm_default_tokens=it.vllm_default_tokens,
            applied_tokens=it.applied_tokens,
        )
        if it.video is not None:
            entry.num_frames, entry.width, entry.height = it.video.num_frames, it.video.width, it.video.height
            entry.last_frame_s = it.video.last_frame_s
        if it.audio is not None:
            entry.seconds = it.audio.seconds
    return out


def budget_to_pb(b: LiveBudget) -> pb.Budget:
    out = pb.Budget(
        max_model_len=b.max_model_len,
        max_num_seqs=b.max_num_seqs,
        max_num_batched_tokens=b.max_num_batched_tokens,
        limit_mm_per_prompt=dict(b.limit_mm_per_prompt),
        kv_cache=pb.KvCacheCapacity(
            num_blocks=b.kv_cache.num_blocks,
            block_size=b.kv_cache.block_size,
            tokens=b.kv_cache.tokens,
            bytes=b.kv_cache.bytes,
            capacity_tokens=b.kv_cache.capacity_tokens,
            max_concurrency=b.kv_cache.max_concurrency,
        ),
        mamba_state_bytes_per_seq=b.mamba_state_bytes_per_seq,
        weights_bytes=b.weights_bytes,
        processes=[
            pb.ProcessMemory(pid=p.pid, role=ROLE_TO_PB[p.role], rss_bytes=p.rss_bytes, name=p.name)
            for p in b.processes
        ],
    )
    for m in b.modalities:
        entry = out.modalities.add(
            modality=modality_pb(m.modality),
            item_limit=m.item_limit,
            vllm_max_tokens_per_item=m.vllm_max_tokens_per_item,
            nanovl_max_tokens_per_item=m.nanovl_max_tokens_per_item,
        )
        if m.largest is not None:
            entry.largest_item.CopyFrom(media_items_to_pb(m.largest.item))
    if b.encoder is not None:
        e = b.encoder
        out.encoder.CopyFrom(
            pb.EncoderBudget(
                compute_budget_tokens=e.compute_budget_tokens,
                compute_budget_bytes=e.compute_budget_bytes,
                cache_size_tokens=e.cache_size_tokens,
                cache_size_bytes=e.cache_size_bytes,
                profiled_modality=modality_pb(e.profile_modality) if e.profiled else inference_pb2.MODALITY_UNSPECIFIED,
                profiled_items=e.profile_items if e.profiled else 0,
                vllm_profile_modality=modality_pb(e.profile_modality),
                vllm_profile_items=e.profile_items,
                profile_note=e.profile_note,
            )
        )
    if b.exact_sizing is not None:
        out.exact_sizing.CopyFrom(exact_sizing_to_pb(b.exact_sizing))
    if b.gpu is not None:
        out.gpu.CopyFrom(
            pb.GpuMemory(
                allocated_bytes=b.gpu.allocated_bytes,
                reserved_bytes=b.gpu.reserved_bytes,
                peak_allocated_bytes=b.gpu.peak_allocated_bytes,
                total_bytes=b.gpu.total_bytes,
            )
        )
    return out


# ------------------------------------------------------------------------ PlanBudget


def plan_request_from_pb(req: pb.PlanBudgetRequest) -> tuple[PlanRequest, tuple[Modality, ...]]:
    """The planner's request (unsized items left zero) and the modalities in request order."""
    kwargs: dict[str, object] = {}
    order: list[Modality] = []
    for i, m in enumerate(req.items):
        items = media_items_from_pb(m, where=f"items[{i}]")
        modality = modality_of(items)
        if modality in order:
            raise InvalidArgument(f"items[{i}]: {modality} appears twice; give at most one entry per modality")
        order.append(modality)
        kwargs[modality] = items
    for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "memory_budget_bytes"):
        if req.HasField(name):
            kwargs[name] = getattr(req, name)
    if req.HasField("text_tokens"):
        kwargs["text_tokens"] = req.text_tokens
    return PlanRequest(**kwargs), tuple(order)  # type: ignore[arg-type]


def _memory_pb(memory: MemoryPlan) -> list[pb.MemoryComponent]:
    return [pb.MemoryComponent(component=c.component, bytes=c.bytes, note=c.note) for c in memory.components]


def plan_to_pb(plan: Plan, order: Sequence[Modality] | None = None) -> pb.BudgetPlan:
    """``order``: the modalities to report, in order (default: those with items)."""
    if order is None:
        order = tuple(m for m in MODALITIES if plan.request.counts()[m] > 0)
    rec = plan.recommendation
    out = pb.BudgetPlan(
        media_prompt_tokens=plan.media_prompt_tokens,
        accepted=plan.accepted,
        reason=plan.reason,
        encoder_cache=pb.EncoderCachePlan(
            needed_tokens=plan.nanovl.needed_tokens,
            needed_bytes=plan.nanovl.needed_bytes,
            vllm_tokens=plan.vllm.cache_size_tokens,
            vllm_bytes=plan.vllm.cache_size_bytes,
            min_tokens=plan.nanovl.min_tokens,
        ),
        memory=_memory_pb(plan.memory_nanovl),
        predicted_total_bytes=plan.memory_nanovl.total_bytes,
        recommended_limit_mm_per_prompt=rec.limit_mm_per_prompt_json,
        largest_items_that_fit=[media_items_to_pb(it) for it in rec.largest_items()],
        max_model_len=plan.max_model_len,
        max_num_seqs=plan.max_num_seqs,
        max_num_batched_tokens=plan.max_num_batched_tokens,
        prompt_tokens=plan.prompt_tokens,
        vllm_memory=_memory_pb(plan.memory_vllm),
        vllm_predicted_total_bytes=plan.memory_vllm.total_bytes,
        vllm_profiled_modality=modality_pb(plan.vllm.profiled_modality),
        vllm_profiled_items=plan.vllm.profiled_items,
        binding_constraints=[CONSTRAINT_TO_PB[c] for c in rec.binding],
        admitting_max_model_len=rec.admitting_max_model_len or 0,
        admitting_memory_bytes=rec.admitting_memory_bytes or 0,
        admitting_max_num_batched_tokens=rec.admitting_max_num_batched_tokens or 0,
        recommendation_note=rec.note,
    )
    for modality in order:
        mp = plan.modality(modality)
        entry = out.modalities.add(
            modality=modality_pb(modality),
            count=mp.count,
            prompt_tokens_per_item=mp.item.prompt_tokens if mp.item else 0,
            encoder_tokens_per_item=mp.item.encoder_tokens if mp.item else 0,
            prompt_tokens=mp.prompt_tokens,
            vllm_max_tokens_per_item=mp.vllm_max_tokens_per_item,
        )
        entry.item.CopyFrom(media_items_to_pb(_planned_item(plan, modality)))
    return out


def _planned_item(plan: Plan, modality: Modality) -> MediaItem:
    req = plan.request
    return req.image if modality == "image" else req.video if modality == "video" else req.audio


# ------------------------------------------------------------------------ RunDummyProfile


def dummy_request_from_pb(req: pb.RunDummyProfileRequest) -> list[DummyItems]:
    return [media_items_from_pb(m, where=f"items[{i}]") for i, m in enumerate(req.items)]


def dummy_to_pb(results: Sequence[DummyProfile]) -> pb.DummyProfileResult:
    return pb.DummyProfileResult(
        modalities=[
            pb.ModalityProfile(
                modality=modality_pb(r.modality),
                count=r.count,
                encoder_s=r.encoder_s,
                peak_memory_increase_bytes=r.peak_memory_increase_bytes,
                memory_source=r.memory_source,
                tokens=r.tokens,
                predicted_tokens=r.predicted_tokens,
                predicted_memory_bytes=r.predicted_memory_bytes,
                item=media_items_to_pb(r.items),
                preprocess_s=r.preprocess_s,
                prompt_tokens=r.prompt_tokens,
                predicted_prompt_tokens=r.predicted_prompt_tokens,
                peak_rss_increase_bytes=r.peak_rss_increase_bytes,
            )
            for r in results
        ]
    )


# ------------------------------------------------------------------------ CaptureCpuProfile


def cpu_request_from_pb(req: pb.CaptureCpuProfileRequest) -> CpuProfileRequest:
    roles = set()
    for role in req.processes:
        if role not in ROLE_FROM_PB:
            raise InvalidArgument(f"processes: {role} is not a process role (SERVER, ENGINE_CORE or WORKER)")
        roles.add(ROLE_FROM_PB[role])
    if req.format not in FORMAT_FROM_PB:
        raise InvalidArgument(f"format: unknown CpuProfileFormat {req.format}")
    return CpuProfileRequest(
        duration_s=req.duration_s if req.HasField("duration_s") else DEFAULT_DURATION_S,
        rate_hz=req.rate_hz if req.HasField("rate_hz") else DEFAULT_RATE_HZ,
        format=FORMAT_FROM_PB[req.format],  # type: ignore[arg-type]
        roles=frozenset(roles),  # type: ignore[arg-type]
        native=req.native,
        include_idle=req.include_idle,
    )


def chunk_to_pb(chunk: CpuProfileChunk) -> pb.CpuProfileChunk:
    out = pb.CpuProfileChunk(file_index=chunk.file_index, data=chunk.data, last=chunk.last)
    if chunk.first:
        out.file_name = chunk.file.file_name
        out.content_type = chunk.file.content_type
        out.pid = chunk.file.pid
        out.role = ROLE_TO_PB[chunk.file.role]  # type: ignore[assignment]
        out.samples = chunk.file.samples
        out.errors = chunk.file.errors
        out.warning = chunk.file.warning
    return out


# ------------------------------------------------------------------------ torch profiler

TORCH_END_TO_PB: dict[str, int] = {
    "stopped": pb.TORCH_PROFILE_END_STOPPED,
    "steps": pb.TORCH_PROFILE_END_STEPS,
    "duration": pb.TORCH_PROFILE_END_DURATION,
    "memory": pb.TORCH_PROFILE_END_MEMORY,
}


def torch_request_from_pb(req: pb.StartTorchProfileRequest) -> TorchProfileRequest:
    return TorchProfileRequest(
        prefix=req.profile_prefix if req.HasField("profile_prefix") else None,
        delay_iterations=req.delay_iterations if req.HasField("delay_iterations") else None,
        max_iterations=req.max_iterations if req.HasField("max_iterations") else None,
        max_duration_s=req.max_duration_s if req.HasField("max_duration_s") else None,
    )


def torch_started_to_pb(bounds: TorchProfileBounds) -> pb.StartTorchProfileResponse:
    # trace_dir stays empty: server paths never go back to callers.
    return pb.StartTorchProfileResponse(
        max_iterations=bounds.max_steps,
        max_duration_s=bounds.max_duration_s,
        max_memory_growth_bytes=bounds.max_memory_growth_bytes,
    )


def torch_result_to_pb(result: TorchProfileResult) -> pb.StopTorchProfileResponse:
    # File names relative to the server's torch profiler directory; never the directory.
    return pb.StopTorchProfileResponse(
        files=list(result.files),
        ended_by=TORCH_END_TO_PB[result.ended_by],  # type: ignore[arg-type]
        duration_s=result.duration_s,
        peak_memory_growth_bytes=max(0, result.peak_memory_growth_bytes),
        trace_bytes=result.trace_bytes,
        warning=result.warning,
    )
