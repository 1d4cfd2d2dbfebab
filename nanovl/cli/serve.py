"""``nanovl serve``: run the gRPC service.

Two parsers, so ``nanovl serve --help`` needs no vLLM import: nanovl's own flags are
parsed first (``parse_known_args``), and whatever is left goes to vLLM's own engine
parser (``AsyncEngineArgs.add_cli_args``), built only when the server really starts or
``--help-engine`` asks for it. On a CPU-only machine the engine settings this model needs
there are that parser's defaults, so an operator's flag always wins.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nanovl.cli.frontends import FrontendRole
    from service.settings import ServerSettings

log = logging.getLogger("nanovl.serve")

HELP = "run the gRPC service (default model: the embedded tiny checkpoint)"


ENGINE_FLAGS_EPILOG = """\
engine flags:
  Every vLLM engine flag is accepted as well: --model, --max-model-len,
  --limit-mm-per-prompt, --max-num-seqs, --otlp-traces-endpoint, ...
  `nanovl serve --help-engine` lists them all.
  Without --model the embedded tiny checkpoint is served (--tiny-variant).
  On a CPU-only machine nanovl defaults to --no-enable-prefix-caching
  --dtype bfloat16 --enforce-eager --no-enable-chunked-prefill; any flag you pass wins.
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after every flag; the epilog kept as written."""


def build_parser() -> argparse.ArgumentParser:
    """nanovl's own ``serve`` flags, each with its default (fast: imports no vLLM)."""
    from model.variants import VARIANTS
    from nanovl.event_loop import EVENT_LOOPS
    from profiling.telemetry import logs, metrics, tracing
    from service.settings import ServerSettings

    p = argparse.ArgumentParser(
        prog="nanovl serve",
        description="Run the nanovl gRPC service.",
        epilog=ENGINE_FLAGS_EPILOG,
        formatter_class=_HelpFormatter,
        # Prefixes of vLLM's flags must reach vLLM's parser, not match one of nanovl's.
        allow_abbrev=False,
    )
    p.add_argument("--help-engine", action="store_true", help="list vLLM's engine flags and exit")
    d = ServerSettings()
    g = p.add_argument_group("nanovl server")
    g.add_argument("--host", default=d.host, help="address to listen on")
    g.add_argument("--port", type=int, default=d.port, help="gRPC port")
    g.add_argument(
        "--max-message-bytes",
        type=int,
        default=d.max_message_bytes,
        help="largest single gRPC message (Generate request or StreamGenerate chunk)",
    )
    g.add_argument(
        "--max-request-bytes", type=int, default=d.max_request_bytes, help="largest total media upload of one request"
    )
    g.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=d.max_concurrent_requests,
        help="requests admitted at once; more get RESOURCE_EXHAUSTED",
    )
    g.add_argument(
        "--max-concurrent-uploads",
        type=int,
        default=d.max_concurrent_uploads,
        help="StreamGenerate calls still uploading, a budget apart from --max-concurrent-requests",
    )
    g.add_argument(
        "--max-uploads-per-peer",
        type=int,
        default=d.max_uploads_per_peer,
        help="a client address's share of the upload budget (0: no cap); behind a proxy that terminates "
        "HTTP/2 every client has the proxy's address, so raise it to the whole budget there",
    )
    g.add_argument(
        "--min-upload-bytes-per-s",
        type=int,
        default=d.min_upload_bytes_per_s,
        help="StreamGenerate: an upload averaging less than this after --upload-rate-grace-s is cut "
        "(DEADLINE_EXCEEDED), so trickling clients cannot hold upload slots (0: no minimum)",
    )
    g.add_argument(
        "--upload-rate-grace-s",
        type=float,
        default=d.upload_rate_grace_s,
        help="StreamGenerate: seconds after the header before --min-upload-bytes-per-s applies",
    )
    g.add_argument(
        "--upload-idle-timeout-s",
        type=float,
        default=d.upload_idle_timeout_s,
        help="StreamGenerate: longest pause between client messages before DEADLINE_EXCEEDED",
    )
    g.add_argument(
        "--upload-timeout-s",
        type=float,
        default=d.upload_timeout_s,
        help="StreamGenerate: longest whole upload (header to End)",
    )
    g.add_argument(
        "--allow-request-chat-template",
        action="store_true",
        help="accept a per-request chat template (chat_template_kwargs.chat_template); it is client code, "
        "rendered in a separate, niced, memory-capped process. Off by default: a template is a program",
    )
    g.add_argument(
        "--chat-template-timeout-s",
        type=float,
        default=d.chat_template_timeout_s,
        help="a per-request chat template rendering longer than this is killed (DEADLINE_EXCEEDED)",
    )
    g.add_argument(
        "--max-structured-output-bytes",
        type=int,
        default=d.max_structured_output_bytes,
        help="largest structured-output constraint (JSON schema, regex, grammar, or all choices together); "
        "more gets RESOURCE_EXHAUSTED",
    )
    g.add_argument(
        "--max-structured-output-choices",
        type=int,
        default=d.max_structured_output_choices,
        help="most options in a structured-output choice; more gets RESOURCE_EXHAUSTED",
    )
    g.add_argument(
        "--structured-output-compile-timeout-s",
        type=float,
        default=d.structured_output_compile_timeout_s,
        help="a structured-output constraint is first compiled in a separate process; one that takes longer "
        "is refused (RESOURCE_EXHAUSTED) and never reaches the engine, whose grammar threads it would hold",
    )
    g.add_argument(
        "--decode-processes",
        "--decode-threads",  # its name before decoding moved out of the server process
        dest="decode_processes",
        type=int,
        default=d.decode_processes,
        help="media decoding worker processes; a decoder that crashes on a request's media fails that request "
        "(INVALID_ARGUMENT) and its worker is replaced",
    )
    g.add_argument(
        "--media-decode-timeout-s",
        type=float,
        default=d.media_decode_timeout_s,
        help="one media item's decode may take this long; past it the worker is killed and the request gets "
        "DEADLINE_EXCEEDED (the media limits bound a normal decode far below it)",
    )
    g.add_argument(
        "--default-video-frames",
        type=int,
        default=d.default_video_frames,
        help="frames sampled from a video when the request does not say",
    )
    g.add_argument(
        "--default-video-fps",
        type=float,
        default=d.default_video_fps,
        help="sample videos at this fps when a request sets neither num_frames nor fps",
    )
    g.add_argument(
        "--default-video-max-frames",
        type=int,
        default=d.default_video_max_frames,
        help="cap on frames sampled from a video when a request sets no max_frames",
    )
    g.add_argument(
        "--default-max-tokens", type=int, default=d.default_max_tokens, help="completion length when not given"
    )
    g.add_argument(
        "--drain-readiness-grace-s",
        type=float,
        default=d.drain_readiness_grace_s,
        help="SIGTERM: readiness turns NOT_SERVING at once (gRPC health, HTTP /ready) but calls are still "
        "accepted for this long, so balancers and Kubernetes stop routing here before any call is refused; "
        "counted from SIGUSR1 when a preStop hook sent one; Ctrl-C (SIGINT) skips it",
    )
    g.add_argument(
        "--drain-grace-s",
        type=float,
        default=d.drain_grace_s,
        help="SIGTERM: after the readiness grace, new calls are refused and in-flight calls may finish for this long",
    )
    g.add_argument(
        "--engine-shutdown-timeout-s",
        type=float,
        default=d.engine_shutdown_timeout_s,
        help="at exit, the engine processes get this long to stop before they are killed; the whole exit "
        "after the drain is bounded by it + 3 s (defaults: 5 + 12 + 5 + 3 = 25 s from SIGTERM, inside "
        "Kubernetes' 30 s; engine death: 1 + 5 + 3 s)",
    )
    g.add_argument("--no-warmup", action="store_true", help="skip the per-modality warm-up at start")
    g.add_argument(
        "--frontend-processes",
        type=int,
        default=1,
        metavar="N",
        help="gRPC server processes in front of one engine core, sharing --port (SO_REUSEPORT): vLLM's "
        "--api-server-count pattern, for hosts where one process streaming every token is the limit. "
        "Process 0 also serves the admin and health ports; process i serves /metrics on --metrics-port + i; "
        "--max-concurrent-* budgets are per process. The kernel deals each client *connection* to one process, "
        "never the calls of one connection: spread load with many connections (clients, a balancer, or "
        "nanovl loadtest --connections)",
    )
    g.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default="auto",
        help="auto: uvloop when installed (less CPU per streamed token), else asyncio",
    )
    o = p.add_argument_group(
        "model output (reasoning, tools, audio in video)",
        "Nemotron 3 checkpoints (*_Omni_Reasoning_V3) default to vLLM's nemotron_v3 reasoning parser and "
        "qwen3_coder tool calls with auto tool choice (NVIDIA's vLLM recipe); others to none. "
        "--reasoning-parser is vLLM's engine flag (none: off).",
    )
    o.add_argument(
        "--tool-call-parser",
        default=None,
        metavar="NAME",
        help="vLLM tool-call parser for requests' tools (none: tools refused); default: the checkpoint's",
    )
    o.add_argument(
        "--enable-auto-tool-choice",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let the model decide when to call tools (vLLM's flag; tools need it); default: on with the "
        "checkpoint's default tool-call parser",
    )
    o.add_argument(
        "--use-audio-in-video",
        action="store_true",
        help="give the model each video's audio track unless a request says otherwise (vLLM's use_audio_in_video)",
    )
    g.add_argument(
        "--tiny-variant",
        default="full",
        choices=VARIANTS,
        help="which embedded tiny checkpoint to serve when --model is not given",
    )
    r = p.add_argument_group(
        "request limits (counted before any per-element work; more: RESOURCE_EXHAUSTED naming the flag)"
    )
    rl = d.request_limits
    for flag, dest, what in (
        ("--max-messages-per-request", "max_messages", "chat messages in one request"),
        ("--max-parts-per-request", "max_parts", "content parts in one request, counted over all its messages"),
        (
            "--max-list-string-bytes",
            "max_list_string_bytes",
            "UTF-8 bytes of one string in sampling.stop, sampling.bad_words or structured_output.choice",
        ),
        ("--max-list-bytes", "max_list_bytes", "UTF-8 bytes of all strings of one of those fields together"),
    ):
        r.add_argument(flag, dest=dest, type=int, default=getattr(rl, dest), help=what)
    m = p.add_argument_group("media limits (each item is checked before the expensive part of decoding)")
    lim = d.media_limits
    m.add_argument("--max-image-pixels", type=int, default=lim.max_image_pixels, help="pixels of one image")
    m.add_argument("--max-video-frames", type=int, default=lim.max_video_frames, help="frames sampled from one video")
    m.add_argument(
        "--max-video-pixels-per-frame", type=int, default=lim.max_video_pixels_per_frame, help="pixels of one frame"
    )
    m.add_argument(
        "--max-video-decoded-bytes",
        type=int,
        default=lim.max_video_decoded_bytes,
        help="decoded RGB bytes of one video's sampled frames",
    )
    m.add_argument(
        "--max-image-pixels-per-byte",
        type=int,
        default=lim.max_image_pixels_per_byte,
        help="decoded pixels per encoded byte of an image over 4 Mpx (refuses decode bombs and "
        "JPEGs whose data ends early)",
    )
    m.add_argument(
        "--max-video-pixels-per-byte",
        type=int,
        default=lim.max_video_pixels_per_byte,
        help="decoded pixels per encoded byte of a video, counting every frame decoded to reach the sampled "
        "ones (from each one's keyframe), above 256 Mi pixels (refuses decode bombs: long single-keyframe clips "
        "of nearly nothing)",
    )
    m.add_argument(
        "--max-audio-seconds", type=float, default=lim.max_audio_seconds, help="length of one audio item (vLLM's cap)"
    )
    x = p.add_argument_group(
        "exact encoder sizing",
        "vLLM sizes every video and audio item of this model as the whole --max-model-len (its encoder "
        "compute budget, encoder cache and start-up dummy profile). Declare the largest item instead and "
        "vLLM is sized for exactly that; larger items are refused (OUT_OF_RANGE) before the engine.",
    )
    x.add_argument(
        "--exact-mm-sizing",
        metavar="SPEC",
        default=None,
        help="'limits' (--max-video-frames frames, --max-audio-seconds of audio) or a comma list of "
        "video=FRAMESxWIDTHxHEIGHT@FPS (frame timestamps within (FRAMES-1)/FPS s) and audio=SECONDS; "
        "a modality not named is derived from the media limits. Off by default",
    )
    _add_security_args(p)
    tracing.add_cli_args(p)
    metrics.add_cli_args(p)
    logs.add_cli_args(p)
    return p


# Items per prompt when the operator gives no --limit-mm-per-prompt (vLLM's own default is
# 999 each). They bound what one request can pin in decoded media (8 images at the
# 40-megapixel cap are ~1 GB of RGB; a video up to --max-video-decoded-bytes) and the
# work one request can queue, while leaving room for multi-image prompts.
DEFAULT_LIMIT_MM_PER_PROMPT = {"image": 8, "video": 2, "audio": 4}

# Exit codes of `nanovl serve` (README "Running under a supervisor").
EXIT_DRAINED = 0  # SIGTERM/SIGINT, every in-flight call finished within --drain-grace-s
EXIT_OPERATOR_ERROR = 2  # bad flags, bad checkpoint, busy port (nanovl.cli.common.EXIT_USAGE)
EXIT_DRAIN_CUT = 3  # SIGTERM/SIGINT, but calls were still running when the grace ran out
EXIT_ENGINE_DIED = 4  # the engine died; in-flight calls got UNAVAILABLE; restart the process
# The exit after the drain may take --engine-shutdown-timeout-s plus this, then it is forced.
EXIT_MARGIN_S = 3.0


def _engine_share(timeout_s: float, left_s: float | None) -> float:
    """The engine's shutdown timeout: ``timeout_s``, or less when the exit bound has less
    than that plus ``EXIT_MARGIN_S`` left (the drain ran late), at least 0.5 s."""
    if left_s is None:
        return timeout_s
    return max(0.5, min(timeout_s, left_s - EXIT_MARGIN_S))


def settings_from_args(args: argparse.Namespace, **extra: object) -> ServerSettings:
    """``ServerSettings`` (and its ``MediaLimits``) from the parsed flags, field by field;
    ``extra`` sets the fields that are not plain flags (TLS, tokens: ``security_settings``)."""
    import dataclasses

    from service.media import MediaLimits
    from service.request_limits import RequestLimits
    from service.settings import ServerSettings

    def pick(cls: type) -> dict[str, object]:
        return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}

    values = pick(ServerSettings)
    values["warmup"] = not args.no_warmup
    values["media_limits"] = MediaLimits(**pick(MediaLimits))
    values["request_limits"] = RequestLimits(**pick(RequestLimits))
    return ServerSettings(**{**values, **extra})


