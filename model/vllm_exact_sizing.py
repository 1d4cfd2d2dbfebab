"""Exact encoder sizing applied to vLLM, through vLLM's supported extension points.

vLLM asks the model for the most encoder tokens one item of each modality can take
(``BaseProcessingInfo.get_mm_max_tokens_per_item``) and builds everything else from that
answer (``vllm/multimodal/encoder_budget.py::MultiModalBudget``): the encoder compute
budget and the encoder cache size (``compute_mm_encoder_budget``: ``max(
max_num_batched_tokens, largest per-item maximum)``), which modality the start-up profile
encodes and how many items (``encoder budget // per-item maximum``), and the front end's
"exceeds the pre-allocated encoder cache size" admission check. For this model the answer
is the whole ``max_model_len`` for video and audio.

With a declaration (``model.item_maxima``, carried in ``hf_config`` through vLLM's
``hf_overrides``) the two classes here answer instead:

- :class:`ExactSizingProcessingInfo` overrides ``get_mm_max_tokens_per_item``: for video
  and audio, the exact encoder tokens of the declared largest item (``model.
  token_accounting``, which counts with vLLM's own ``get_video_repl`` /
  ``get_audio_repl``), never more than vLLM's own answer; images keep vLLM's answer.
- :class:`ExactSizingDummyInputsBuilder` overrides ``get_dummy_mm_data``: the start-up
  profile's dummy video has the declared number of frames and its dummy audio the declared
  length, through vLLM's own dummy options (``VideoDummyOptions.num_frames``,
  ``AudioDummyOptions.length``, the ``limit_mm_per_prompt`` form); the parent builds them.

Both return the parent's answer unchanged when there is no declaration.
:class:`NemotronNanoVLExactSizing` is vLLM's ``NemotronH_Nano_VL_V2`` model class, untouched,
with those two registered as its processing info and dummy-inputs builder
(``MULTIMODAL_REGISTRY.register_processor``, vLLM's processor registration), and
:func:`register` makes it the class of every architecture vLLM maps to
``NemotronH_Nano_VL_V2`` (``ModelRegistry.register_model``, vLLM's out-of-tree model
registration). vLLM runs :func:`register` in each of its processes through the
``vllm.general_plugins`` entry point (``pyproject.toml``); nanovl also calls it in its own
process and, through the worker extension module, in the engine's worker process, so a
checkout used without installing its entry points still applies it. No vLLM code is copied
and nothing private is patched; ``tests/model/test_vllm_exact_sizing.py`` fails if an
upgrade changes the methods overridden here or starts sizing video/audio itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vllm.config.multimodal import AudioDummyOptions, MultiModalDummyOptions, VideoDummyOptions
from vllm.model_executor.models.nano_nemotron_vl import (
    NanoNemotronVLDummyInputsBuilder,
    NanoNemotronVLMultiModalProcessor,
    NanoNemotronVLProcessingInfo,
    NemotronH_Nano_VL_V2,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from model.item_maxima import HF_CONFIG_KEY, ItemMaxima
from model.prompt import TIMESTAMP_CLOCK_HZ
from model.token_accounting import ModelGeometry, audio_tokens, video_tokens


def declared_maxima(hf_config: Any) -> ItemMaxima | None:
    """The declaration a model config carries (None: vLLM's own sizing)."""
    return ItemMaxima.from_config(getattr(hf_config, HF_CONFIG_KEY, None))


def exact_max_tokens(processor: Any, maxima: ItemMaxima, *, max_model_len: int) -> dict[str, int]:
    """Encoder tokens of the declared largest video and audio item, counted with vLLM's own
    replacement builders (``processor``: the ``NanoNemotronVLProcessor`` vLLM built).

    The video is counted with every frame at the latest declared timestamp: the longest
    "Frame i sampled at t seconds:" text any frame can have, so no video within the
    declaration takes more (frame numbers and counts are the same; a later ``t`` never
    has fewer digits). Shapes: {"video": tokens, "audio": tokens}, for the declared ones.
    """
    geom = ModelGeometry.from_processor(processor, max_model_len=max_model_len)
    out: dict[str, int] = {}
    if maxima.video is not None:
        v = maxima.video
        latest_ms = round(v.last_frame_s * TIMESTAMP_CLOCK_HZ)
        out["video"] = video_tokens(
            geom,
            v.num_frames,
            v.width,
            v.height,
            fps=float(TIMESTAMP_CLOCK_HZ),
            frame_indices=[latest_ms] * v.num_frames,
        ).encoder_tokens
    if maxima.audio is not None and geom.supports_audio:
        out["audio"] = audio_tokens(geom, seconds=maxima.audio.seconds).encoder_tokens
    return out


class ExactSizingProcessingInfo(NanoNemotronVLProcessingInfo):
    """vLLM's processing info for this model; per-item maxima from the declaration."""

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        default = super().get_mm_max_tokens_per_item(seq_len, mm_counts)
        maxima = declared_maxima(self.get_hf_config())
        if maxima is None:
            return default
        exact = exact_max_tokens(self.get_hf_processor(), maxima, max_model_len=self.ctx.model_config.max_model_len)
        # An item larger than vLLM's own maximum can never be admitted: its answer caps ours.
        return {m: min(tokens, exact[m]) if m in exact else tokens for m, tokens in default.items()}


class ExactSizingDummyInputsBuilder(NanoNemotronVLDummyInputsBuilder):
    """vLLM's dummy inputs for this model; the profile's video and audio at the declared size."""

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any) -> Any:
        maxima = declared_maxima(self.info.get_hf_config())
        if maxima is not None:
            mm_options = self._declared_options(maxima, seq_len, mm_counts, mm_options)
        return super().get_dummy_mm_data(seq_len, mm_counts, mm_options)

    def _declared_options(
        self, maxima: ItemMaxima, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any
    ) -> MultiModalDummyOptions:
        info = self.info
        exact = exact_max_tokens(info.get_hf_processor(), maxima, max_model_len=info.ctx.model_config.max_model_len)
        options = MultiModalDummyOptions(dict(mm_options or {}))
        # Only where the declared item is smaller than vLLM's own dummy (which fills seq_len):
        # vLLM's builder ignores, with a warning, an option larger than its own item.
        if maxima.video is not None and exact.get("video", seq_len) < seq_len:
            given = options.get("video")
            frames = min(maxima.video.num_frames, info.get_num_frames_with_most_features(seq_len, mm_counts))
            if given is not None and given.num_frames:
                frames = min(frames, given.num_frames)
            options["video"] = VideoDummyOptions(
                count=given.count if given is not None else 1,
                num_frames=frames,
                width=given.width if given is not None else None,
                height=given.height if given is not None else None,
            )
        sound = info.sound_config
        if maxima.audio is not None and sound is not None and exact.get("audio", seq_len) < seq_len:
            given_audio = options.get("audio")
            length = int(round(maxima.audio.seconds * sound.sampling_rate))
            if given_audio is not None and given_audio.length:
                length = min(length, given_audio.length)
            options["audio"] = AudioDummyOptions(
                count=given_audio.count if given_audio is not None else 1, length=length
            )
        return options


