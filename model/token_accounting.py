"""Exact token counts for one image, video or audio item of Nemotron Nano VL.

Computed from the checkpoint config, the tokenizer and the processor settings (tiles,
dynamic resolution, temporal patch size, EVS pruning rate, audio clip length) without
touching pixel or audio data. Every count comes from vLLM's own helpers, driven by a
``NanoNemotronVLProcessor`` built with exactly the arguments vLLM builds it with, so the
numbers are the ones vLLM's multimodal processor produces for the same item.

Two numbers per item, and both matter:

- ``prompt_tokens``: the placeholder tokens the item occupies in the prompt, wrappers
  included (``<img>``/``</img>`` around every tile set or frame, the ``Frame i sampled at
  t seconds:`` text before each video frame, ``<so_start>``/``<so_end>`` around audio).
  This is what counts against ``max_model_len``.
- ``encoder_tokens``: the embeddings vLLM attributes to the item
  (``PlaceholderRange.get_num_embeds``). This is what occupies the encoder cache and the
  encoder compute budget, and what vLLM compares with the encoder cache size when it
  admits a request. For images and audio it is the context tokens only (wrappers are
  ordinary text embeddings); for video it is the whole replacement, separators and
  ``<img>`` wrappers included, because the model's ``embed_multimodal`` returns the
  interleaved text+frame sequence for a video.

``feature_tokens`` is what the vision/audio encoder itself outputs (context tokens);
for video it is smaller than ``encoder_tokens``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from nanovl.errors import FailedPrecondition, InvalidArgument
from nanovl.modalities import Modality

if TYPE_CHECKING:
    from vllm.transformers_utils.processors.nano_nemotron_vl import NanoNemotronVLProcessor


# vLLM's dummy video metadata uses 2 fps; the frame separators' timestamps depend on it.
DEFAULT_VIDEO_FPS = 2.0


@dataclass(frozen=True)
class ImageDetail:
    """How an image is cut for the vision tower."""

    tiles: int  # tiles fed to RADIO, thumbnail included (1 for dynamic resolution)
    tile_width: int  # pixels of each tile after resizing
    tile_height: int
    thumbnail: bool
    dynamic_resolution: bool


@dataclass(frozen=True)
class VideoDetail:
    frames: int
    tubelets: int  # frames grouped by the temporal patch size (== frames when it is 1)
    frame_width: int  # pixels of each frame after resizing
    frame_height: int
    tokens_per_tubelet: int  # before EVS pruning
    retained_tokens: int  # after EVS pruning (== tubelets * tokens_per_tubelet without)


@dataclass(frozen=True)
class AudioDetail:
    num_samples: int
    sampling_rate: int
    clips: int  # the extractor splits audio into clips of `clip_seconds`
    clip_samples: tuple[int, ...]  # padded length of each clip


@dataclass(frozen=True)
class ItemTokens:
    """Token accounting for one media item (see the module docstring)."""

    modality: Modality
    prompt_tokens: int
    encoder_tokens: int
    feature_tokens: int
    detail: ImageDetail | VideoDetail | AudioDetail


@dataclass(frozen=True)
class ModelGeometry:
    """The settings that decide how many tokens an item takes.

    Build with :meth:`from_checkpoint`, :meth:`from_hf_config` or, inside a process that
    already has vLLM's processor, :meth:`from_processor`. The vLLM processor is kept
    (outside equality) because its helpers do the arithmetic and its tokenizer encodes
    video frame separators, whose length is text-dependent.
    """

    image_size: int
    patch_size: int
    downsample_ratio: float
    use_thumbnail: bool
    max_num_tiles: int
    tokens_per_tile: int
    dynamic_min_patches: int | None  # set only for dynamic-resolution checkpoints
    dynamic_max_patches: int | None
    max_model_len: int  # the dynamic tiler's token budget depends on it
    video_temporal_patch_size: int
    video_target_num_patches: int | None
    video_maintain_aspect_ratio: bool
    video_pruning_rate: float | None
    audio_sampling_rate: int | None  # None: the checkpoint has no audio encoder
    audio_clip_seconds: float | None
    llm_hidden_size: int
    processor: NanoNemotronVLProcessor = field(compare=False, repr=False)
    # Tokens of one "<video>" and one audio tag in vLLM's dummy text, when they add up
    # (special tokens), so ``dummy_text_length`` needs no tokenizer call per request.
    tag_tokens: tuple[int, int] | None = field(default=None, compare=False, repr=False)

    @property
    def dynamic_resolution(self) -> bool:
        return self.dynamic_min_patches is not None

    @property
    def supports_audio(self) -> bool:
        return self.audio_sampling_rate is not None

    @classmethod
    def from_processor(cls, processor: NanoNemotronVLProcessor, *, max_model_len: int) -> ModelGeometry:
        """Geometry of a processor vLLM built (``info.get_hf_processor()``)."""
        config = processor.config
        tiler = processor.dynamic_tiler
        extractor = processor.audio_extractor
        args = config.vision_config.args
        return cls(
            image_size=processor.image_size,
            patch_size=config.patch_size,
            downsample_ratio=config.downsample_ratio,
            use_thumbnail=processor.use_thumbnail,
            max_num_tiles=processor.max_num_tiles,
            tokens_per_tile=processor.num_image_token,
            dynamic_min_patches=args["min_num_patches"] if tiler else None,
            dynamic_max_patches=args["max_num_patches"] if tiler else None,
            max_model_len=max_model_len,
            video_temporal_patch_size=processor.video_temporal_patch_size,
            video_target_num_patches=processor.video_target_num_patches,
            video_maintain_aspect_ratio=processor.video_maintain_aspect_ratio,
            video_pruning_rate=processor.video_pruning_rate,
            audio_sampling_rate=extractor.config.sampling_rate if extractor else None,
            audio_clip_seconds=float(extractor.config.clip_duration_s) if extractor else None,
            llm_hidden_size=config.text_config.hidden_size,
            processor=processor,
            tag_tokens=_tag_tokens(processor),
        )

    @classmethod
    def from_hf_config(
        cls,
        config: Any,
        *,
        tokenizer: Any,
        max_model_len: int | None = None,
        max_num_tiles: int | None = None,
        video_pruning_rate: float | None = None,
    ) -> ModelGeometry:
        """Geometry for a loaded ``PretrainedConfig`` and tokenizer.

        Arguments mirror vLLM's: ``max_model_len`` (default: the LLM's
        ``max_position_embeddings``, vLLM's own default), ``max_num_tiles`` (the
        ``mm_processor_kwargs`` key; default 12), ``video_pruning_rate`` (EVS).
        """
        from vllm.transformers_utils.processors.nano_nemotron_vl import (
            IMG_CONTEXT,
            NanoNemotronVLProcessor,
        )

        if max_model_len is None:
            max_model_len = int(config.text_config.max_position_embeddings)
        # The same arguments NanoNemotronVLProcessingInfo.get_hf_processor passes.
        processor = NanoNemotronVLProcessor(
            config,
            tokenizer,
            max_model_len=max_model_len,
            max_num_tiles=max_num_tiles,
            video_token=IMG_CONTEXT,
            video_pruning_rate=video_pruning_rate,
        )
        return cls.from_processor(processor, max_model_len=max_model_len)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        max_model_len: int | None = None,
        max_num_tiles: int | None = None,
        video_pruning_rate: float | None = None,
    ) -> ModelGeometry:
        """Geometry for a checkpoint directory (config + tokenizer; weights are not read)."""
        from transformers import AutoConfig, AutoTokenizer

        path = os.fspath(path)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise InvalidArgument(f"{path!r} is not a checkpoint directory: it has no config.json")
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        return cls.from_hf_config(
            config,
            tokenizer=tokenizer,
            max_model_len=max_model_len,
            max_num_tiles=max_num_tiles,
            video_pruning_rate=video_pruning_rate,
        )


def _tag_tokens(processor: NanoNemotronVLProcessor) -> tuple[int, int] | None:
    from vllm.transformers_utils.processors.nano_nemotron_vl import AUDIO_CONTEXT

    def length(text: str) -> int:
        return len(processor.tokenizer(text, add_special_tokens=False).input_ids)

    video, audio = length("<video>"), length(AUDIO_CONTEXT)
    mixed = "<video>" + AUDIO_CONTEXT + "<video><video>" + AUDIO_CONTEXT * 2 + "<video>"
    return (video, audio) if length(mixed) == 4 * video + 3 * audio else None


def _count(details: Any) -> tuple[int, int]:
    """(prompt tokens, embeddings) of a vLLM ``PromptUpdateDetails``."""
    full = details.full
    if details.is_embed is None:
        return len(full), len(full)
    return len(full), int(details.is_embed(full).sum())


class _SizeOnlyImage(Image.Image):
    """A PIL image that has a size and no pixels.

    vLLM's dynamic tiler only reads ``width``/``height`` when it sizes an image but
    asserts it is given a PIL image; this avoids allocating a 100-megapixel buffer to
    answer "how many tokens".
    """

    def __init__(self, width: int, height: int, index: int = 0) -> None:
        super().__init__()
        self._nanovl_size = (width, height)
        self.nanovl_index = index  # position in the prompt's images, for error messages

    @property
    def size(self) -> tuple[int, int]:  # type: ignore[override]
        return self._nanovl_size


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value or value <= 0:
            raise InvalidArgument(f"{name} must be positive, got {value}")


def _thin_image_error(
    sizes: Sequence[tuple[int, int]], index: int | None, patch_budget: int | None, grid: tuple[int, int] | None
) -> InvalidArgument:
    if index is None:  # vLLM's internals changed: the rule still holds, the details are unknown
        which = "an image of this prompt" + (f" ({', '.join(f'{w}x{h}' for w, h in sizes)})" if sizes else "")
    else:
        width, height = sizes[index]
        which = f"image {index + 1} of {len(sizes)}" if len(sizes) > 1 else "the image"
        which += f" ({width}x{height} pixels)"
    scaled = (
        f": scaled to its share of the prompt's patch budget ({patch_budget} patches) it is {grid[0]}x{grid[1]} patches"
        if grid is not None and patch_budget is not None
        else ""
    )
    return InvalidArgument(
        f"{which} is too thin for this model's dynamic-resolution tiler{scaled}, "
        "and vLLM's processor cannot process an image with no patch rows or columns "
        "(DynamicResolutionImageTiler.process_media divides by zero or resizes to 0 pixels); "
        "crop or pad it nearer to square, or send fewer or smaller images in this prompt"
    )


def _dynamic_params(geom: ModelGeometry, sizes: Sequence[tuple[int, int]], text_prompt_length: int) -> list[Any]:
    """vLLM's dynamic tiler's ``DynamicResolutionParams`` for the images of one prompt.

    vLLM's own ``DynamicResolutionImageTiler.compute_params`` decides; an image it would
    scale to no patch rows or columns raises ``InvalidArgument`` (vLLM's processor raises
    ``ZeroDivisionError`` for it in ``process_media``, or fails to resize it to 0 pixels),
    so nanovl refuses exactly the images vLLM cannot process.
    """
    tiler = geom.processor.dynamic_tiler
    assert tiler is not None
    budget = tiler.max_num_tokens_available(text_prompt_length=text_prompt_length)
    media = [_SizeOnlyImage(w, h, i) for i, (w, h) in enumerate(sizes)]
    try:
        params = tiler.compute_params(media, budget)
    except ZeroDivisionError as exc:
        # The failing frame is process_media(media, current_num_tokens_available): its
        # locals say which image, its patch budget and the grid it shrank to.
        tb = exc.__traceback__
        frame = None
        while tb is not None:
            if tb.tb_frame.f_code.co_name == "process_media":
                frame = tb.tb_frame
            tb = tb.tb_next
        local = frame.f_locals if frame is not None else {}
        grid = (local.get("target_patch_width"), local.get("target_patch_height"))
        budget_there = local.get("current_num_tokens_available")
        raise _thin_image_error(
            sizes,
            getattr(local.get("media"), "nanovl_index", None),
            int(budget_there) if isinstance(budget_there, int | float) else None,
            (int(grid[0]), int(grid[1])) if all(isinstance(g, int) for g in grid) else None,
        ) from None
    for param in params:
        pw, ph = param.patch_size
        if pw <= 0 or ph <= 0 or param.num_embeddings <= 0:
            raise _thin_image_error(sizes, param.media.nanovl_index, budget, (pw, ph))
    return params


def dynamic_image_grids(
    geom: ModelGeometry, sizes: Sequence[tuple[int, int]], *, text_prompt_length: int = 0
) -> list[tuple[int, int]]:
    """``(width, height)`` in patches that vLLM's dynamic tiler gives each image of one
    prompt processed together (no tokenizer involved: safe beside vLLM's own threads).
    ``InvalidArgument`` for an image it cannot process (see ``_dynamic_params``)."""
    for width, height in sizes:
        _check_positive(width=width, height=height)
    return [tuple(p.patch_size) for p in _dynamic_params(geom, sizes, text_prompt_length)]


def images_context_free(geom: ModelGeometry, sizes: Sequence[tuple[int, int]], *, text_prompt_length: int = 0) -> bool:
    """Whether each image's tokens are the same in every subset of this prompt's items.

    vLLM's processor cache processes only the items it has not seen, together (with one
    dummy tag per missing video and audio item), and reuses the stored result of the
    others. With tiling, or with dynamic resolution when this is True, that changes
    nothing: every image gets what it gets alone. False means the dynamic tiler shares a
    binding budget among the images, so an image's tokens depend on which other items
    the cache happens to hold (see ``model.processor_cache``).

    The rule follows ``DynamicResolutionImageTiler.compute_params``: its first pass
    gives each image ``max(min(budget, max_num_patches), min_num_patches)`` patches
    (``budget`` = 4 x ``max_num_tokens_available``, pixel shuffle) and returns at once
    when the images' patches fit ``budget``. If that per-image share is the same for this
    prompt as for an image alone (text length 0), the budget is not raised to
    ``min_num_patches`` per image, and the first pass fits, then every subset of the
    items (a smaller text length, fewer images) also ends after that same first pass.
    """
    tiler = geom.processor.dynamic_tiler
    if tiler is None or not sizes:
        return True
    scale = (4 if tiler.PIXEL_SHUFFLE else 1) * (4 if tiler.CONV_MERGING else 1)
    min_patches = geom.dynamic_min_patches or 0
    max_patches = geom.dynamic_max_patches or 0
    cap = max_patches if max_patches > 0 else math.inf

    def share(available: int) -> float:
        return max(min(available, cap), min_patches)

    available = tiler.max_num_tokens_available(text_prompt_length=text_prompt_length) * scale
    alone = tiler.max_num_tokens_available(text_prompt_length=0) * scale
    if share(available) != share(alone) or available < min_patches * len(sizes):
        return False
    per_image = int(share(available))
    used = 0
    for i, (w, h) in enumerate(sizes):
        try:
            _, patches = tiler.process_media(_SizeOnlyImage(w, h, i), per_image)
        except ZeroDivisionError:  # a thin image: dynamic_image_grids names it
            return False
        used += patches
    return used <= available


def images_tokens(
    geom: ModelGeometry,
    sizes: Sequence[tuple[int, int]],
    *,
    max_num_tiles: int | None = None,
    text_prompt_length: int = 0,
) -> list[ItemTokens]:
    """Tokens of the images of one prompt, given as ``(width, height)``.

    With tiling, images are independent. With dynamic resolution, vLLM's tiler shares
    one budget (``max_model_len - text_prompt_length - 4`` tokens) among the images it
    processes together, so counts can depend on the other images. vLLM calls its
    processor with dummy text (one tag per item, no user text) on the items its
    processor cache misses, so ``text_prompt_length`` is the number of video and audio
    tags processed alongside the images (0 for image-only prompts).
    """
    proc = geom.processor
    for width, height in sizes:
        _check_positive(width=width, height=height)
    tiles = max_num_tiles or geom.max_num_tiles
    out: list[ItemTokens] = []
    if proc.dynamic_tiler is not None:
        for param in _dynamic_params(geom, sizes, text_prompt_length):
            pw, ph = param.patch_size
            prompt, embeds = _count(proc.get_image_repl(param.num_embeddings, None))
            out.append(
                ItemTokens(
                    modality="image",
                    prompt_tokens=prompt,
                    encoder_tokens=embeds,
                    feature_tokens=param.num_embeddings,
                    detail=ImageDetail(
                        tiles=1,
                        tile_width=pw * geom.patch_size,
                        tile_height=ph * geom.patch_size,
                        thumbnail=False,
                        dynamic_resolution=True,
                    ),
                )
            )
        return out

    from vllm.transformers_utils.processors.internvl import (
        calculate_internvl_targets,
        get_internvl_target_ratios,
    )

    ratios = get_internvl_target_ratios(1, tiles)
    for width, height in sizes:
        blocks, target_w, target_h = calculate_internvl_targets(
            orig_width=width,
            orig_height=height,
            target_ratios=ratios,
            image_size=geom.image_size,
            use_thumbnail=geom.use_thumbnail,
        )
        feature = proc.get_num_image_tokens(image_width=width, image_height=height, max_num_tiles=tiles)
        prompt, embeds = _count(proc.get_image_repl(feature, blocks))
        grid = (target_w // geom.image_size) * (target_h // geom.image_size)
        out.append(
            ItemTokens(
                modality="image",
                prompt_tokens=prompt,
                encoder_tokens=embeds,
                feature_tokens=feature,
                detail=ImageDetail(
                    tiles=blocks,
                    tile_width=geom.image_size,
                    tile_height=geom.image_size,
                    thumbnail=blocks > grid,
                    dynamic_resolution=False,
                ),
            )
        )
    return out


def dummy_text_length(geom: ModelGeometry, *, num_videos: int = 0, num_audios: int = 0) -> int:
    """The ``text_prompt_length`` vLLM's dynamic tiler sees for a prompt's images.

    vLLM runs the processor on dummy text, one tag per item, and the tiler counts the
    tokens left after removing the image tags: the video and audio tags.
    """
    from vllm.transformers_utils.processors.nano_nemotron_vl import AUDIO_CONTEXT

    if geom.tag_tokens is not None:
        return num_videos * geom.tag_tokens[0] + num_audios * geom.tag_tokens[1]
    text = "<video>" * num_videos + AUDIO_CONTEXT * num_audios
    if not text:
        return 0
    return len(geom.processor.tokenizer(text, add_special_tokens=False).input_ids)


def image_tokens(geom: ModelGeometry, width: int, height: int, *, max_num_tiles: int | None = None) -> ItemTokens:
    """Tokens of one image alone in its prompt."""
    return images_tokens(geom, [(width, height)], max_num_tiles=max_num_tiles)[0]


def video_frame_geometry(geom: ModelGeometry, width: int, height: int) -> tuple[int, int, int]:
    """``(frame_width, frame_height, tokens_per_tubelet)`` after vLLM's frame resize."""
    if geom.video_target_num_patches is not None:
        from vllm.transformers_utils.processors.nano_nemotron_vl import (
            get_video_target_size_and_feature_size,
        )

        return get_video_target_size_and_feature_size(
            orig_w=width,
            orig_h=height,
            target_patches=geom.video_target_num_patches,
            maintain_aspect_ratio=geom.video_maintain_aspect_ratio,
            patch_size=geom.patch_size,
            downsample_ratio=geom.downsample_ratio,
        )
    # Without a target patch count every frame is resized to one square tile.
    return geom.image_size, geom.image_size, geom.tokens_per_tile