def _add_security_args(p: argparse.ArgumentParser) -> None:
    """TLS, tokens and the operator surface (README: "Securing a deployment")."""
    from profiling.profilers import limits as pl
    from service.auth import TOKEN_ENV

    t = p.add_argument_group("TLS (both ports; certificates are re-read when the files change)")
    t.add_argument("--tls-cert-file", metavar="PEM", help="server certificate chain; enables TLS")
    t.add_argument("--tls-key-file", metavar="PEM", help="the certificate's private key (unencrypted PEM)")
    t.add_argument(
        "--tls-client-ca-file", metavar="PEM", help="require client certificates signed by this CA bundle (mTLS)"
    )
    a = p.add_argument_group(
        "authentication",
        "Bearer tokens (`authorization: Bearer <token>`), one per line in a file or comma-separated in "
        f"{TOKEN_ENV['inference']} / {TOKEN_ENV['admin']}; never as flag values. Without tokens a surface is "
        "open. Health checking always stays open (probes cannot send tokens).",
    )
    a.add_argument("--inference-token-file", metavar="FILE", help="tokens accepted by the Inference service")
    a.add_argument("--admin-token-file", metavar="FILE", help="tokens accepted by the operator surface (Profiling)")
    a.add_argument("--auth-reflection", action="store_true", help="server reflection needs a token too")
    t.add_argument(
        "--health-port",
        type=int,
        default=None,
        help="also serve grpc.health.v1 alone, in plaintext, on --host:PORT (for probes without TLS, e.g. Kubernetes)",
    )
    o = p.add_argument_group("operator surface (the Profiling service)")
    o.add_argument(
        "--admin-port",
        type=int,
        default=None,
        help="serve Profiling (with health, reflection) on this port; off by default",
    )
    o.add_argument(
        "--admin-host",
        default="127.0.0.1",
        help="address of the admin port; beyond loopback it needs --admin-token-file or " + TOKEN_ENV["admin"],
    )
    o.add_argument(
        "--profiling-on-inference-port",
        action="store_true",
        help="also serve Profiling on the inference port (the old layout; operator tokens apply)",
    )
    o.add_argument(
        "--plan-model-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="PlanBudget may plan for checkpoints in DIR (repeatable); by default only the served one",
    )
    o.add_argument(
        "--max-cpu-profile-s",
        type=float,
        default=pl.DEFAULT_SERVER_MAX_DURATION_S,
        help="longest CaptureCpuProfile a caller may ask for",
    )
    o.add_argument(
        "--max-cpu-profile-rate-hz",
        type=int,
        default=pl.DEFAULT_SERVER_MAX_RATE_HZ,
        help="highest CaptureCpuProfile sampling rate a caller may ask for",
    )
    o.add_argument(
        "--max-native-profile-rate-hz",
        type=int,
        default=pl.DEFAULT_SERVER_MAX_NATIVE_RATE_HZ,
        help="highest rate of a native CaptureCpuProfile (py-spy pauses the process for each native sample)",
    )
    o.add_argument(
        "--max-torch-profile-steps",
        type=int,
        default=pl.DEFAULT_SERVER_MAX_TORCH_PROFILE_STEPS,
        help="most engine steps one torch profile session may record",
    )
    o.add_argument(
        "--max-torch-profile-s",
        type=float,
        default=pl.DEFAULT_SERVER_MAX_TORCH_PROFILE_S,
        help="a torch profile session stops itself after this many seconds",
    )
    o.add_argument(
        "--max-torch-profile-memory",
        type=_byte_size,
        default=pl.DEFAULT_SERVER_MAX_TORCH_PROFILE_MEMORY,
        metavar="BYTES",
        help="a torch profile session stops early when an engine process grows by this much (e.g. 512MiB)",
    )


