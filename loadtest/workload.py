"""The requests a load test sends, prepared before the timed phase.

Each prompt is built and serialised into its protobuf messages up front (``Generate``
request, or the ``StreamGenerate`` chunk sequence), so sending one costs the client
nothing but the gRPC write. Synthetic media come from :mod:`loadtest.media` with a
distinct seed per prompt, and every prompt's text differs too, so no two prompts dedupe
in the server's caches unless a pool is smaller than the number of requests sent (see
:class:`~loadtest.results.MediaPoolInfo`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest import media
from loadtest.config import LoadTestConfig
from loadtest.mix import CHAT_KINDS, MEDIA_MODALITIES
from loadtest.results import MediaPoolInfo
from nanovl.client import (
    ChatTemplate,
    Message,
    Part,
    Prompt,
    Sampling,
    Tool,
    build_generate_request,
    iter_stream_chunks,
)
from nanovl.errors import InvalidArgument
from nanovl.v1 import inference_pb2 as pb

__all__ = [
    "MEDIA_EXTENSIONS",
    "MediaDirectory",
    "PreparedRequest",
    "Workload",
    "build_prompt",
    "prepare_workload",
    "sampling_for",
]

MEDIA_EXTENSIONS = {
    "image": (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"),
    "video": (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"),
    "audio": (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus"),
}

# Enough common words that random prompts never repeat; the exact list does not matter.
_WORDS = (
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue "
    "side kind head house service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office door health person "
    "art war history party result change morning reason research girl guy moment air teacher force education "
    "foot boy age policy music market sense nation plan college interest death experience effect use class "
    "control care field development role effort rate heart drug show leader light voice wife police mind price "
    "report decision son view relationship town road arm difference value building action model season society "
    "tax director position player record paper space ground form event official matter center couple site "
    "project activity star table need court oil situation cost industry figure street image phone data picture "
    "river mountain forest ocean cloud stone bridge garden window engine signal pattern color sound motion"
).split()

_INSTRUCTIONS = {
    "text": "Continue this list with related words:",
    "image": "Describe the image in detail. Keywords:",
    "video": "Describe what happens in the video. Keywords:",
    "audio": "Describe the audio clip. Keywords:",
    "reasoning": "Think it through, then answer in one line: which of these words go together?",
    "tools": "Look up the weather for each of these places, using the tool:",
}
# The tool a "tools" prompt declares (tool choice auto: the model decides).
WEATHER_TOOL = Tool(
    name="get_weather",
    description="Current weather at a place",
    parameters={
        "type": "object",
        "properties": {"place": {"type": "string", "description": "a city or region"}},
        "required": ["place"],
    },
)
# A "reasoning" prompt's thinking budget: bounded, so one prompt's cost is predictable.
REASONING_BUDGET_TOKENS = 64


@dataclass(frozen=True)
class PreparedRequest:
    """One prompt, ready to send: exactly one of ``request`` (Generate) and ``chunks``
    (StreamGenerate) is set."""

    kind: str
    request: pb.GenerateRequest | None
    chunks: tuple[pb.GenerateChunk, ...] | None
    media_bytes: int


def sampling_for(config: LoadTestConfig) -> Sampling:
    return Sampling(max_tokens=config.max_tokens, ignore_eos=config.ignore_eos or None, temperature=config.temperature)


class MediaDirectory:
    """Media files found under a directory, by modality (from the file extension).
    Requests use them in turn; each file is read once."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InvalidArgument(f"--media-dir {self.root} is not a directory")
        files = sorted(p for p in self.root.rglob("*") if p.is_file())
        self.files = {m: tuple(p for p in files if p.suffix.lower() in MEDIA_EXTENSIONS[m]) for m in MEDIA_MODALITIES}
        self._cache: dict[Path, bytes] = {}

    def require(self, modalities: Iterable[str]) -> None:
        for m in modalities:
            if m != "text" and not self.files[m]:
                raise InvalidArgument(
                    f"--media-dir {self.root} has no {m} files (looked for {', '.join(MEDIA_EXTENSIONS[m])}); "
                    f"add some or remove {m} from --mix"
                )

    def part(self, modality: str, index: int, config: LoadTestConfig) -> Part:
        files = self.files[modality]
        path = files[index % len(files)]
        if path not in self._cache:
            self._cache[path] = path.read_bytes()
        data = self._cache[path]
        fmt = path.suffix.lower().lstrip(".")
        if modality == "image":
            return Part.image(data, format=fmt)
        if modality == "video":
            return Part.video(data, num_frames=config.video.sample_frames, format=fmt)
        return Part.audio(data, format=fmt)


def _synthetic_part(modality: str, seed: int, config: LoadTestConfig) -> Part:
    smooth = config.content == "smooth"
    if modality == "image":
        spec = config.image
        make = media.smooth_image_array if smooth else media.image_array
        pixels = make(spec.width, spec.height, seed)
        if spec.format == "jpeg":
            return Part.image(media.encode_image(pixels, "JPEG", quality=90), format="jpeg")
        # Fastest zlib level: noise hardly compresses anyway and preparation stays quick.
        return Part.image(media.encode_image(pixels, "PNG", compress_level=1), format="png")
    if modality == "video":
        v = config.video
        make = media.smooth_video_frames if smooth else media.video_frames
        frames = make(v.frames, v.width, v.height, seed)
        sample = v.sample_frames or v.frames
        if v.format == "raw":
            return Part.video_frames(frames, fps=v.fps, num_frames=sample)
        return Part.video(media.encode_mp4(frames, v.fps), num_frames=sample, format="mp4")
    a = config.audio
    wave = media.waveform(a.seconds, a.sample_rate, 1, seed, tone_hz=220.0 + seed % 880)
    if a.format == "pcm":
        return Part.pcm(np.frombuffer(media.pcm_bytes(wave, "s16le"), dtype="<i2"), sample_rate=a.sample_rate)
    return Part.audio(media.encode_wav(wave, a.sample_rate), format="wav")


