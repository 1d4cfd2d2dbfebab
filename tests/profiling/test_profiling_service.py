"""The Profiling service end to end: the session engine behind the real gRPC server.

GetBudget against the engine's own objects, PlanBudget against what the engine then
does with the same prompt (at the context boundary, +-1 token), dummy encoder passes for
every modality, py-spy captures, and the metrics feed.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from vllm import SamplingParams

from model.prompt import MediaPart, TextPart, assemble_raw
from model.token_accounting import ModelGeometry, audio_tokens, image_tokens, video_tokens
from nanovl.errors import OutOfRange
from nanovl.v1 import inference_pb2, profiling_pb2_grpc
from nanovl.v1 import profiling_pb2 as pb
from profiling.sizing.budget import PlanRequest, plan_budget
from tests.conftest import TEST_LIMITS, TEST_MAX_MODEL_LEN
from tests.service.test_engine import _audio, _image, _video

IMAGE, VIDEO, AUDIO = inference_pb2.MODALITY_IMAGE, inference_pb2.MODALITY_VIDEO, inference_pb2.MODALITY_AUDIO
NAMES = {IMAGE: "image", VIDEO: "video", AUDIO: "audio"}


@pytest.fixture(scope="module")
async def stub(admin_target):
    channel = grpc.aio.insecure_channel(admin_target)
    yield profiling_pb2_grpc.ProfilingStub(channel)
    await channel.close()


@pytest.fixture(scope="module")
async def budget(stub) -> pb.Budget:
    return await stub.GetBudget(pb.GetBudgetRequest(), timeout=300)


@pytest.fixture(scope="module")
def geometry(tiny_checkpoint) -> ModelGeometry:
    return ModelGeometry.from_checkpoint(tiny_checkpoint, max_model_len=TEST_MAX_MODEL_LEN)


async def _status(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


# ------------------------------------------------------------------ GetBudget


def test_budget_reports_the_engine_settings(budget, engine):
    config = engine.llm.vllm_config
    assert budget.max_model_len == TEST_MAX_MODEL_LEN == config.model_config.max_model_len
    assert budget.max_num_seqs == config.scheduler_config.max_num_seqs == 64
    assert budget.max_num_batched_tokens == config.scheduler_config.max_num_batched_tokens
    assert dict(budget.limit_mm_per_prompt) == TEST_LIMITS
    assert {NAMES[m.modality]: m.item_limit for m in budget.modalities} == TEST_LIMITS


def test_budget_encoder_numbers_are_vllms(budget, engine):
    """vLLM's own MultiModalBudget on the engine's config, built here independently."""
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.encoder_budget import MultiModalBudget

    config = engine.llm.vllm_config
    vllm = MultiModalBudget(config, MULTIMODAL_REGISTRY, enable_cache=False)
    assert {NAMES[m.modality]: m.vllm_max_tokens_per_item for m in budget.modalities} == dict(vllm.mm_max_toks_per_item)
    e = budget.encoder
    assert (e.compute_budget_tokens, e.cache_size_tokens) == (vllm.encoder_compute_budget, vllm.encoder_cache_size)
    per_token = config.model_config.get_hidden_size() * config.model_config.dtype.itemsize
    assert e.cache_size_bytes == e.cache_size_tokens * per_token
    assert e.compute_budget_bytes == e.compute_budget_tokens * per_token
    assert NAMES[e.vllm_profile_modality] == vllm.get_modality_with_max_tokens()
    assert e.vllm_profile_items == vllm.mm_max_items_per_batch[vllm.get_modality_with_max_tokens()]
    # The session engine runs eager on CPU, where vLLM skips its start-up profile.
    assert config.compilation_config.mode == 0
    assert e.profiled_modality == inference_pb2.MODALITY_UNSPECIFIED and e.profiled_items == 0
    assert "eager" in e.profile_note


def test_budget_without_exact_sizing_shows_vllms_default_as_applied(budget):
    x = budget.exact_sizing
    assert x.setting == "" and not x.items
    assert x.vllm_default == x.applied  # the same sizing, computed apart and read from the worker
    assert x.applied.cache_size_tokens == budget.encoder.cache_size_tokens
    assert dict(x.applied.max_tokens_per_item) == {
        NAMES[m.modality]: m.vllm_max_tokens_per_item for m in budget.modalities
    }


def test_budget_exact_maxima_are_the_largest_items_that_fit(budget, geometry):
    limit = TEST_MAX_MODEL_LEN - 1  # one position is kept for the output
    by_name = {NAMES[m.modality]: m for m in budget.modalities}

    image = by_name["image"]
    w, h = image.largest_item.image.width, image.largest_item.image.height
    assert image.nanovl_max_tokens_per_item == image_tokens(geometry, w, h).encoder_tokens
    # vLLM's per-image figure is exact for tiling (the largest grid fits 2048 tokens).
    assert image.nanovl_max_tokens_per_item == image.vllm_max_tokens_per_item

    video = by_name["video"].largest_item.video
    n = video.num_frames
    assert video_tokens(geometry, n, video.width, video.height).prompt_tokens <= limit
    assert video_tokens(geometry, n + 1, video.width, video.height).prompt_tokens > limit
    assert (
        by_name["video"].nanovl_max_tokens_per_item
        == video_tokens(geometry, n, video.width, video.height).encoder_tokens
    )

    seconds = by_name["audio"].largest_item.audio.seconds
    assert audio_tokens(geometry, seconds=seconds).prompt_tokens <= limit
    assert audio_tokens(geometry, seconds=seconds + 0.01).prompt_tokens > limit
    assert by_name["audio"].nanovl_max_tokens_per_item == audio_tokens(geometry, seconds=seconds).encoder_tokens
    for m in ("video", "audio"):  # vLLM reserves the whole context for these
        assert by_name[m].nanovl_max_tokens_per_item < by_name[m].vllm_max_tokens_per_item == TEST_MAX_MODEL_LEN


def test_budget_kv_cache_mamba_and_weights(budget, engine, tiny_checkpoint):
    config = engine.llm.vllm_config
    kv = budget.kv_cache
    # The engine core reports its block count and capacity back to the front end.
    assert kv.num_blocks == config.cache_config.num_gpu_blocks > 0
    assert kv.capacity_tokens == config.cache_config.kv_cache_size_tokens
    assert kv.tokens == kv.num_blocks * kv.block_size
    assert kv.capacity_tokens < kv.tokens  # Mamba state blocks come out of the same pool
    assert kv.bytes <= int(os.environ["VLLM_CPU_KVCACHE_SPACE"]) * 2**30
    assert kv.max_concurrency == pytest.approx(kv.capacity_tokens / TEST_MAX_MODEL_LEN, rel=1e-3)

    plan = plan_budget(PlanRequest(max_model_len=TEST_MAX_MODEL_LEN), tiny_checkpoint)
    # vLLM pads each Mamba layer's state page up to the attention page.
    assert budget.mamba_state_bytes_per_seq >= plan.llm.mamba_state_bytes_per_seq
    assert budget.mamba_state_bytes_per_seq % plan.llm.mamba_layers == 0
    assert kv.bytes % (budget.mamba_state_bytes_per_seq // plan.llm.mamba_layers) == 0
    # Loaded parameters vs the checkpoint's tensors (a few norm/SSM parameters load in fp32).
    assert abs(budget.weights_bytes - plan.llm.weights_bytes) <= 0.01 * plan.llm.weights_bytes


def test_budget_processes_and_memory(budget):
    roles = {p.role: p for p in budget.processes}
    assert roles[pb.PROCESS_ROLE_SERVER].pid == os.getpid()
    assert {pb.PROCESS_ROLE_SERVER, pb.PROCESS_ROLE_ENGINE_CORE, pb.PROCESS_ROLE_WORKER} <= set(roles)
    assert "EngineCore" in roles[pb.PROCESS_ROLE_ENGINE_CORE].name
    # nanovl's media decode workers are spawned children too, and no engine process.
    assert not [p for p in budget.processes if "DecodeWorker" in p.name or p.role == pb.PROCESS_ROLE_UNSPECIFIED]
    assert all(p.rss_bytes > 0 for p in budget.processes)
    assert not budget.HasField("gpu")  # CPU-only machine


async def test_encoder_gauges_read_the_budget(engine, budget):
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from profiling.servicer import ProfilingServicer
    from profiling.telemetry.metrics import EncoderBudgetSnapshot, ServiceMetrics

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics = ServiceMetrics(provider.get_meter("test"), provider=provider)
    # A fresh servicer that never called the engine: the gauges still have values.
    servicer = ProfilingServicer(engine, engine.engine_args, metrics=metrics)
    data = reader.get_metrics_data()
    values = {
        m.name: m.data.data_points[0].value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name.startswith("nanovl.encoder")
    }
    provider.shutdown()
    await servicer.budget_reader.read()  # after a read, the worker's numbers: the same
    assert servicer.encoder_budget_snapshot() == EncoderBudgetSnapshot(
        budget.encoder.compute_budget_tokens, budget.encoder.cache_size_tokens, budget.encoder.cache_size_bytes
    )
    assert values == {
        "nanovl.encoder.budget_tokens": budget.encoder.compute_budget_tokens,
        "nanovl.encoder.cache.size_tokens": budget.encoder.cache_size_tokens,
        "nanovl.encoder.cache.memory": budget.encoder.cache_size_bytes,
    }


# ------------------------------------------------------------------ PlanBudget


MIX = [
    pb.MediaItems(count=1, image=pb.ImageItem(width=640, height=480)),
    pb.MediaItems(count=1, video=pb.VideoItem(num_frames=8, width=320, height=240)),
    pb.MediaItems(count=1, audio=pb.AudioItem(seconds=3.0)),
]


def _mix_prompt(text_chars: int):
    # Fresh media every time: vLLM's front end caches processed items by content and then
    # sends only their hashes, which the engine core cannot resolve for items it never
    # received (a prompt rendered but not generated) -- a retryable error, not a verdict.
    seed = uuid.uuid4().int % 2**31
    return assemble_raw(
        [
            MediaPart("image", _image(640, 480, seed)),
            MediaPart("video", _video(8, 320, 240, seed)),
            MediaPart("audio", _audio(3.0, seed)),
            TextPart("a" * text_chars),
        ]
    )


async def _vllm_verdict(engine, engine_input) -> tuple[bool, str]:
    """What vLLM itself does with the rendered prompt (nanovl's own length check bypassed)."""
    from vllm.exceptions import VLLMValidationError

    try:
        async for out in engine.llm.generate(engine_input, SamplingParams(max_tokens=1), uuid.uuid4().hex):
            final = out
    except (ValueError, VLLMValidationError) as exc:
        return False, str(exc)
    assert final.finished and len(final.outputs[0].token_ids) == 1
    return True, ""


async def _prompt_of_length(engine, target: int):
    """The mix plus enough text for exactly ``target`` prompt tokens (as the engine counts)."""
    probe = await engine.render(_mix_prompt(10))
    prompt = _mix_prompt(10 + target - probe.num_prompt_tokens)
    (engine_input,) = await engine.llm.renderer.render_cmpl_async([prompt.to_vllm()])
    total = len(engine_input["prompt_token_ids"])
    assert total == target, "one 'a' is one token for the tiny tokenizer"
    return prompt, engine_input, total - probe.num_prompt_tokens + probe.tokens_by_modality["text"]


@pytest.mark.parametrize("delta", [-1, 0])
async def test_plan_verdict_matches_the_engine_at_the_boundary(stub, engine, delta):
    target = TEST_MAX_MODEL_LEN + delta  # 2047 is the longest prompt vLLM serves at 2048
    prompt, engine_input, text_tokens = await _prompt_of_length(engine, target)
    plan = await stub.PlanBudget(pb.PlanBudgetRequest(items=MIX, text_tokens=text_tokens), timeout=300)
    assert plan.prompt_tokens == target  # the media tokens are predicted exactly
    served, error = await _vllm_verdict(engine, engine_input)
    assert plan.accepted == served == (delta < 0), (plan.reason, error)
    if not plan.accepted:
        assert "max_model_len" in plan.reason and "remove 1 tokens" in plan.reason
        with pytest.raises(OutOfRange):  # and nanovl's own front door says so too
            await engine.render(prompt)


async def test_plan_what_if_uses_the_requested_settings(stub, budget):
    plan = await stub.PlanBudget(
        pb.PlanBudgetRequest(items=[pb.MediaItems(count=1, video=pb.VideoItem())], max_model_len=4096), timeout=300
    )
    assert plan.max_model_len == 4096 and budget.max_model_len == TEST_MAX_MODEL_LEN
    (video,) = plan.modalities
    assert video.vllm_max_tokens_per_item == 4096 and plan.encoder_cache.vllm_tokens == 4096
    # Unsized: the longest video that fits 4096 alone.
    assert video.item.video.num_frames > budget.modalities[1].largest_item.video.num_frames
    assert plan.accepted and video.prompt_tokens_per_item <= 4095


async def test_plan_memory_budget_and_recommendation(stub):
    small = await stub.PlanBudget(pb.PlanBudgetRequest(items=MIX[:1], memory_budget_bytes=1 << 20), timeout=300)
    assert not small.accepted and "exceeds the budget" in small.reason
    assert small.predicted_total_bytes == sum(c.bytes for c in small.memory) > 1 << 20
    assert json.loads(small.recommended_limit_mm_per_prompt)["image"] == 0


@pytest.mark.parametrize(
    "request_, code",
    [
        (pb.PlanBudgetRequest(items=[MIX[0], MIX[0]]), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.PlanBudgetRequest(items=[pb.MediaItems(count=1)]), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.PlanBudgetRequest(items=MIX, max_model_len=0), grpc.StatusCode.INVALID_ARGUMENT),
        # Not the served checkpoint, and no --plan-model-dir allow-lists it.
        (pb.PlanBudgetRequest(items=MIX, model_path="/nonexistent"), grpc.StatusCode.PERMISSION_DENIED),
        (
            pb.PlanBudgetRequest(items=[pb.MediaItems(count=1, video=pb.VideoItem())], max_model_len=8),
            grpc.StatusCode.OUT_OF_RANGE,
        ),
    ],
)
async def test_plan_errors(stub, request_, code):
    error = await _status(stub.PlanBudget(request_, timeout=300))
    assert error.code() == code, error.details()


# ------------------------------------------------------------------ RunDummyProfile


async def test_dummy_profile_measures_every_modality(stub):
    request = pb.RunDummyProfileRequest(
        items=[
            pb.MediaItems(count=2, image=pb.ImageItem(width=320, height=240)),
            pb.MediaItems(count=2, video=pb.VideoItem(num_frames=3, width=64, height=48)),
            pb.MediaItems(count=1, audio=pb.AudioItem(seconds=2.5)),
        ]
    )
    result = await stub.RunDummyProfile(request, timeout=300)
    assert [NAMES[m.modality] for m in result.modalities] == ["image", "video", "audio"]
    # The video comes back as measured: the timing nanovl assumed when none was given
    # (2 fps, frames 0..n-1, the dummy processor's) filled in.
    timed = pb.MediaItems()
    timed.CopyFrom(request.items[1])
    timed.video.fps = 2
    timed.video.frame_indices.extend(range(3))
    for m, asked in zip(result.modalities, [request.items[0], timed, request.items[2]], strict=True):
        assert m.count == asked.count and m.item == asked
        assert m.tokens == m.predicted_tokens > 0  # exact
        assert m.prompt_tokens == m.predicted_prompt_tokens >= m.tokens
        assert m.encoder_s > 0 and m.preprocess_s > 0
        assert m.memory_source == "cpu_tensors"
        assert m.peak_memory_increase_bytes > 0 and m.predicted_memory_bytes > 0


@pytest.mark.parametrize(
    "item, code",
    [
        (pb.MediaItems(count=1, image=pb.ImageItem(width=0, height=10)), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.MediaItems(count=0, audio=pb.AudioItem(seconds=1)), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.MediaItems(count=1, video=pb.VideoItem(num_frames=64, width=224, height=224)),
            grpc.StatusCode.OUT_OF_RANGE,
        ),
        (
            pb.MediaItems(count=1, video=pb.VideoItem(num_frames=10, width=8192, height=8192)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
)
async def test_dummy_profile_errors(stub, item, code):
    error = await _status(stub.RunDummyProfile(pb.RunDummyProfileRequest(items=[item]), timeout=300))
    assert error.code() == code, error.details()


# ------------------------------------------------------------------ CaptureCpuProfile


async def test_cpu_profile_streams_speedscope_for_every_process(stub):
    chunks = [
        c
        async for c in stub.CaptureCpuProfile(pb.CaptureCpuProfileRequest(duration_s=2, include_idle=True), timeout=120)
    ]
    files: dict[int, bytearray] = {}
    meta: dict[int, pb.CpuProfileChunk] = {}
    for c in chunks:
        if c.file_name:
            meta[c.file_index] = c
        files.setdefault(c.file_index, bytearray()).extend(c.data)
    for i, c in enumerate(chunks):  # a file's chunks are contiguous; its last one says so
        ends_file = i + 1 == len(chunks) or chunks[i + 1].file_index != c.file_index
        assert c.last == ends_file
    roles = {meta[i].role: json.loads(bytes(data)) for i, data in files.items()}
    assert set(roles) == {pb.PROCESS_ROLE_SERVER, pb.PROCESS_ROLE_ENGINE_CORE, pb.PROCESS_ROLE_WORKER}
    assert all(m.content_type == "application/json" and m.file_name.endswith(".speedscope.json") for m in meta.values())
    server = roles[pb.PROCESS_ROLE_SERVER]
    assert server["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    assert server["profiles"] and any(p["samples"] for p in server["profiles"])
    files_seen = {f.get("file", "") for f in server["shared"]["frames"]}
    assert any("asyncio" in f or "grpc" in f for f in files_seen), sorted(files_seen)[:20]
    # The server's directories never reach the caller: placeholders such as $SITE/ instead.
    for where in (sys.prefix, str(Path(__file__).resolve().parents[2])):
        assert not any(f.startswith(where + "/") for f in files_seen), where
    assert any(f.startswith("$SITE/") for f in files_seen)


@pytest.mark.parametrize(
    "request_",
    [
        pb.CaptureCpuProfileRequest(duration_s=0),
        pb.CaptureCpuProfileRequest(duration_s=1000),
        pb.CaptureCpuProfileRequest(duration_s=1, rate_hz=100000),
        # Within the API's bounds, above this server's maxima (--max-cpu-profile-s/-rate-hz).
        pb.CaptureCpuProfileRequest(duration_s=120),
        pb.CaptureCpuProfileRequest(duration_s=1, rate_hz=1000),
    ],
)
async def test_cpu_profile_rejects_bad_arguments(stub, request_):
    error = await _status(_drain(stub.CaptureCpuProfile(request_, timeout=60)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _drain(call):
    return [c async for c in call]


# The profilers' bounds and the torch profiler: tests/profiling/test_profilers_live.py.