def _byte_size(text: str) -> int:
    from nanovl.errors import InvalidArgument
    from nanovl.units import parse_bytes

    try:
        return parse_bytes(text)
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def security_settings(args: argparse.Namespace, environ: dict[str, str] | None = None) -> dict:
    """The ``ServerSettings`` fields for TLS, tokens and the admin port, checked now (before
    the engine starts): a bad file or flag is an operator error, not a failed start-up."""
    from service.auth import AuthSettings, TokenSource, load_token_sets
    from service.server import check_exposure
    from service.settings import ServerSettings
    from service.tls import TlsSettings, load_pem_files

    env = dict(os.environ if environ is None else environ)
    tls = TlsSettings.from_flags(args.tls_cert_file, args.tls_key_file, args.tls_client_ca_file)
    if tls is not None:
        load_pem_files(tls)
    auth = AuthSettings(
        inference=TokenSource.from_env("inference", args.inference_token_file, env),
        admin=TokenSource.from_env("admin", args.admin_token_file, env),
        reflection_requires_token=args.auth_reflection,
    )
    fields = {
        "tls": tls,
        "auth": auth,
        "admin_host": args.admin_host,
        "admin_port": args.admin_port,
        "profiling_on_inference_port": args.profiling_on_inference_port,
        "health_port": args.health_port,
    }
    check_exposure(ServerSettings(host=args.host, port=args.port, **fields), load_token_sets(auth), warn=False)
    return fields


