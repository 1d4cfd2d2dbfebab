"""Bounds on every number a Profiling request carries, checked on the protobuf before any
planning or profiling work (issue 10, N3).

PlanBudget's planner builds per-frame lists and converts seconds to sample counts:
``num_frames`` 2^32-1 was a ``MemoryError``, ``seconds`` NaN or 1e308 a ``ValueError`` /
``OverflowError``, a NUL in ``model_path`` a ``ValueError`` from the OS: all INTERNAL.
Items are held to the media limits the Inference service enforces
(``service.media.MediaLimits``, which GetBudget advertises): an item the server would
refuse is INVALID_ARGUMENT naming the limit and its ``nanovl serve`` flag; an engine
setting or count beyond any model's reach is OUT_OF_RANGE.
"""

from __future__ import annotations

import math

from nanovl.errors import InvalidArgument, OutOfRange, echo
from nanovl.v1 import profiling_pb2 as pb
from service.media import MediaLimits

# Items of one modality in a plan: above vLLM's own default limit_mm_per_prompt (999).
MAX_PLAN_ITEMS = 1024
# Entries of one RunDummyProfile (each is profiled separately while the capture holds the
# engine): one per modality and size of interest.
MAX_DUMMY_ENTRIES = 16
# Context lengths and token counts a plan may ask for (2^24 tokens, past every released
# model's context): max_model_len, max_num_batched_tokens, text_tokens.
MAX_PLAN_TOKENS = 1 << 24
# vLLM's max_num_seqs on any real server is in the hundreds.
MAX_PLAN_SEQS = 1 << 16
# A frame index or time: a day of video at 240 fps.
MAX_FRAME_INDEX = 24 * 3600 * 240
MAX_FRAME_TIME_S = 24 * 3600.0
# Video frame rates a plan may assume: the server samples at most 240 fps
# (service.media), and below one frame an hour the planner's millisecond timestamps
# (vLLM's int(1000 / fps)) stop meaning anything.
MAX_FPS = 240.0
MIN_FPS = 1 / 3600
# Shortest audio a plan may ask for: one sample at Parakeet's 16 kHz (the planner counts
# round(seconds x rate) samples, as the server's audio decoder delivers them; the server
# serves any clip with a sample). 0 means unsized.
MIN_AUDIO_S = 1 / 16_000
# CaptureCpuProfileRequest.processes: three roles, a few repeats tolerated.
MAX_PROCESS_ROLES = 16
# PATH_MAX on Linux.
MAX_PATH_CHARS = 4096


def _at_most(where: str, value: float, limit: float, why: str) -> None:
    if value > limit:
        raise OutOfRange(f"{where} is {value}, more than {limit} ({why})")


def check_media_items(m: pb.MediaItems, *, where: str, limits: MediaLimits) -> None:
    """One ``MediaItems`` against the server's media limits and sane counts. Zero sizes
    (an unsized item: vLLM's largest) pass; the planner resolves them."""
    _at_most(f"{where}.count", m.count, MAX_PLAN_ITEMS, "vLLM's default limit_mm_per_prompt is 999")
    kind = m.WhichOneof("item")
    if kind == "image":
        w, h = m.image.width, m.image.height
        if w * h > limits.max_image_pixels:
            raise InvalidArgument(
                f"{where}.image is {w}x{h} = {w * h:,} pixels, over this server's max_image_pixels "
                f"{limits.max_image_pixels:,} (--max-image-pixels): the server refuses such images"
            )
    elif kind == "video":
        _check_video(m.video, where=f"{where}.video", limits=limits)
    elif kind == "audio":
        seconds = m.audio.seconds
        if not math.isfinite(seconds) or seconds < 0 or 0 < seconds < MIN_AUDIO_S:
            raise InvalidArgument(
                f"{where}.audio.seconds must be 0 (unsized) or a finite number of seconds >= {MIN_AUDIO_S:g}, "
                f"got {seconds!r}"
            )
        if seconds > limits.max_audio_seconds:
            raise InvalidArgument(
                f"{where}.audio.seconds is {seconds:g}, over this server's max_audio_seconds "
                f"{limits.max_audio_seconds:g} (--max-audio-seconds): the server refuses longer audio"
            )


