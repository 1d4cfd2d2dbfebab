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
import logging
import os
import signal
import sys
from pathlib import Path

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
    g.add_argument("--decode-threads", type=int, default=d.decode_threads, help="media decoding threads")
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
        "--drain-grace-s", type=float, default=d.drain_grace_s, help="SIGTERM: seconds in-flight calls may finish"
    )
    g.add_argument("--no-warmup", action="store_true", help="skip the per-modality warm-up at start")
    g.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default="auto",
        help="auto: uvloop when installed (less CPU per streamed token), else asyncio",
    )
    g.add_argument(
        "--tiny-variant",
        default="full",
        choices=("full", "no-audio", "dynamic"),
        help="which embedded tiny checkpoint to serve when --model is not given",
    )
    tracing.add_cli_args(p)
    metrics.add_cli_args(p)
    logs.add_cli_args(p)
    return p


def build_engine_parser() -> argparse.ArgumentParser:
    """vLLM's engine flags (``AsyncEngineArgs.add_cli_args``) with nanovl's defaults."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from service.engine import CPU_ENGINE_DEFAULTS, WORKER_EXTENSION_CLS, on_cpu

    p = FlexibleArgumentParser(prog="nanovl serve", description="vLLM engine flags accepted by `nanovl serve`.")
    p = AsyncEngineArgs.add_cli_args(p)
    # As parser defaults, so any flag the operator passes still wins.
    p.set_defaults(
        model=None,
        trust_remote_code=True,
        worker_extension_cls=WORKER_EXTENSION_CLS,
        # The weight-load progress bar is written to the terminal by the worker, outside
        # logging (it would break --log-format json); start-up reports "weight load: N s".
        use_tqdm_on_load=False,
        **(CPU_ENGINE_DEFAULTS if on_cpu() else {}),
    )
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """nanovl's flags, then vLLM's engine flags, merged into one namespace (``--help`` and
    ``--help-engine`` exit). Logging starts in between, before vLLM is imported, so that
    what vLLM logs on import already goes through nanovl's filter, and the import itself
    is the first phase the operator sees."""
    args, rest = build_parser().parse_known_args(argv)
    if args.help_engine:
        build_engine_parser().print_help()
        raise SystemExit(0)
    engine_logs, report = _start_logging(args)
    with report.phase("loading vLLM", "importing vLLM and torch"):
        engine_parser = build_engine_parser()
    log_level = args.log_level
    engine_args = engine_parser.parse_args(rest)  # unknown flags fail here, with vLLM's list
    merged = argparse.Namespace(**{**vars(engine_args), **vars(args)})
    merged.log_level = log_level
    merged.engine_logs, merged.startup = engine_logs, report
    return merged


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

    if getattr(args, "engine_logs", None) is None:  # called without parse_args
        args.engine_logs, args.startup = _start_logging(args)
    try:
        return event_loop.run(_serve(args, args.startup), loop=args.event_loop)
    finally:
        args.engine_logs.stop()


async def _serve(args: argparse.Namespace, report) -> int:  # report: StartupReport
    from vllm.engine.arg_utils import AsyncEngineArgs

    from model.checkpoint import validate_checkpoint
    from model.tiny import cache_root, ensure_tiny_checkpoint
    from profiling.servicer import ProfilingServicer
    from profiling.telemetry import metrics as metrics_mod
    from profiling.telemetry import tracing
    from service.engine import Engine, apply_process_environment
    from service.server import build_server
    from service.settings import ServerSettings

    apply_process_environment(cache_root())
    with report.phase("checkpoint", progress=False) as phase:
        if args.model is None:
            variant = args.tiny_variant
            args.model = str(ensure_tiny_checkpoint(variant))
            phase.detail = f"embedded tiny checkpoint ({variant}) {args.model}"
        if Path(args.model).is_dir():
            validate_checkpoint(args.model)
            phase.detail = phase.detail or f"{args.model} (validated)"
        else:
            phase.detail = f"{args.model} (vLLM resolves it)"

    trace_settings = tracing.TracingSettings.from_args(args)
    for_vllm = trace_settings.for_vllm()
    if for_vllm.otlp_traces_endpoint and not args.otlp_traces_endpoint:
        args.otlp_traces_endpoint = for_vllm.otlp_traces_endpoint
    os.environ.update(for_vllm.env)
    provider = tracing.setup_tracing(trace_settings)
    service_metrics = metrics_mod.setup_metrics(metrics_mod.MetricsSettings.from_args(args))

    engine_args = AsyncEngineArgs.from_cli_args(args)
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        max_message_bytes=args.max_message_bytes,
        max_request_bytes=args.max_request_bytes,
        max_concurrent_requests=args.max_concurrent_requests,
        decode_threads=args.decode_threads,
        default_video_frames=args.default_video_frames,
        default_video_fps=args.default_video_fps,
        default_video_max_frames=args.default_video_max_frames,
        default_max_tokens=args.default_max_tokens,
        drain_grace_s=args.drain_grace_s,
        warmup=not args.no_warmup,
    )
    with report.phase("engine start", "starting vLLM's engine") as phase:
        engine = await Engine.start(engine_args, warmup=False)
        phase.detail = engine.summary.describe()
    server = None
    try:
        # The servicer also feeds the encoder-budget gauges of /metrics.
        profiling = ProfilingServicer(engine, engine_args, metrics=service_metrics)
        server = await build_server(
            engine, settings, tracer_provider=provider, metrics=service_metrics, profiling_servicer=profiling
        )
        if settings.warmup:
            with report.phase("warm-up") as phase:
                done = await engine.warmup(on_item=lambda name: setattr(phase, "step", name))
                phase.detail = ", ".join(done) if done else "nothing to warm up"
        await server.mark_serving()
        log.info("serving on %s: ready in %s", server.target, report.summary())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutdown requested: draining for up to %.0fs", settings.drain_grace_s)
        clean = await server.drain_and_stop()
        log.info("drained %s", "cleanly" if clean else "with requests still running at the deadline")
        return 0
    finally:
        if server is not None and server.lifecycle.state != "STOPPED":
            await server.stop()
        engine.shutdown()
        tracing.shutdown_tracing(provider)
        service_metrics.shutdown()


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(sys.argv[1:] if argv is None else argv))
