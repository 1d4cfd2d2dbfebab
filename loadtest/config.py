"""What to run: the load levels, the workload and the request options of a load test."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from loadtest.mix import Mix
from nanovl.client import DEFAULT_CHUNK_SIZE, TlsConfig
from nanovl.errors import InvalidArgument

__all__ = [
    "DEFAULT_MIX",
    "AudioSpec",
    "ImageSpec",
    "LoadLevel",
    "LoadTestConfig",
    "VideoSpec",
]

DEFAULT_MIX = "text=0.2,image=0.4,video=0.2,audio=0.2"

# Requests per level when neither a count nor a duration is given: enough for stable
# percentiles, and several rounds of the closed loop so the queue reaches steady state.
_MIN_AUTO_REQUESTS = 32
_AUTO_ROUNDS = 4
_AUTO_RATE_SECONDS = 30.0


@dataclass(frozen=True)
class LoadLevel:
    """One point of a sweep: a closed loop at ``concurrency`` requests in flight, or an
    open loop of Poisson arrivals at ``rate`` requests per second."""

    mode: Literal["concurrency", "rate"]
    value: float

    @property
    def label(self) -> str:
        if self.mode == "concurrency":
            return f"c={int(self.value)}"
        return f"rate={self.value:g}/s"


@dataclass(frozen=True)
class ImageSpec:
    width: int = 640
    height: int = 480
    format: Literal["jpeg", "png"] = "jpeg"


@dataclass(frozen=True)
class VideoSpec:
    frames: int = 8
    width: int = 320
    height: int = 240
    fps: float = 8.0
    format: Literal["mp4", "raw"] = "mp4"  # raw: client-decoded RGB24 frames
    # Frames the server samples (Video.num_frames); None: all of the clip's frames.
    sample_frames: int | None = None


@dataclass(frozen=True)
class AudioSpec:
    seconds: float = 3.0
    sample_rate: int = 16000
    format: Literal["wav", "pcm"] = "wav"  # pcm: raw s16le samples


# Channels per target per client process: each holds a socket (and gRPC's threads
# poll it); far past what a frontend-process count needs, well under a default 1024-file limit.
MAX_CONNECTIONS = 256


@dataclass(frozen=True)
class LoadTestConfig:
    """A whole load test. Levels run in order: every concurrency, then every rate.

    Per level, ``requests`` requests are measured, or as many as start within
    ``duration_s``; with neither, max(32, 4 x concurrency) for a closed loop and
    max(32, 30 s x rate) for an open loop.

    ``target`` is one ``HOST:PORT`` (a server, or a balancer in front of several) or several
    joined by commas: then request ``i`` of a level goes to target ``i mod n`` (the load is
    spread evenly over them, as a client-side round robin would) and the report has
    per-target figures too.

    ``connections`` is the number of channels (each its own TCP connection: a local
    subchannel pool, so gRPC does not share one) each client process opens to each target;
    requests are dealt over them in turn. A server with ``--frontend-processes N`` shares
    one port through SO_REUSEPORT, where the kernel spreads *connections* over the
    processes, never the calls of one connection: one channel reaches one frontend process.
    """

    target: str
    concurrency: tuple[int, ...] = ()
    rates: tuple[float, ...] = ()
    requests: int | None = None
    duration_s: float | None = None
    mix: Mix = field(default_factory=lambda: Mix.parse(DEFAULT_MIX))
    image: ImageSpec = ImageSpec()
    video: VideoSpec = VideoSpec()
    audio: AudioSpec = AudioSpec()
    content: Literal["smooth", "noise"] = "smooth"
    media_dir: str | None = None  # use these files instead of synthetic media
    # Distinct prompts prepared per kind; None: one per request (every request unique)
    # for counted levels, 256 for duration levels without a rate to size them by.
    media_pool: int | None = None
    prompt_words: int = 32
    chat: bool = False  # send chat messages (the checkpoint's template) instead of raw parts
    max_tokens: int = 64
    ignore_eos: bool = True  # fixed output length, so runs are comparable
    temperature: float | None = None
    warmup_requests: int | None = None  # None: one per mix kind
    ramp_up_s: float = 0.0
    chunked: bool = False  # StreamGenerate (chunked upload) instead of Generate
    chunk_size: int = DEFAULT_CHUNK_SIZE
    timeout_s: float = 600.0
    connect_timeout_s: float = 60.0  # how long to wait for the server to answer at all
    seed: int = 0
    client_processes: int = 1
    connections: int = 1  # channels per target per client process (see the class docstring)
    name: str = ""
    # A secured server: TLS, and the file the bearer token is read from (else $NANOVL_TOKEN).
    # The token itself is never part of the config, so it never reaches results.json.
    tls: TlsConfig | None = None
    token_file: str | None = None

    def __post_init__(self) -> None:
        def positive(name: str, value: float | None, *, allow_zero: bool = False) -> None:
            if value is None:
                return
            ok = value >= 0 if allow_zero else value > 0
            if not ok or math.isnan(value) or math.isinf(value):
                raise InvalidArgument(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value}")

        targets = self.targets
        if not targets or any(":" not in t for t in targets):
            raise InvalidArgument(f"target must be HOST:PORT or several joined by commas, got {self.target!r}")
        if len(set(targets)) != len(targets):
            raise InvalidArgument(f"target {self.target!r} names a server twice")
        for c in self.concurrency:
            if not isinstance(c, int) or c < 1:
                raise InvalidArgument(f"concurrency levels must be integers >= 1, got {c!r}")
        for r in self.rates:
            positive("rate", r)
        if self.requests is not None and self.duration_s is not None:
            raise InvalidArgument("give either a request count or a duration per level, not both")
        if self.requests is not None and self.requests < 1:
            raise InvalidArgument(f"requests must be >= 1, got {self.requests}")
        positive("duration", self.duration_s)
        positive("ramp-up", self.ramp_up_s, allow_zero=True)
        positive("timeout", self.timeout_s)
        positive("connect timeout", self.connect_timeout_s)
        positive("video fps", self.video.fps)
        positive("audio seconds", self.audio.seconds)
        for name, value in (
            ("image width", self.image.width),
            ("image height", self.image.height),
            ("video frames", self.video.frames),
            ("max_tokens", self.max_tokens),
            ("chunk size", self.chunk_size),
            ("client processes", self.client_processes),
            ("connections", self.connections),
            ("prompt words", self.prompt_words),
            ("audio sample rate", self.audio.sample_rate),
        ):
            if value < 1:
                raise InvalidArgument(f"{name} must be >= 1, got {value}")
        if self.connections > MAX_CONNECTIONS:
            raise InvalidArgument(
                f"connections must be <= {MAX_CONNECTIONS} per target and client process (each is a socket and a "
                f"gRPC channel), got {self.connections}; use --client-processes for more"
            )
        if self.video.width % 16 or self.video.width < 64 or self.video.height < 32:
            raise InvalidArgument(
                f"video size {self.video.width}x{self.video.height}: width must be a multiple of 16 and >= "
                "64, height >= 32"
            )
        if self.video.sample_frames is not None and not 1 <= self.video.sample_frames <= self.video.frames:
            raise InvalidArgument(
                f"video sample frames must be in [1, {self.video.frames}], got {self.video.sample_frames}"
            )
        if self.media_pool is not None and self.media_pool < 1:
            raise InvalidArgument(f"media pool must be >= 1, got {self.media_pool}")
        if self.warmup_requests is not None and self.warmup_requests < 0:
            raise InvalidArgument(f"warm-up requests must be >= 0, got {self.warmup_requests}")
        if self.client_processes > 1:
            closed = [int(lv.value) for lv in self.levels if lv.mode == "concurrency"]
            smallest = min(closed, default=None)
            if smallest is not None and smallest < self.client_processes:
                raise InvalidArgument(
                    f"{self.client_processes} client processes need every concurrency level >= "
                    f"{self.client_processes} (each process runs a share); got {smallest}"
                )

    @property
    def targets(self) -> tuple[str, ...]:
        """The ``HOST:PORT`` targets, in the order requests are dealt to them."""
        return tuple(t.strip() for t in self.target.split(",") if t.strip())

    @property
    def levels(self) -> tuple[LoadLevel, ...]:
        levels = [LoadLevel("concurrency", c) for c in self.concurrency]
        levels += [LoadLevel("rate", r) for r in self.rates]
        return tuple(levels) or (LoadLevel("concurrency", 1),)

    @property
    def warmup_count(self) -> int:
        """Default: one request per mix kind on every channel of every target (each server,
        and each frontend process behind a shared port, pays one-off set-up costs on its
        first request of a modality)."""
        if self.warmup_requests is not None:
            return self.warmup_requests
        return len(self.mix.entries) * len(self.targets) * self.connections

    def requests_for(self, level: LoadLevel) -> int | None:
        """Requests measured at ``level``; None when the level runs for ``duration_s``."""
        if self.duration_s is not None:
            return None
        if self.requests is not None:
            return self.requests
        if level.mode == "concurrency":
            return max(_MIN_AUTO_REQUESTS, _AUTO_ROUNDS * int(level.value))
        return max(_MIN_AUTO_REQUESTS, math.ceil(_AUTO_RATE_SECONDS * level.value))

    def command_line(self) -> str:
        """The equivalent ``nanovl loadtest`` arguments (for reports)."""
        args = [f"--target {self.target}"]
        if self.concurrency:
            args.append("--concurrency " + ",".join(str(c) for c in self.concurrency))
        if self.rates:
            args.append("--rate " + ",".join(f"{r:g}" for r in self.rates))
        if self.requests is not None:
            args.append(f"--requests {self.requests}")
        if self.duration_s is not None:
            args.append(f"--duration {self.duration_s:g}")
        args.append(f"--mix {self.mix}")
        if self.media_dir:
            args.append(f"--media-dir {self.media_dir}")
        else:
            v, a, i = self.video, self.audio, self.image
            args += [
                f"--image-size {i.width}x{i.height} --image-format {i.format}",
                f"--video-size {v.frames}x{v.width}x{v.height} --video-fps {v.fps:g} --video-format {v.format}",
                f"--audio-seconds {a.seconds:g} --audio-format {a.format}",
                f"--media-content {self.content}",
            ]
            if v.sample_frames is not None:
                args.append(f"--video-sample-frames {v.sample_frames}")
        if self.media_pool is not None:
            args.append(f"--media-pool {self.media_pool}")
        args.append(f"--prompt-words {self.prompt_words} --max-tokens {self.max_tokens}")
        if not self.ignore_eos:
            args.append("--no-ignore-eos")
        if self.temperature is not None:
            args.append(f"--temperature {self.temperature:g}")
        if self.chat:
            args.append("--chat")
        if self.warmup_requests is not None:
            args.append(f"--warmup {self.warmup_requests}")
        if self.ramp_up_s:
            args.append(f"--ramp-up {self.ramp_up_s:g}")
        if self.chunked:
            args.append(f"--chunked --chunk-size {self.chunk_size}")
        args.append(f"--timeout {self.timeout_s:g} --seed {self.seed}")
        if self.client_processes > 1:
            args.append(f"--client-processes {self.client_processes}")
        if self.connections > 1:
            args.append(f"--connections {self.connections}")
        if self.tls is not None:
            args.append("--tls")
            for flag, value in (
                ("--tls-ca-file", self.tls.ca_file),
                ("--tls-cert-file", self.tls.cert_file),
                ("--tls-key-file", self.tls.key_file),
                ("--tls-server-name", self.tls.server_name),
            ):
                if value:
                    args.append(f"{flag} {value}")
        if self.token_file:
            args.append(f"--token-file {self.token_file}")
        return " ".join(args)
