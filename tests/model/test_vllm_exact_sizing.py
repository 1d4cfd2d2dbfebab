"""--exact-mm-sizing applied to vLLM (``model.vllm_exact_sizing``), against vLLM's own code.

No engine: vLLM's config, ``MultiModalBudget``, dummy inputs and multimodal processor are
built offline on the tiny checkpoints. Three kinds of checks:

- upgrade guards: the vLLM methods and options nanovl's classes override or use still
  exist with the same signatures, and vLLM still sizes video/audio as ``max_model_len``
  (if it stops, exact sizing needs rethinking, not silently stacking on top);
- without a declaration the registered class answers exactly as vLLM's own;
- with one, the per-item maxima are exact against vLLM's processor on seeded random items
  within the declaration (never exceeded; reached by the worst case), the budget and
  cache are built from them, and the start-up profile's dummy items have the declared size.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np
import pytest

from model import vllm_plugin
from model.checkpoint import SERVED_ARCHITECTURES
from model.item_maxima import HF_CONFIG_KEY, parse
from model.prompt import video_item_at_times
from model.tiny import ensure_tiny_checkpoint

MAX_MODEL_LEN = 4096
BATCH = 1024


@functools.cache
def _budget(variant: str, spec: str | None):
    """vLLM's config and MultiModalBudget, built once per (checkpoint, declaration)."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.encoder_budget import MultiModalBudget

    vllm_plugin.register(eager=True)
    path = ensure_tiny_checkpoint(variant)
    overrides = None
    if spec is not None:
        has_audio = variant in ("full", "dynamic", "omni-v3")
        overrides = parse(
            spec, max_video_frames=256, max_audio_seconds=600, frame_side=224, supports_audio=has_audio
        ).hf_overrides()
    limits = (
        {"image": 2, "video": 1, "audio": 1} if variant in ("full", "dynamic", "omni-v3") else {"image": 2, "video": 1}
    )
    config = EngineArgs(
        model=str(path),
        trust_remote_code=True,
        mm_processor_cache_gb=0,
        max_model_len=MAX_MODEL_LEN,
        limit_mm_per_prompt=limits,
        enable_chunked_prefill=True,
        max_num_batched_tokens=BATCH,
        hf_overrides=overrides or {},
    ).create_engine_config()
    return config, MultiModalBudget(config, MULTIMODAL_REGISTRY, enable_cache=False)


# ------------------------------------------------------------------ upgrade guards


def test_vllm_methods_overridden_keep_their_signatures():
    from vllm.model_executor.models.nano_nemotron_vl import (
        NanoNemotronVLDummyInputsBuilder,
        NanoNemotronVLProcessingInfo,
    )
    from vllm.multimodal.processing import BaseDummyInputsBuilder, BaseProcessingInfo

    def params(f):
        return list(inspect.signature(f).parameters)

    assert params(NanoNemotronVLProcessingInfo.get_mm_max_tokens_per_item) == ["self", "seq_len", "mm_counts"]
    assert params(BaseProcessingInfo.get_mm_max_tokens_per_item) == ["self", "seq_len", "mm_counts"]
    assert params(NanoNemotronVLDummyInputsBuilder.get_dummy_mm_data) == ["self", "seq_len", "mm_counts", "mm_options"]
    assert params(BaseDummyInputsBuilder.get_dummy_mm_data) == ["self", "seq_len", "mm_counts", "mm_options"]
    assert params(NanoNemotronVLProcessingInfo.get_num_frames_with_most_features) == ["self", "seq_len", "mm_counts"]


def test_vllm_dummy_options_and_budget_fields_used_still_exist():
    from vllm.config.multimodal import AudioDummyOptions, VideoDummyOptions
    from vllm.multimodal.encoder_budget import MultiModalBudget

    assert VideoDummyOptions(count=1, num_frames=3, width=2, height=2).num_frames == 3
    assert AudioDummyOptions(count=1, length=5).length == 5
    for name in ("get_modality_with_max_tokens", "get_encoder_budget", "get_dummy_encoder_profile_inputs"):
        assert callable(getattr(MultiModalBudget, name))


def test_vllm_still_sizes_video_and_audio_as_the_whole_context():
    from vllm.model_executor.models.nano_nemotron_vl import NanoNemotronVLProcessingInfo

    _, budget = _budget("full", None)
    info = budget.processor.info
    default = NanoNemotronVLProcessingInfo.get_mm_max_tokens_per_item(info, MAX_MODEL_LEN, {"video": 1, "audio": 1})
    assert default == {"video": MAX_MODEL_LEN, "audio": MAX_MODEL_LEN}


def test_every_served_architecture_resolves_to_the_registered_class():
    from vllm import ModelRegistry

    from model.vllm_exact_sizing import NemotronNanoVLExactSizing

    config, _ = _budget("full", None)
    for arch in SERVED_ARCHITECTURES:
        cls, _ = ModelRegistry.resolve_model_cls([arch], model_config=config.model_config)
        assert cls is NemotronNanoVLExactSizing, arch


def test_the_plugin_entry_point_is_declared():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["vllm.general_plugins"]["nanovl_exact_sizing"]
    module, _, func = target.partition(":")
    assert f"{module}.{func}" == "model.vllm_plugin.register"


# ------------------------------------------------------------------ without a declaration