@MULTIMODAL_REGISTRY.register_processor(
    NanoNemotronVLMultiModalProcessor,
    info=ExactSizingProcessingInfo,
    dummy_inputs=ExactSizingDummyInputsBuilder,
)
class NemotronNanoVLExactSizing(NemotronH_Nano_VL_V2):
    """vLLM's ``NemotronH_Nano_VL_V2``, unchanged, with nanovl's sizing of video and audio."""


@dataclass(frozen=True)
class PerItemSizing:
    """Encoder tokens per item, by modality: vLLM's own answer, the declared item's exact
    count (declared modalities only), and what is applied (the smaller of the two)."""

    vllm_default: Mapping[str, int]
    exact: Mapping[str, int]
    applied: Mapping[str, int]


def per_item_sizing(model_config: Any, mm_counts: Mapping[str, int]) -> PerItemSizing:
    """:class:`PerItemSizing` for a ``ModelConfig`` and the enabled modalities
    (``{modality: 1}``, as ``MultiModalBudget`` asks), computed on the classes directly: a
    process caches which model class it resolved, so the registry may still answer with
    vLLM's own class where nanovl's was registered late."""
    from vllm.multimodal.processing import InputProcessingContext
    from vllm.tokenizers import cached_tokenizer_from_config

    info = ExactSizingProcessingInfo(InputProcessingContext(model_config, cached_tokenizer_from_config(model_config)))
    seq_len = model_config.max_model_len
    default = dict(NanoNemotronVLProcessingInfo.get_mm_max_tokens_per_item(info, seq_len, mm_counts))
    maxima = declared_maxima(info.get_hf_config())
    exact = {} if maxima is None else exact_max_tokens(info.get_hf_processor(), maxima, max_model_len=seq_len)
    exact = {m: n for m, n in exact.items() if m in default}
    return PerItemSizing(default, exact, dict(info.get_mm_max_tokens_per_item(seq_len, mm_counts)))