def build_prompt(
    kind: str, rng: np.random.Generator, config: LoadTestConfig, index: int, directory: MediaDirectory | None
) -> Prompt:
    """The prompt of one request of ``kind``: its media parts, then a random text part
    (``reasoning`` and ``tools``: a chat prompt, see ``loadtest.mix``)."""
    if kind in CHAT_KINDS:
        words = " ".join(rng.choice(_WORDS, size=config.prompt_words))
        message = Message.user(f"{_INSTRUCTIONS[kind]} {words}")
        return Prompt.chat([message], tools=(WEATHER_TOOL,) if kind == "tools" else ())
    modalities = [m for m in kind.split("+") if m != "text"]
    parts: list[Part] = []
    for m in modalities:
        if directory is not None:
            parts.append(directory.part(m, index, config))
        else:
            parts.append(_synthetic_part(m, int(rng.integers(2**31)), config))
    words = " ".join(rng.choice(_WORDS, size=config.prompt_words))
    instruction = _INSTRUCTIONS[modalities[0] if modalities else "text"]
    parts.append(Part.text(f"{instruction} {words}"))
    if config.chat:
        return Prompt(messages=(Message.user(*parts),))
    return Prompt(parts=tuple(parts))


def _prepare_one(
    kind: str, index: int, seed_key: Sequence[int], config: LoadTestConfig, directory: MediaDirectory | None
) -> PreparedRequest:
    rng = np.random.default_rng(np.random.SeedSequence([*seed_key, index]))
    prompt = build_prompt(kind, rng, config, index, directory)
    sampling = sampling_for(config)
    template = None
    if kind == "reasoning":
        sampling = dataclasses.replace(sampling, thinking_token_budget=REASONING_BUDGET_TOKENS)
        template = ChatTemplate(enable_thinking=True)
    # No request_id: the server makes unique ones, and a reused prompt must not collide.
    if config.chunked:
        chunks = tuple(
            iter_stream_chunks(prompt, chunk_size=config.chunk_size, sampling=sampling, chat_template=template)
        )
        return PreparedRequest(kind, None, chunks, prompt.media_bytes)
    request = build_generate_request(prompt, sampling=sampling, chat_template=template)
    return PreparedRequest(kind, request, None, prompt.media_bytes)


class Workload:
    """Prepared prompts per kind, handed out in turn (repeating once a pool is used up)."""

    def __init__(self, pools: Sequence[tuple[str, Sequence[PreparedRequest]]]) -> None:
        self._pools = {kind: tuple(items) for kind, items in pools}
        for kind, items in self._pools.items():
            if not items:
                raise InvalidArgument(f"empty prompt pool for {kind!r}")
        self._sent = dict.fromkeys(self._pools, 0)

    def take(self, kind: str) -> PreparedRequest:
        pool = self._pools[kind]
        n = self._sent[kind]
        self._sent[kind] = n + 1
        return pool[n % len(pool)]

    def largest_message_bytes(self) -> int:
        """Size of the largest single message any prepared request sends."""
        sizes = [
            max(c.ByteSize() for c in p.chunks) if p.chunks is not None else p.request.ByteSize()  # type: ignore[union-attr]
            for pool in self._pools.values()
            for p in pool
        ]
        return max(sizes, default=0)

    def largest_media_bytes(self) -> int:
        return max((p.media_bytes for pool in self._pools.values() for p in pool), default=0)

    def pool_info(self) -> tuple[MediaPoolInfo, ...]:
        return tuple(
            MediaPoolInfo(
                kind=kind,
                unique=len(pool),
                sent=self._sent[kind],
                mean_media_bytes=float(np.mean([p.media_bytes for p in pool])),
            )
            for kind, pool in self._pools.items()
        )


def prepare_workload(
    config: LoadTestConfig,
    pool_sizes: Sequence[tuple[str, int]],
    *,
    seed_key: Sequence[int] = (),
    on_prepared: Callable[[], None] | None = None,
) -> Workload:
    """Build ``size`` prompts for each ``(kind, size)``, using every core (media encoding
    releases the GIL). Runs before the timed phase. ``seed_key`` separates client
    processes so their prompts differ too."""
    directory = MediaDirectory(config.media_dir) if config.media_dir else None
    if directory is not None:
        directory.require(m for kind, _ in pool_sizes for m in kind.split("+"))
    jobs = [(kind, i, (config.seed, *seed_key, k)) for k, (kind, size) in enumerate(pool_sizes) for i in range(size)]

    def run(job: tuple[str, int, tuple[int, ...]]) -> PreparedRequest:
        item = _prepare_one(job[0], job[1], job[2], config, directory)
        if on_prepared is not None:
            on_prepared()
        return item

    if directory is not None:  # its read cache is not thread-safe, and reads are cheap
        items = [run(j) for j in jobs]
    else:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            items = list(pool.map(run, jobs))
    by_kind: dict[str, list[PreparedRequest]] = {kind: [] for kind, _ in pool_sizes}
    for item in items:
        by_kind[item.kind].append(item)
    return Workload(tuple(by_kind.items()))