def operator_limits(args: argparse.Namespace):
    from profiling.profilers.limits import CpuProfileLimits, OperatorLimits, TorchProfileLimits

    for d in args.plan_model_dir:
        if not Path(d).is_dir():
            from nanovl.errors import InvalidArgument

            raise InvalidArgument(f"--plan-model-dir {d}: not a directory")
    return OperatorLimits(
        plan_model_dirs=tuple(Path(d) for d in args.plan_model_dir),
        cpu_profile=CpuProfileLimits(
            args.max_cpu_profile_s, args.max_cpu_profile_rate_hz, args.max_native_profile_rate_hz
        ),
        torch_profile=TorchProfileLimits(
            args.max_torch_profile_steps, args.max_torch_profile_s, args.max_torch_profile_memory
        ),
    )


def _with_profiler_defaults(parse: Any, *, cpu: bool) -> Any:
    """vLLM's ``--profiler-config`` parser with nanovl's profiler defaults for the fields
    the operator did not give (``service.engine.bounded_profiler_config``). vLLM's flag
    takes JSON (``--profiler-config.KEY=V`` flags arrive joined into one JSON object), so
    the fields given are exactly the object's keys."""
    import json

    from service.engine import bounded_profiler_config

    def parse_profiler_config(value: str) -> Any:
        try:
            fields = json.loads(value)
        except ValueError:
            return parse(value)  # vLLM's own error message
        if not isinstance(fields, dict):
            return parse(value)
        return parse(json.dumps(bounded_profiler_config(fields, cpu=cpu)))

    return parse_profiler_config


