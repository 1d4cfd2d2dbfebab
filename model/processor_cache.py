"""How nanovl's requests stay exact under vLLM's multimodal processor cache.

vLLM's processor cache (``--mm-processor-cache-gb``, on by default) stores each media
item's processed tensors and prompt replacement under the item's hash (its content and
the processor options). On a request it runs the model's processor only on the items it
has not seen, together, with one dummy tag per missing item as the text, and reuses the
stored results of the others (``BaseMultiModalProcessor._cached_apply_hf_processor``).

For this model that matters in exactly one place: the dynamic-resolution tiler
(``DynamicResolutionImageTiler.compute_params``) shares one patch budget,
``max_model_len - text - 4`` tokens, among the images it processes together, where
``text`` counts the dummy tags of the video and audio items processed with them. Once
that budget binds, an image's tokens depend on which other items were missing from the
cache: an image first seen alone keeps its full size when it is later sent beside four
large images, and the prompt overflows the length every stateless prediction gives
(at ``max_model_len`` 512: predicted 481, produced 742). Tiled images, videos and audio
are sized from the item alone, and video metadata is part of the hash.

nanovl makes its requests deterministic with respect to the cache instead of modelling
the cache's contents (which depend on the server's history, its size and eviction, and
no planner can know): when the tiler's budget can bind for a prompt
(``token_accounting.images_context_free`` is False), every item of that prompt gets a
request-unique ``multi_modal_uuids`` entry, so the processor cache misses all of them
and processes them together, exactly as with the cache off and as nanovl's accounting
counts. Every other prompt keeps vLLM's content hashes, and the cache works as usual:
its images get the same tokens in every such prompt. This also keeps vLLM's encoder
cache, which is keyed by the same identifier, from serving an image encoded at one
resolution to a prompt that gives it another.

The same function refuses what vLLM's processor cannot process when it gets all of a
prompt's items together (``InvalidArgument``), before it fails on them: images the
dynamic tiler scales to no patch rows or columns (it divides by zero), and, on
checkpoints that keep each video's aspect ratio, videos whose frames resize to different
shapes (the processor concatenates every video's frames into one tensor). With the cache
on, vLLM fails on such a prompt or not depending on which items it has seen before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from model.token_accounting import (
    ModelGeometry,
    dummy_text_length,
    dynamic_image_grids,
    images_context_free,
    video_frame_geometry,
)
from nanovl.errors import InvalidArgument
from nanovl.modalities import Modality


def image_size(item: Any) -> tuple[int, int]:
    """``(width, height)`` of an image item as vLLM's ``multi_modal_data`` takes it (a PIL
    image, or an ``HWC`` array)."""
    size = getattr(item, "size", None)
    if isinstance(size, tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    shape = getattr(item, "shape", None)
    if shape is not None and len(shape) == 3:
        return int(shape[1]), int(shape[0])
    raise TypeError(f"not an image item: {type(item).__name__}")


def video_frame_size(item: Any) -> tuple[int, int]:
    """``(width, height)`` of a video item's frames (``(frames [T,H,W,3], metadata)``)."""
    frames = item[0] if isinstance(item, tuple) else item
    return int(frames.shape[2]), int(frames.shape[1])


def check_videos(geom: ModelGeometry, videos: Sequence[Any]) -> None:
    """Refuse videos vLLM's processor cannot take together: it resizes each video's frames
    (``get_video_target_size_and_feature_size``) and concatenates all of them
    (``NanoNemotronVLProcessor._preprocess_video``, ``torch.cat``), which fails when two
    videos resize to different frame shapes (checkpoints with
    ``video_maintain_aspect_ratio``)."""
    if len(videos) < 2:
        return
    sizes = [video_frame_size(v) for v in videos]
    shapes = [video_frame_geometry(geom, w, h)[:2] for w, h in sizes]
    if len(set(shapes)) > 1:
        first = shapes[0]
        j = next(i for i, s in enumerate(shapes) if s != first)
        raise InvalidArgument(
            f"videos 1 and {j + 1} of this prompt ({sizes[0][0]}x{sizes[0][1]} and {sizes[j][0]}x{sizes[j][1]} "
            f"pixels per frame) resize to different frame shapes for this model ({first[0]}x{first[1]} and "
            f"{shapes[j][0]}x{shapes[j][1]}: it keeps each video's aspect ratio), and vLLM's processor cannot "
            "combine videos of different frame shapes in one prompt; send them in separate requests, or videos "
            "of one aspect ratio"
        )


def multi_modal_uuids(
    geom: ModelGeometry,
    multi_modal_data: Mapping[Modality, Sequence[Any]],
    *,
    nonce: str,
) -> dict[Modality, list[str]] | None:
    """The ``multi_modal_uuids`` for one prompt's media, or None for vLLM's own hashes.

    ``nonce``: unique to this request (a request id). Raises ``InvalidArgument`` for items
    vLLM's processor cannot process together (see the module docstring), naming the item
    and the rule.
    """
    check_videos(geom, multi_modal_data.get("video") or ())
    images = multi_modal_data.get("image") or ()
    if not geom.dynamic_resolution or not images:
        return None
    sizes = [image_size(it) for it in images]
    text = dummy_text_length(
        geom,
        num_videos=len(multi_modal_data.get("video") or ()),
        num_audios=len(multi_modal_data.get("audio") or ()),
    )
    dynamic_image_grids(geom, sizes, text_prompt_length=text)  # refuses images vLLM cannot process
    if images_context_free(geom, sizes, text_prompt_length=text):
        return None
    return {m: [f"nanovl-{nonce}-{m}-{i}" for i in range(len(items))] for m, items in multi_modal_data.items()}