@pytest.mark.parametrize("variant", ["full", "omni-v3"])
def test_without_a_declaration_the_class_answers_as_vllm(variant):
    from vllm.model_executor.models.nano_nemotron_vl import NanoNemotronVLProcessingInfo
    from vllm.v1.core.encoder_cache_manager import compute_mm_encoder_budget

    config, budget = _budget(variant, None)
    assert HF_CONFIG_KEY not in vars(config.model_config.hf_config)
    info = budget.processor.info
    counts = dict.fromkeys(budget.mm_max_toks_per_item, 1)
    default = NanoNemotronVLProcessingInfo.get_mm_max_tokens_per_item(info, MAX_MODEL_LEN, counts)
    assert dict(budget.mm_max_toks_per_item) == dict(default)
    compute, cache = compute_mm_encoder_budget(config.scheduler_config, default)
    assert (budget.encoder_compute_budget, budget.encoder_cache_size) == (compute, cache) == (MAX_MODEL_LEN,) * 2


# ------------------------------------------------------------------ with a declaration


def _embeds(processor, modality: str, item) -> int:
    """Encoder tokens vLLM's own processor gives one item (``PlaceholderRange.get_num_embeds``)."""
    from vllm.multimodal.processing import TimingContext
    from vllm.multimodal.processing.inputs import ProcessorInputs

    info = processor.info
    prompt = info.ctx.tokenizer.encode(processor.dummy_inputs.get_dummy_text({modality: 1}), add_special_tokens=False)
    out = processor.apply(
        ProcessorInputs(prompt=prompt, mm_data_items=info.parse_mm_data({modality: [item]})),
        timing_ctx=TimingContext(enabled=False),
    )
    (placeholder,) = out["mm_placeholders"][modality]
    return int(placeholder.get_num_embeds())


@pytest.mark.parametrize("variant", ["full", "omni-v3"])
def test_declared_maxima_are_exact_against_vllms_processor(variant):
    """Seeded random items within the declaration never exceed the applied per-item
    maximum, and the worst case (every frame at the latest timestamp; the full audio
    length) reaches it exactly."""
    frames, fps, seconds = 6, 0.5, 7.0  # timestamps up to 10 s, where their text gains a digit
    config, budget = _budget(variant, f"video={frames}x320x240@{fps},audio={seconds}")
    applied = budget.mm_max_toks_per_item
    processor = budget.processor
    last_s = (frames - 1) / fps
    rng = np.random.default_rng(13)

    def video(n: int, times: list[float]):
        pixels = np.zeros((n, 240, 320, 3), dtype=np.uint8)
        return video_item_at_times(pixels, timestamps_s=times, total_num_frames=n, duration_s=last_s)

    assert _embeds(processor, "video", video(frames, [last_s] * frames)) == applied["video"]
    for _ in range(4):
        n = int(rng.integers(1, frames + 1))
        times = sorted(float(t) for t in rng.uniform(0, last_s, n))
        assert _embeds(processor, "video", video(n, times)) <= applied["video"]
    sr = config.model_config.hf_config.sound_config.sampling_rate
    assert _embeds(processor, "audio", (np.zeros(int(seconds * sr), np.float32), sr)) == applied["audio"]
    for _ in range(3):
        n = int(rng.integers(sr // 10, int(seconds * sr)))
        assert _embeds(processor, "audio", (np.zeros(n, np.float32), sr)) <= applied["audio"]


def test_budget_cache_and_profile_are_built_from_the_declared_items():
    config, budget = _budget("full", "video=8x640x480@2,audio=20")
    max_toks = budget.mm_max_toks_per_item
    assert max_toks["video"] < MAX_MODEL_LEN and max_toks["audio"] < MAX_MODEL_LEN
    assert budget.encoder_compute_budget == budget.encoder_cache_size == max(BATCH, *max_toks.values())
    # The profile's dummy items, as vLLM's model runner asks for them.
    dummy_video = budget.processor.get_dummy_mm_inputs({"video": 1})
    (frames,) = dummy_video["mm_kwargs"]["video"][0]["video_num_patches"].data.reshape(-1).tolist()
    assert frames == 8
    dummy_audio = budget.processor.get_dummy_mm_inputs({"audio": 1})
    (placeholder,) = dummy_audio["mm_placeholders"]["audio"]
    assert placeholder.get_num_embeds() == max_toks["audio"]
    profiled = budget.get_modality_with_max_tokens()
    assert budget.mm_max_items_per_batch[profiled] == budget.get_encoder_budget() // max_toks[profiled]


def test_a_declaration_larger_than_the_context_keeps_vllms_sizing():
    _, budget = _budget("full", "video=256x640x480@2,audio=600")
    assert budget.mm_max_toks_per_item["video"] == MAX_MODEL_LEN
    assert budget.mm_max_toks_per_item["audio"] == MAX_MODEL_LEN
    assert budget.encoder_cache_size == MAX_MODEL_LEN


def test_the_declaration_registers_the_class_where_it_is_unpickled():
    """vLLM's engine core process never imports nanovl's worker extension; the declaration
    it receives inside the pickled model config registers nanovl's class there."""
    import pickle

    from vllm import ModelRegistry

    overrides = parse("video=8x320x240@2", max_video_frames=256, max_audio_seconds=600, frame_side=224).hf_overrides()
    payload = pickle.dumps(overrides)
    vllm_own = "vllm.model_executor.models.nano_nemotron_vl:NemotronH_Nano_VL_V2"
    try:
        for arch in SERVED_ARCHITECTURES:  # as in a fresh engine process
            ModelRegistry.register_model(arch, vllm_own)
        restored = pickle.loads(payload)
        assert restored == overrides and dict(restored[HF_CONFIG_KEY]) == overrides[HF_CONFIG_KEY]
        for arch in SERVED_ARCHITECTURES:
            entry = ModelRegistry.models[arch]
            assert (entry.module_name, entry.class_name) == tuple(vllm_plugin.MODEL_CLASS.split(":")), arch
    finally:
        vllm_plugin.register(eager=True)
