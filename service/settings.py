"""Typed settings of the gRPC service (the engine's own settings are vLLM's ``AsyncEngineArgs``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nanovl.errors import InvalidArgument
from nanovl.units import MiB
from service.auth import AuthSettings
from service.media import DEFAULT_MEDIA_LIMITS, MediaLimits
from service.request_limits import RequestLimits
from service.tls import TlsSettings


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 50051
    # One gRPC message (a whole Generate request, or one StreamGenerate chunk).
    max_message_bytes: int = 64 * MiB
    # All bytes of one request, however they arrive; StreamGenerate is how clients
    # send more than max_message_bytes.
    max_request_bytes: int = 512 * MiB
    # Requests admitted at once (decoding + queued + running); more → RESOURCE_EXHAUSTED,
    # and readiness reports NOT_SERVING while the server is full.
    max_concurrent_requests: int = 512
    # StreamGenerate calls still uploading (header received, End not yet): a budget of
    # their own, so slow or stalled uploads never take the slots of admitted requests.
    max_concurrent_uploads: int = 64
    # One client address's share of those slots (0: no cap). Behind a proxy that terminates
    # HTTP/2 every client has the proxy's address: raise it to max_concurrent_uploads there.
    max_uploads_per_peer: int = 16
    # An upload slot is taken only once the header is read and valid, and kept only while
    # the upload averages at least min_upload_bytes_per_s after its first
    # upload_rate_grace_s seconds (a client trickling a byte now and then is cut).
    min_upload_bytes_per_s: int = 64 * 1024
    upload_rate_grace_s: float = 10.0
    # StreamGenerate: longest silence between two client messages (header included) and
    # longest whole upload (header to End); past either the call ends DEADLINE_EXCEEDED.
    upload_idle_timeout_s: float = 30.0
    upload_timeout_s: float = 600.0
    # Per-request chat templates (chat_template_kwargs["chat_template"]) are client code:
    # off unless the operator allows them; then rendered in a separate, niced,
    # memory-capped process, killed after chat_template_timeout_s.
    allow_request_chat_template: bool = False
    chat_template_timeout_s: float = 2.0
    # Structured output (service.grammar_guard): the constraint's text and choice count are
    # capped, and an xgrammar constraint is compiled in a killable process first; one that
    # compiles longer than structured_output_compile_timeout_s never reaches the engine
    # (vLLM compiles grammars in a small thread pool that one slow grammar would hold).
    max_structured_output_bytes: int = 128 * 1024
    max_structured_output_choices: int = 1000
    structured_output_compile_timeout_s: float = 2.0
    # Media decoding worker processes (service.decode_workers: a decoder crash fails one
    # request, not the server) and how long one decode may take before its worker is killed.
    decode_processes: int = 2
    media_decode_timeout_s: float = 60.0
    # Frames sampled from an encoded video when the client does not say.
    default_video_frames: int = 8
    # If set, sample at this fps instead when the client sets neither num_frames nor fps.
    default_video_fps: float | None = None
    # Cap on sampled frames when the client sets no max_frames (None: media_limits.max_video_frames).
    default_video_max_frames: int | None = None
    # Completion length when the client does not say (vLLM's own default is 16).
    default_max_tokens: int = 256
    # vLLM tool-call parser for chat requests' tools ("" = tools refused); auto tool
    # choice comes with it (vLLM composes no tool parser without it).
    tool_call_parser: str = ""
    # A video's audio track goes to the model unless the request says otherwise.
    use_audio_in_video: bool = False
    # SIGTERM: readiness turns NOT_SERVING at once (gRPC health, HTTP /ready) while calls are
    # still accepted for drain_readiness_grace_s, long enough for balancers' health checks and
    # Kubernetes' endpoint updates to take this replica out of rotation; then new calls are
    # refused (UNAVAILABLE) and in-flight calls may finish for drain_grace_s; then exit.
    drain_readiness_grace_s: float = 5.0
    # SIGTERM, after the readiness grace: in-flight calls may finish for this long; calls
    # still running are then cut (UNAVAILABLE, "retry on another replica").
    drain_grace_s: float = 12.0
    # Then the engine processes get this long to stop before they are killed, and the whole
    # exit is bounded by it (+ a 3 s margin). Defaults: 5 + 12 + 5 + 3 = 25 s at most, 5 s
    # inside Kubernetes' default terminationGracePeriodSeconds of 30 (verify-10b D5: with a
    # 15 s drain grace a loaded machine exited at 29.2 s, the bound killing the engine).
    engine_shutdown_timeout_s: float = 5.0
    warmup: bool = True
    media_limits: MediaLimits = field(default_factory=lambda: DEFAULT_MEDIA_LIMITS)
    # Elements of each repeated field in one request (messages, parts, stop strings, ...).
    request_limits: RequestLimits = field(default_factory=RequestLimits)
    # TLS (mTLS with a client CA) for every port; None: plaintext.
    tls: TlsSettings | None = None
    auth: AuthSettings = field(default_factory=AuthSettings)
    # The operator surface (Profiling) on a second port; None: no admin port.
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None
    # The old layout: Profiling on the inference port too (operator tokens still apply).
    profiling_on_inference_port: bool = False
    # A plaintext port on ``host`` with only grpc.health.v1, for probes that speak neither TLS
    # nor metadata (Kubernetes' gRPC probes); None: no such port.
    health_port: int | None = None
    # Several processes serve one inference port (``nanovl serve --frontend-processes``):
    # SO_REUSEPORT, which is otherwise off so that a port in use fails the start.
    reuse_port: bool = False

    def __post_init__(self) -> None:
        for name in (
            "max_message_bytes",
            "max_request_bytes",
            "max_concurrent_requests",
            "max_concurrent_uploads",
            "decode_processes",
            "media_decode_timeout_s",
            "upload_idle_timeout_s",
            "upload_timeout_s",
            "upload_rate_grace_s",
            "engine_shutdown_timeout_s",
            "chat_template_timeout_s",
            "max_structured_output_bytes",
            "max_structured_output_choices",
            "structured_output_compile_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise InvalidArgument(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)!r}")
        for name in ("drain_readiness_grace_s", "drain_grace_s", "max_uploads_per_peer", "min_upload_bytes_per_s"):
            value = getattr(self, name)
            if not 0 <= value < float("inf"):
                raise InvalidArgument(f"--{name.replace('_', '-')} must be a number >= 0, got {value!r}")
        # The video defaults apply to every request that leaves them unset: a bad one would
        # fail those requests with a message that blames the client.
        max_frames = self.media_limits.max_video_frames
        if not 0 < self.default_video_frames <= max_frames:
            raise InvalidArgument(
                f"--default-video-frames must be in [1, {max_frames}] (--max-video-frames), "
                f"got {self.default_video_frames}"
            )
        if self.default_video_max_frames is not None and not 0 < self.default_video_max_frames <= max_frames:
            raise InvalidArgument(
                f"--default-video-max-frames must be in [1, {max_frames}] (--max-video-frames), "
                f"got {self.default_video_max_frames}"
            )
        if self.default_video_fps is not None and not (0 < self.default_video_fps < float("inf")):
            raise InvalidArgument(f"--default-video-fps must be a positive number, got {self.default_video_fps}")