def build_engine_parser() -> argparse.ArgumentParser:
    """vLLM's engine flags (``AsyncEngineArgs.add_cli_args``) with nanovl's defaults."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from service.engine import CPU_ENGINE_DEFAULTS, WORKER_EXTENSION_CLS, on_cpu

    p = FlexibleArgumentParser(prog="nanovl serve", description="vLLM engine flags accepted by `nanovl serve`.")
    p = AsyncEngineArgs.add_cli_args(p)
    for action in p._actions:  # argparse's list of flags (it has no public accessor)
        if action.dest == "profiler_config" and action.type is not None:
            action.type = _with_profiler_defaults(action.type, cpu=on_cpu())
    # As parser defaults, so any flag the operator passes still wins.
    p.set_defaults(
        model=None,
        trust_remote_code=True,
        limit_mm_per_prompt=DEFAULT_LIMIT_MM_PER_PROMPT,
        worker_extension_cls=WORKER_EXTENSION_CLS,
        # The weight-load progress bar is written to the terminal by the worker, outside
        # logging (it would break --log-format json); start-up reports "weight load: N s".
        use_tqdm_on_load=False,
        # None: the checkpoint's (model.output_format), decided once the model is known.
        reasoning_parser=None,
        **(CPU_ENGINE_DEFAULTS if on_cpu() else {}),
    )
    return p


def check_ports(args: argparse.Namespace) -> None:
    """A port in use fails ``nanovl serve`` at once (``FailedPrecondition`` naming the flag,
    exit 2), not after the engine's start; ``service.listen.check_listen_addresses``. With
    ``--frontend-processes N`` frontend i serves /metrics on the metrics port + i."""
    from profiling.telemetry.metrics import MetricsSettings
    from service.listen import check_listen_addresses

    metrics = MetricsSettings.from_args(args)  # the port as resolved (flag, environment, default)
    check_listen_addresses(
        [
            (args.host, args.port, "--port"),
            (args.admin_host, args.admin_port, "--admin-port"),
            (args.host, args.health_port, "--health-port"),
            *(
                (metrics.prometheus_host, metrics.prometheus_port + i, "--metrics-port")
                for i in range(args.frontend_processes if metrics.prometheus_port else 0)
            ),
        ]
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    """nanovl's flags, then vLLM's engine flags, merged into one namespace (``--help`` and
    ``--help-engine`` exit). Logging starts in between, before vLLM is imported, so that
    what vLLM logs on import already goes through nanovl's filter, and the import itself
    is the first phase the operator sees."""
    args, rest = build_parser().parse_known_args(argv)
    if args.help_engine:
        build_engine_parser().print_help()
        raise SystemExit(0)
    if "--headless" in rest:
        from nanovl.errors import InvalidArgument

        # vLLM's own API-server flag; headless ranks serve no API (docs/deployment.md).
        raise InvalidArgument(
            "--headless is for the data-parallel worker nodes, which run vLLM's engine ranks without an API "
            "server: start them with `vllm serve MODEL --headless --data-parallel-start-rank R ...`; "
            "nanovl serve is the head (--data-parallel-size, --data-parallel-size-local, --data-parallel-address)"
        )
    # Operator errors in the security flags and files fail at once, before the seconds
    # that importing vLLM takes (and long before the engine's start-up).
    args.security = security_settings(args)
    args.operator_limits = operator_limits(args)
    check_ports(args)
    engine_logs, report = _start_logging(args)
    with report.phase("loading vLLM", "importing vLLM and torch"):
        engine_parser = build_engine_parser()
    log_level = args.log_level
    engine_args = engine_parser.parse_args(rest)  # unknown flags fail here, with vLLM's list
    merged = argparse.Namespace(**{**vars(engine_args), **vars(args)})
    merged.log_level = log_level
    merged.engine_logs, merged.startup = engine_logs, report
    return merged


def apply_exact_sizing(args: argparse.Namespace, engine_args) -> None:
    """``--exact-mm-sizing``: vLLM ``hf_overrides`` that carry the declaration to every engine
    process (``model.vllm_exact_sizing`` reads it there), merged into the operator's own.
    ``InvalidArgument`` naming the flag for a bad or impossible declaration."""
    import dataclasses
    import json

    from model.item_maxima import parse
    from service.media import MediaLimits

    spec, model = args.exact_mm_sizing, args.model
    if spec is None:
        return

    if Path(model, "config.json").is_file():
        config = json.loads(Path(model, "config.json").read_text())
    else:  # a hub name: its config, as vLLM will read it
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model, trust_remote_code=engine_args.trust_remote_code).to_dict()
    limits = MediaLimits(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(MediaLimits) if hasattr(args, f.name)}
    )
    maxima = parse(
        spec,
        max_video_frames=limits.max_video_frames,
        max_audio_seconds=limits.max_audio_seconds,
        frame_side=int(config.get("force_image_size") or 0),
        supports_audio=config.get("sound_config") is not None,
    )
    engine_args.hf_overrides = maxima.hf_overrides(engine_args.hf_overrides)


def _cache_dir() -> Path:
    # model.tiny.cache_root() without importing it (it imports torch, which reads the
    # environment _start_logging sets).
    return Path(os.environ.get("NANOVL_CACHE_DIR") or Path(__file__).resolve().parents[2] / ".cache")


def _start_logging(args: argparse.Namespace):  # -> (engine_logs.EngineLogRouting, StartupReport)
    from nanovl import event_loop
    from nanovl.cli.startup import StartupReport
    from profiling.telemetry import engine_logs, logs

    settings = logs.LoggingSettings.from_args(args)
    logs.setup_logging(settings)
    routing = engine_logs.route_engine_logs(
        _cache_dir() / "logs", show_all=settings.show_all, debug=settings.level == "DEBUG"
    )
    # A live spinner only on a terminal and while nothing else writes to it: with every
    # engine line shown, the engine processes write to it directly.
    report = StartupReport(live=settings.format == "text" and not settings.show_all and sys.stderr.isatty())
    if routing.tail is not None:
        routing.tail.listeners.append(report.on_engine_record)
    for note in routing.notes:
        log.info("%s", note)
    log.info(
        "starting: event loop %s; %s",
        event_loop.resolve(args.event_loop),
        f"full engine log: {routing.path}" if routing.path else "engine logs unfiltered",
    )
    return routing, report


def register(subparsers: argparse._SubParsersAction) -> None:
    # Parsed by parse_args (two stages); registered so `nanovl --help` lists it.
    subparsers.add_parser("serve", help=HELP, add_help=False)


def run(args: argparse.Namespace) -> int:
    from nanovl import event_loop
    from nanovl.cli.common import print_error
    from nanovl.errors import NanovlError
    from service.process_tree import exit_if_bounded

    if getattr(args, "engine_logs", None) is None:  # called without parse_args
        args.engine_logs, args.startup = _start_logging(args)
    try:
        if args.frontend_processes > 1:
            from nanovl.cli import frontends

            return frontends.run_frontends(args)
        status = event_loop.run(_serve(args, args.startup), loop=args.event_loop)
    except NanovlError as exc:
        # Past the engine's start the exit is bounded (exit_within): report and exit here, as
        # interpreter teardown would run into the bound.
        print_error("serve", exc)
        status = EXIT_OPERATOR_ERROR
    except BaseException:
        log.exception("nanovl serve failed")
        exit_if_bounded(1)
        raise
    finally:
        args.engine_logs.stop()
    exit_if_bounded(status)  # the engine and its processes are stopped: skip interpreter teardown
    return status


def prepare_model(args: argparse.Namespace, report) -> None:  # report: StartupReport
    """What every process of one ``nanovl serve`` shares, done once before the engine starts:
    the process environment, the checkpoint (built or validated; ``args.model`` is then a
    path) and vLLM's tracing settings (in ``args`` and the environment its engine inherits)."""
    from model.checkpoint import validate_checkpoint
    from model.tiny import cache_root, ensure_tiny_checkpoint
    from profiling.telemetry import tracing
    from service.engine import apply_process_environment, local_cpu_workers

    apply_process_environment(cache_root(), cpu_workers=local_cpu_workers(args))
    with report.phase("checkpoint", progress=False) as phase:
        if args.model is None:
            variant = args.tiny_variant
            args.model = str(ensure_tiny_checkpoint(variant))
            phase.detail = f"embedded tiny checkpoint ({variant}) {args.model}"
        has_audio = None
        if Path(args.model).is_dir():
            has_audio = validate_checkpoint(args.model).has_audio
            phase.detail = phase.detail or f"{args.model} (validated)"
        else:
            phase.detail = f"{args.model} (vLLM resolves it)"
        resolve_output_format(args, has_audio=has_audio)

    trace_settings = tracing.TracingSettings.from_args(args)
    for_vllm = trace_settings.for_vllm()
    if for_vllm.otlp_traces_endpoint and not args.otlp_traces_endpoint:
        args.otlp_traces_endpoint = for_vllm.otlp_traces_endpoint
    os.environ.update(for_vllm.env)


