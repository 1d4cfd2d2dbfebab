"""The chunked-upload case (issue 16): a ~20 MB video through ``StreamGenerate`` in
64 KiB chunks, against the same kind of request whose bytes are already on the server.

*Already on the server* is measured with ``Generate``: its server-side clock
(``Final.timings.ttft_s``, start → first token) starts when the whole request, video
included, has arrived and been parsed, so it is the time to first token from bytes in
the server's memory. ``StreamGenerate``'s client TTFT (first chunk sent → first token)
includes the upload. The TTFT the upload path adds is

    client TTFT p50 (StreamGenerate) / server TTFT p50 (Generate) − 1,

and the target is ≤ 20 %. ``Generate``'s own client TTFT (one 20 MB message) is reported
beside it. Every request carries its own video (same size and shape, another seed):
vLLM caches processed media by content, so a repeated video would skip the work the
comparison is about. The variants alternate (stream first, then unary first), after one
unmeasured request of each.

The videos (:func:`grain_video`): H.264 MP4 at 1280×720, 24 fps, a keyframe every 2 s,
film grain (seeded uniform noise) over two smooth colour fields blending into each
other, frames added until the file reaches the target size (about 10 s: a phone clip at
about 16 Mbit/s). They are cached under the benchmark's work directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from bench.config import UploadSpec
from bench.results import UploadResult, UploadSample

__all__ = ["UploadVideo", "grain_video", "measure_upload", "prepare_videos", "upload_summary"]

_STEPS = 12  # distinct backgrounds along the clip (the grain differs in every frame)
_BANK = 4  # grain fields, each read at a random offset per frame
_PAD = 256  # offset range: far beyond the encoder's motion search, so grain never matches


@dataclass(frozen=True)
class UploadVideo:
    data: bytes
    frames: int
    seconds: float


def _yuv420(rgb: np.ndarray) -> np.ndarray:
    """An RGB frame as a planar yuv420p array ``[H * 3 / 2, W]`` (FFmpeg's conversion)."""
    import av

    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()


def grain_video(spec: UploadSpec, seed: int) -> UploadVideo:
    """A seeded MP4 of ``spec.target_bytes`` (a little over: the encoder's last frames
    land after the size is reached). Deterministic for a seed and spec. Frames are built
    in yuv420p (the encoder's format), so no per-frame colour conversion is needed: grain
    of ±``spec.grain`` on luma and a third of it on chroma, read from a few noise fields
    at random offsets."""
    import av

    from loadtest.media import smooth_image_array

    w, h, g = spec.width, spec.height, spec.grain
    gc = max(1, g // 3)
    rng = np.random.default_rng(seed)
    a = smooth_image_array(w, h, seed).astype(np.float32)
    b = smooth_image_array(w, h, seed + 1).astype(np.float32)
    bases = []
    for x in np.linspace(0, 1, _STEPS):
        yuv = _yuv420(((1 - x) * a + x * b).astype(np.uint8)).astype(np.int16)
        # Shifted down by the grain so that adding grain in [0, 2g] stays within uint8.
        yuv[:h] = np.clip(yuv[:h], g, 255 - g) - g
        yuv[h:] = np.clip(yuv[h:], gc, 255 - gc) - gc
        bases.append(yuv.astype(np.uint8))
    luma = rng.integers(0, 2 * g + 1, (_BANK, h + _PAD, w + _PAD), dtype=np.uint8)
    chroma = rng.integers(0, 2 * gc + 1, (_BANK, h // 2 + _PAD, w + _PAD), dtype=np.uint8)
    buf = io.BytesIO()
    size = frames = 0
    # Frames needed is not known up front: the background blends over an assumed length.
    expected = max(1, spec.target_bytes // max(1, w * h // 12))
    frame = np.empty((h * 3 // 2, w), dtype=np.uint8)
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(spec.fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "23", "g": str(spec.gop), "preset": "ultrafast", "bf": "2"}
        while size < spec.target_bytes:
            dy, dx, cy = (int(v) for v in rng.integers(0, _PAD, 3))
            base = bases[min(_STEPS - 1, frames * _STEPS // expected)]
            k = frames % _BANK
            np.add(base[:h], luma[k, dy : dy + h, dx : dx + w], out=frame[:h])
            np.add(base[h:], chroma[k, cy : cy + h // 2, dx : dx + w], out=frame[h:])
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="yuv420p")):
                size += packet.size
                out.mux(packet)
            frames += 1
        for packet in stream.encode(None):
            out.mux(packet)
    return UploadVideo(buf.getvalue(), frames, frames / spec.fps)


def _cache_key(spec: UploadSpec, seed: int) -> str:
    fields = {k: v for k, v in asdict(spec).items() if k in ("target_bytes", "width", "height", "fps", "gop", "grain")}
    return hashlib.sha256(repr((sorted(fields.items()), seed, _STEPS, _BANK, _PAD, "yuv")).encode()).hexdigest()[:16]


def prepare_videos(spec: UploadSpec, seeds: Sequence[int], cache_dir: Path) -> list[UploadVideo]:
    """One video per seed, from the cache when it has it (a file per spec and seed)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in seeds:
        path = cache_dir / f"grain-{_cache_key(spec, seed)}.mp4"
        meta = path.with_suffix(".frames")
        if path.exists() and meta.exists():
            frames = int(meta.read_text())
            out.append(UploadVideo(path.read_bytes(), frames, frames / spec.fps))
            continue
        video = grain_video(spec, seed)
        path.write_bytes(video.data)
        meta.write_text(str(video.frames))
        out.append(video)
    return out


def upload_seeds(spec: UploadSpec, base_seed: int) -> list[int]:
    """Warm-up (stream, unary), then each repeat's (stream, unary) videos."""
    return [base_seed + 50_000 + i for i in range(2 + 2 * spec.repeats)]


async def _one(client: object, spec: UploadSpec, video: UploadVideo, variant: str, index: int) -> UploadSample:
    from nanovl.client import Message, Part, Prompt, Sampling, build_generate_request, iter_stream_chunks
    from nanovl.client.aio import AsyncGeneration
    from nanovl.client.events import Delta, Final
    from nanovl.errors import NanovlError

    prompt = Prompt(
        messages=(
            Message.user(Part.video(video.data, format="mp4", num_frames=spec.num_frames), "Describe the video."),
        )
    )
    sampling = Sampling(max_tokens=spec.max_tokens, temperature=0.0, ignore_eos=True)
    # Built (and, for the unary call, serialised) before the clock starts.
    chunks = list(iter_stream_chunks(prompt, chunk_size=spec.chunk_size, sampling=sampling))
    request = build_generate_request(prompt, sampling=sampling)
    stub = client.stub  # type: ignore[attr-defined]
    first: float | None = None
    final = None
    start = time.perf_counter()
    try:
        call = (
            stub.StreamGenerate(iter(chunks), timeout=600)
            if variant == "stream"
            else stub.Generate(request, timeout=600)
        )
        async with AsyncGeneration(call) as gen:
            async for event in gen:
                if type(event) is Delta and event.token_ids and first is None:
                    first = time.perf_counter()
                elif type(event) is Final:
                    final = event
    except NanovlError as e:  # InferenceRpcError included: the server's status
        return UploadSample(
            variant, index, len(video.data), None, None, None, None, None, None, error=f"{e.code.name}: {e}"
        )
    if final is None:
        return UploadSample(
            variant, index, len(video.data), None, None, None, None, None, None, error="no Final message"
        )
    t = final.timings
    return UploadSample(
        variant,
        index,
        len(video.data),
        client_ttft_s=(first - start) if first is not None else None,
        server_ttft_s=t.ttft_s,
        upload_s=t.upload_s,
        decode_media_s=t.decode_media_s,
        preprocess_s=t.preprocess_s,
        prefill_s=t.prefill_s,
        prompt_tokens=final.usage.prompt_tokens,
    )


async def measure_upload(spec: UploadSpec, videos: Sequence[UploadVideo], target: str) -> UploadResult:
    """Both variants against the nanovl server at ``target``, one request at a time
    (``videos`` from :func:`prepare_videos` with :func:`upload_seeds`)."""
    from nanovl.client.aio import AsyncInferenceClient

    frames = round(statistics.median(v.frames for v in videos))
    seconds = statistics.median(v.seconds for v in videos)
    samples: list[UploadSample] = []
    limit = 2 * spec.target_bytes + (1 << 20)
    async with AsyncInferenceClient(target, max_message_bytes=limit) as client:
        info = await client.get_model_info()
        largest = max(len(v.data) for v in videos)
        limits = (info.max_message_bytes, info.max_request_bytes)
        if largest + (1 << 16) > info.max_message_bytes or largest > info.max_request_bytes:
            return UploadResult(
                spec,
                frames,
                seconds,
                (),
                f"a {largest:,}-byte video does not fit the server's limits (--max-message-bytes "
                f"{info.max_message_bytes:,}, --max-request-bytes {info.max_request_bytes:,}): pass larger ones "
                "to the nanovl side",
                limits,
            )
        # Unmeasured: the first video request of a shape pays one-off set-up.
        for variant, video in zip(("stream", "unary"), videos[:2], strict=True):
            warm = await _one(client, spec, video, variant, -1)
            if warm.error:
                return UploadResult(
                    spec, frames, seconds, (), f"warm-up {variant} request failed: {warm.error}", limits
                )
        for i in range(spec.repeats):
            pair = videos[2 + 2 * i : 4 + 2 * i]
            order = ("stream", "unary") if i % 2 == 0 else ("unary", "stream")
            for variant in order:
                video = pair[0] if variant == "stream" else pair[1]
                samples.append(await _one(client, spec, video, variant, i))
                await asyncio.sleep(0)
    return UploadResult(spec, frames, seconds, tuple(samples), None, limits)


@dataclass(frozen=True)
class UploadSummary:
    """p50s over the error-free requests of each variant (seconds)."""

    stream_client_ttft: float | None
    stream_upload: float | None
    stream_server_ttft: float | None  # End → first token
    unary_client_ttft: float | None
    unary_server_ttft: float | None  # start → first token: the bytes already on the server
    decode_media: float | None  # both variants
    added: float | None  # stream client TTFT / unary server TTFT − 1
    # The same, counting only what happens before End (client TTFT − server TTFT of each
    # StreamGenerate, p50): the upload alone, free of the decode's request-to-request noise.
    before_end: float | None = None

    @property
    def added_vs_unary_client(self) -> float | None:
        """What the chunked upload adds over sending the same bytes in one message."""
        if self.stream_client_ttft is None or not self.unary_client_ttft:
            return None
        return self.stream_client_ttft / self.unary_client_ttft - 1


def _p50(values: Sequence[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def upload_summary(result: UploadResult) -> UploadSummary:
    ok = [s for s in result.samples if s.error is None]
    stream = [s for s in ok if s.variant == "stream"]
    unary = [s for s in ok if s.variant == "unary"]
    st, ut = _p50([s.client_ttft_s for s in stream]), _p50([s.server_ttft_s for s in unary])
    before = _p50(
        [
            s.client_ttft_s - s.server_ttft_s
            for s in stream
            if s.client_ttft_s is not None and s.server_ttft_s is not None
        ]
    )
    return UploadSummary(
        stream_client_ttft=st,
        stream_upload=_p50([s.upload_s for s in stream]),
        stream_server_ttft=_p50([s.server_ttft_s for s in stream]),
        unary_client_ttft=_p50([s.client_ttft_s for s in unary]),
        unary_server_ttft=ut,
        decode_media=_p50([s.decode_media_s for s in ok]),
        added=(st / ut - 1) if st is not None and ut else None,
        before_end=(before / ut) if before is not None and ut else None,
    )