def _check_video(v: pb.VideoItem, *, where: str, limits: MediaLimits) -> None:
    max_frames = limits.max_video_frames
    # len() first: a repeated field's length costs nothing, its elements do.
    for name in ("frame_indices", "frame_times_s"):
        if (n := len(getattr(v, name))) > max_frames:
            raise InvalidArgument(
                f"{where}.{name} has {n} entries, over this server's max_video_frames {max_frames} (--max-video-frames)"
            )
    if v.num_frames > max_frames:
        raise InvalidArgument(
            f"{where}.num_frames is {v.num_frames}, over this server's max_video_frames {max_frames} "
            "(--max-video-frames): the server samples at most that many frames"
        )
    pixels = v.width * v.height
    if pixels > limits.max_video_pixels_per_frame:
        raise InvalidArgument(
            f"{where} frames of {v.width}x{v.height} are {pixels:,} pixels, over this server's "
            f"max_video_pixels_per_frame {limits.max_video_pixels_per_frame:,} (--max-video-pixels-per-frame)"
        )
    frames = max(v.num_frames, len(v.frame_times_s))
    if frames * pixels * 3 > limits.max_video_decoded_bytes:
        raise InvalidArgument(
            f"{where}: {frames} frames of {v.width}x{v.height} decode to {frames * pixels * 3:,} bytes, over this "
            f"server's max_video_decoded_bytes {limits.max_video_decoded_bytes:,} (--max-video-decoded-bytes)"
        )
    if v.HasField("fps") and not (math.isfinite(v.fps) and MIN_FPS <= v.fps <= MAX_FPS):
        raise InvalidArgument(
            f"{where}.fps must be in [1/3600, {MAX_FPS:g}] frames per second (one frame an hour to the server's "
            f"sampling maximum), got {v.fps!r}"
        )
    if any(i > MAX_FRAME_INDEX for i in v.frame_indices):
        raise OutOfRange(f"{where}.frame_indices must be at most {MAX_FRAME_INDEX} (a day of video at 240 fps)")
    if any(not (math.isfinite(t) and 0 <= t <= MAX_FRAME_TIME_S) for t in v.frame_times_s):
        raise InvalidArgument(f"{where}.frame_times_s must be finite times in [0, {MAX_FRAME_TIME_S:g}] seconds")


def check_plan_request(req: pb.PlanBudgetRequest, *, limits: MediaLimits) -> None:
    """Every field of a ``PlanBudgetRequest``: INVALID_ARGUMENT / OUT_OF_RANGE naming the
    field, the bound and where it comes from."""
    _at_most("items", len(req.items), 3, "one entry per modality: image, video, audio")
    for i, m in enumerate(req.items):
        check_media_items(m, where=f"items[{i}]", limits=limits)
    for name in ("max_model_len", "max_num_batched_tokens", "text_tokens"):
        if req.HasField(name):
            _at_most(name, getattr(req, name), MAX_PLAN_TOKENS, "2^24 tokens, past every model's context")
    if req.HasField("max_num_seqs"):
        _at_most("max_num_seqs", req.max_num_seqs, MAX_PLAN_SEQS, "2^16 sequences")
    if req.HasField("model_path"):
        path = req.model_path
        if len(path) > MAX_PATH_CHARS:
            raise InvalidArgument(f"model_path is {len(path)} characters; a path has at most {MAX_PATH_CHARS}")
        if not path or "\x00" in path:
            raise InvalidArgument(
                f"model_path {echo(path)} is not a path (empty, or holding a NUL character); "
                "give a checkpoint directory on the server, or leave it unset for the served one"
            )


def check_dummy_request(req: pb.RunDummyProfileRequest, *, limits: MediaLimits) -> None:
    """A ``RunDummyProfileRequest``: a bounded number of entries, each within the media limits."""
    _at_most("items", len(req.items), MAX_DUMMY_ENTRIES, "each entry is profiled separately, holding the engine")
    for i, m in enumerate(req.items):
        check_media_items(m, where=f"items[{i}]", limits=limits)


def check_cpu_request(req: pb.CaptureCpuProfileRequest) -> None:
    """``processes`` names at most a few roles (SERVER, ENGINE_CORE, WORKER; repeats are
    harmless): counted before each is looked at. Durations and rates are checked by
    ``profiling.profilers.cpu_profile.validate`` and the server's limits."""
    _at_most("processes", len(req.processes), MAX_PROCESS_ROLES, "one entry per process role")


__all__ = [
    "check_cpu_request",
    "MAX_DUMMY_ENTRIES",
    "MAX_PLAN_ITEMS",
    "MAX_PLAN_SEQS",
    "MAX_PLAN_TOKENS",
    "check_dummy_request",
    "check_media_items",
    "check_plan_request",
]