async def _serve(args: argparse.Namespace, report, frontend: FrontendRole | None = None) -> int:  # StartupReport
    """Serve until SIGTERM/SIGINT or the engine's death; returns the exit status. With
    ``frontend`` this process is one of ``--frontend-processes``, a client of the engine core
    its parent started (``nanovl.cli.frontends``)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    from profiling.servicer import ProfilingServicer
    from profiling.telemetry import metrics as metrics_mod
    from profiling.telemetry import tracing
    from service.engine import Engine
    from service.process_tree import KILL_WAIT_S, ProcessTree, exit_within, seconds_left
    from service.server import build_server

    security, limits = args.security, args.operator_limits
    # SIGUSR1 (a preStop hook) during start-up: readiness is NOT_SERVING already; remember it,
    # so the server never turns SERVING (the default action would kill the process).
    early_withdraw: list[int] = []
    signal.signal(signal.SIGUSR1, lambda signum, _frame: early_withdraw.append(signum))
    if frontend is None:
        prepare_model(args, report)
        # Engine processes watch this process and stop when it is gone, even after a kill -9
        # (profiling/worker_extension.py starts the watch inside them).
        os.environ["NANOVL_SERVER_PID"] = str(os.getpid())
    provider = tracing.setup_tracing(tracing.TracingSettings.from_args(args))
    metrics_settings = metrics_mod.MetricsSettings.from_args(args)
    if frontend is not None and frontend.index > 0 and metrics_settings.prometheus_port > 0:
        metrics_settings = dataclasses.replace(
            metrics_settings, prometheus_port=metrics_settings.prometheus_port + frontend.index
        )
    service_metrics = metrics_mod.setup_metrics(metrics_settings)

    engine_args = AsyncEngineArgs.from_cli_args(args)
    settings = settings_from_args(args, **security)
    apply_exact_sizing(args, engine_args)
    if frontend is not None:
        settings = frontend.settings(settings)
    with report.phase("engine start", "starting vLLM's engine") as phase:
        engine = await Engine.start(
            engine_args, warmup=False, client_config=None if frontend is None else frontend.client_config
        )
        phase.detail = engine.summary.describe()
    # The engine core and workers, as started: killed at exit if they outlive the bound
    # (a worker whose engine core died is no longer this process's descendant).
    tree = ProcessTree() if frontend is None else None
    outcome = {"status": 1}
    server = None
    try:
        # The servicer also feeds the encoder-budget gauges of /metrics.
        profiling = ProfilingServicer(
            engine, engine_args, metrics=service_metrics, limits=limits, media_limits=settings.media_limits
        )
        server = await build_server(
            engine, settings, tracer_provider=provider, metrics=service_metrics, profiling_servicer=profiling
        )
        if settings.warmup:
            with report.phase("warm-up") as phase:
                done = await engine.warmup(on_item=lambda name: setattr(phase, "step", name))
                phase.detail = ", ".join(done) if done else "nothing to warm up"
        if early_withdraw:
            await server.withdraw_readiness()
        await server.mark_serving()
        if frontend is None:
            log.info("serving on %s: ready in %s", server.target, report.summary())
        else:
            frontend.ready(server.target, report.summary())
        if server.admin_target is not None:
            log.info("operator surface (Profiling) on %s", server.admin_target)
        stop = asyncio.Event()
        interactive = False

        def on_signal(sig: signal.Signals) -> None:
            nonlocal interactive
            if not stop.is_set():
                interactive = sig == signal.SIGINT
                stop.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        # SIGUSR1: readiness NOT_SERVING while still serving (a Kubernetes preStop hook sends
        # it, so the replica leaves the balancers' rotation before SIGTERM refuses calls).
        withdrawals: set[asyncio.Task] = set()  # strong references until each one is done

        def on_usr1() -> None:
            task = asyncio.ensure_future(server.withdraw_readiness())
            withdrawals.add(task)
            task.add_done_callback(withdrawals.discard)

        loop.add_signal_handler(signal.SIGUSR1, on_usr1)
        stopped, died = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(server.engine_died.wait())
        await asyncio.wait({stopped, died}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        died.cancel()
        if tree is not None:
            # From here the exit is bounded (README "Running under a supervisor"): the
            # drain's graces, then the engine's shutdown, then EXIT_MARGIN_S.
            if server.engine_died.is_set():
                drain = 1.0  # server.stop(grace=1.0) below
            else:
                drain = (0.0 if interactive else settings.drain_readiness_grace_s) + settings.drain_grace_s
            exit_within(drain + settings.engine_shutdown_timeout_s + EXIT_MARGIN_S, lambda: outcome["status"], tree)
        if server.engine_died.is_set():
            # In-flight calls already failed UNAVAILABLE; give their statuses a moment to
            # reach the clients, then exit so the supervisor starts a fresh process.
            log.error("the engine died: exiting with status %d so the supervisor restarts nanovl", EXIT_ENGINE_DIED)
            outcome["status"] = EXIT_ENGINE_DIED
            await server.stop(grace=1.0)
            return EXIT_ENGINE_DIED
        readiness_grace = 0.0 if interactive else settings.drain_readiness_grace_s
        log.info(
            "shutdown requested (%s): draining for up to %.0fs",
            "SIGINT: no readiness grace" if interactive else f"SIGTERM: readiness grace {readiness_grace:g}s",
            readiness_grace + settings.drain_grace_s,
        )
        clean = await server.drain_and_stop(readiness_grace_s=readiness_grace)
        outcome["status"] = EXIT_DRAINED if clean else EXIT_DRAIN_CUT
        if clean:
            log.info("drained cleanly")
            return EXIT_DRAINED
        log.warning(
            "drain grace of %.0fs ran out with %d call(s) still running; they were cut (exit status %d)",
            settings.drain_grace_s,
            server.lifecycle.cut_calls,
            EXIT_DRAIN_CUT,
        )
        return EXIT_DRAIN_CUT
    finally:
        if tree is not None and signal.getitimer(signal.ITIMER_REAL)[0] == 0:
            exit_within(settings.engine_shutdown_timeout_s + EXIT_MARGIN_S, lambda: outcome["status"], tree)
        if server is not None and server.lifecycle.state != "STOPPED":
            await server.stop()
        # vLLM's own shutdown (SIGTERM, then SIGKILL after the timeout) ends before the bound
        # fires, even when the drain ran late: the engine's share is what is left of it.
        engine.shutdown(timeout_s=_engine_share(settings.engine_shutdown_timeout_s, seconds_left()))
        if tree is not None and (left := tree.alive()):
            # vLLM kills its engine core; a worker re-parented away from it is ours to stop,
            # and gone before this process exits.
            log.info("stopping %d engine process(es) left after the engine's shutdown", len(left))
            tree.kill(wait_s=KILL_WAIT_S)
        tracing.shutdown_tracing(provider)
        service_metrics.shutdown()


def resolve_output_format(args: argparse.Namespace, *, has_audio: bool | None = None) -> None:
    """Settle ``args.reasoning_parser`` and ``args.tool_call_parser`` for the checkpoint in
    ``args.model`` (defaults from ``model.output_format``) and check
    ``args.use_audio_in_video`` against it (``has_audio``: its audio encoder, None when
    unknown); operator errors raise ``InvalidArgument`` (exit 2)."""
    from model.output_format import output_format_of, resolve_parser
    from nanovl.errors import InvalidArgument
    from service.output_parsing import ParserConfig, check_parser_names

    default = output_format_of(args.model)
    args.reasoning_parser = resolve_parser(args.reasoning_parser, default.reasoning_parser)
    tool = resolve_parser(args.tool_call_parser, default.tool_call_parser)
    auto = args.enable_auto_tool_choice
    if auto is None:
        auto = args.tool_call_parser is None and bool(tool)  # the checkpoint's default comes with auto
    if auto and not tool:
        raise InvalidArgument("--enable-auto-tool-choice needs a --tool-call-parser (this checkpoint has no default)")
    if tool and not auto:
        if args.enable_auto_tool_choice is False:
            tool = ""  # tools switched off
        else:
            raise InvalidArgument(
                f"--tool-call-parser {tool} needs --enable-auto-tool-choice, as in vLLM (it composes no tool "
                "parser without it)"
            )
    args.tool_call_parser = tool
    check_parser_names(ParserConfig(reasoning_parser=args.reasoning_parser, tool_call_parser=tool))
    if args.use_audio_in_video:
        if has_audio is False:
            raise InvalidArgument("--use-audio-in-video needs a checkpoint with an audio encoder; this one has none")
        if (getattr(args, "limit_mm_per_prompt", None) or {}).get("audio", 1) == 0:
            raise InvalidArgument("--use-audio-in-video needs audio enabled (--limit-mm-per-prompt audio=0 here)")


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(sys.argv[1:] if argv is None else argv))