def video_tokens(
    geom: ModelGeometry,
    num_frames: int,
    width: int,
    height: int,
    *,
    fps: float = DEFAULT_VIDEO_FPS,
    frame_indices: Sequence[int] | None = None,
) -> ItemTokens:
    """Tokens of one video of ``num_frames`` sampled frames of ``width`` x ``height``.

    ``fps`` and ``frame_indices`` (positions of the sampled frames in the source video;
    default ``0..num_frames-1``) are the metadata vLLM receives; they only change the
    timestamp text before each frame.
    """
    from vllm.multimodal.video_prune.evs import compute_retained_tokens_count

    _check_positive(num_frames=num_frames, width=width, height=height, fps=fps)
    indices = list(range(num_frames)) if frame_indices is None else [int(i) for i in frame_indices]
    if len(indices) != num_frames:
        raise InvalidArgument(f"frame_indices has {len(indices)} entries for {num_frames} frames")
    proc = geom.processor
    frame_w, frame_h, per_tubelet = video_frame_geometry(geom, width, height)
    t = geom.video_temporal_patch_size
    tubelets = math.ceil(num_frames / t) if t > 1 else num_frames

    rate = geom.video_pruning_rate
    if rate is not None and rate > 0.0:
        # EVS keeps a fixed token count per video; vLLM puts them all on the first frame
        # for sizing, every frame still gets its separator and <img></img>.
        retained = compute_retained_tokens_count(tokens_per_frame=per_tubelet, num_frames=tubelets, q=rate)
        tokens_per_frame = [retained] + [0] * (tubelets - 1)
    else:
        retained = per_tubelet * tubelets
        tokens_per_frame = [per_tubelet] * tubelets

    details = proc.get_video_repl(
        tokens_per_frame=tokens_per_frame,
        frames_indices=indices,
        frame_duration_ms=int(1000 / fps),  # vLLM truncates to whole milliseconds too
        tokenizer=proc.tokenizer,
        img_start_token_ids=proc._img_start_token_ids,
        img_end_token_ids=proc._img_end_token_ids,
        img_context_token_ids=proc._img_context_token_ids,
        video_temporal_patch_size=t,
    )
    prompt, embeds = _count(details)
    return ItemTokens(
        modality="video",
        prompt_tokens=prompt,
        encoder_tokens=embeds,
        feature_tokens=retained,
        detail=VideoDetail(
            frames=num_frames,
            tubelets=tubelets,
            frame_width=frame_w,
            frame_height=frame_h,
            tokens_per_tubelet=per_tubelet,
            retained_tokens=retained,
        ),
    )


def audio_num_samples(geom: ModelGeometry, seconds: float) -> int:
    """Samples of ``seconds`` of audio at the model's sample rate (what vLLM resamples to)."""
    if geom.audio_sampling_rate is None:
        raise FailedPrecondition("this checkpoint has no audio encoder (its sound_config is null)")
    return int(round(seconds * geom.audio_sampling_rate))


def audio_tokens(geom: ModelGeometry, *, seconds: float | None = None, num_samples: int | None = None) -> ItemTokens:
    """Tokens of one audio item, given its duration or its sample count at the model rate."""
    extractor = geom.processor.audio_extractor
    if extractor is None:
        raise FailedPrecondition("this checkpoint has no audio encoder (its sound_config is null)")
    if (seconds is None) == (num_samples is None):
        raise InvalidArgument("give exactly one of seconds or num_samples")
    n = audio_num_samples(geom, seconds) if seconds is not None else int(num_samples)  # type: ignore[arg-type]
    _check_positive(num_samples=n)
    # get_audio_repl only reads len(audio): a zero-stride view has the length and no data.
    details = geom.processor.get_audio_repl(np.broadcast_to(np.float32(0.0), (n,)))
    prompt, embeds = _count(details)
    clips = tuple(extractor._clip_sizes(n))
    return ItemTokens(
        modality="audio",
        prompt_tokens=prompt,
        encoder_tokens=embeds,
        feature_tokens=extractor.audio_token_count(n),
        detail=AudioDetail(
            num_samples=n, sampling_rate=extractor.config.sampling_rate, clips=len(clips), clip_samples=clips
        ),
    )


def video_with_audio_tokens(
    geom: ModelGeometry,
    num_frames: int,
    width: int,
    height: int,
    *,
    num_samples: int,
    fps: float = DEFAULT_VIDEO_FPS,
    frame_indices: Sequence[int] | None = None,
) -> tuple[ItemTokens, ItemTokens]:
    """Tokens of a video given with its audio track (``use_audio_in_video``): the video
    item, then the track as an audio item of ``num_samples`` samples at the model's rate.

    vLLM places the track's audio context right after the video's placeholder and
    processes it as one more audio item (``NanoNemotronVLMultiModalProcessor.apply``), so
    the two counts are exactly :func:`video_tokens` and :func:`audio_tokens`; the prompt
    takes their sum. Raises ``FailedPrecondition`` on a checkpoint without an audio encoder.
    """
    audio = audio_tokens(geom, num_samples=num_samples)
    return video_tokens(geom, num_frames, width, height, fps=fps, frame_indices=frame_indices), audio
