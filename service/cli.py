"""``nanovl`` command line: serve, generate, model build-tiny, profile, loadtest."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

log = logging.getLogger("nanovl")


# ---------------------------------------------------------------------- serve


SERVE_HELP = "run the gRPC service (default model: the embedded tiny checkpoint)"


def build_serve_parser() -> argparse.ArgumentParser:
    """``nanovl serve``'s parser. Separate from the others because it carries every vLLM
    engine flag, and importing vLLM to build it takes seconds the other commands need not pay."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from profiling import logs, metrics, tracing
    from service.event_loop import EVENT_LOOPS
    from service.settings import ServerSettings

    p = FlexibleArgumentParser(
        prog="nanovl serve",
        description="Run the nanovl gRPC service. Every vLLM engine flag is accepted (see `vllm serve --help`); "
        "on a CPU-only machine nanovl defaults to --no-enable-prefix-caching --dtype bfloat16 "
        "--enforce-eager.",
    )
    d = ServerSettings()
    g = p.add_argument_group("nanovl server")
    g.add_argument("--host", default=d.host)
    g.add_argument("--port", type=int, default=d.port)
    g.add_argument(
        "--max-message-bytes",
        type=int,
        default=d.max_message_bytes,
        help="largest single gRPC message (Generate request or StreamGenerate chunk)",
    )
    g.add_argument(
        "--max-request-bytes", type=int, default=d.max_request_bytes, help="largest total media upload of one request"
    )
    g.add_argument("--max-concurrent-requests", type=int, default=d.max_concurrent_requests)
    g.add_argument("--decode-threads", type=int, default=d.decode_threads)
    g.add_argument("--default-video-frames", type=int, default=d.default_video_frames)
    g.add_argument("--default-max-tokens", type=int, default=d.default_max_tokens)
    g.add_argument("--drain-grace-s", type=float, default=d.drain_grace_s)
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
        choices=("full", "no-audio", "dynamic", "omni-v3", "omni-v3-no-audio"),
        help="which embedded tiny checkpoint to serve when --model is not given",
    )
    tracing.add_cli_args(p)
    metrics.add_cli_args(p)
    p = AsyncEngineArgs.add_cli_args(p)
    logs.add_cli_args(p)
    from service.engine import CPU_ENGINE_DEFAULTS, on_cpu

    # As parser defaults, so any flag the operator passes still wins.
    p.set_defaults(
        model=None,
        func=_serve_main,
        command="serve",
        trust_remote_code=True,
        worker_extension_cls="profiling.worker_extension.NanovlWorkerExtension",
        **(CPU_ENGINE_DEFAULTS if on_cpu() else {}),
    )
    return p


def _serve_main(args: argparse.Namespace) -> int:
    from profiling import logs
    from service import event_loop

    logs.setup_logging(logs.LoggingSettings.from_args(args))
    log.info("event loop: %s", event_loop.resolve(args.event_loop))
    return event_loop.run(_serve(args), loop=args.event_loop)


async def _serve(args: argparse.Namespace) -> int:
    from model.checkpoint import validate_checkpoint
    from model.tiny import cache_root, ensure_tiny_checkpoint
    from profiling import metrics as metrics_mod
    from profiling import tracing
    from service.engine import Engine, apply_process_environment
    from service.server import build_server
    from service.settings import ServerSettings

    apply_process_environment(cache_root())
    if args.model is None:
        args.model = str(ensure_tiny_checkpoint(args.tiny_variant))
        log.info("no --model given: serving the embedded tiny checkpoint %s", args.model)
    if Path(args.model).is_dir():
        validate_checkpoint(args.model)

    trace_settings = tracing.TracingSettings.from_args(args)
    for_vllm = trace_settings.for_vllm()
    if for_vllm.otlp_traces_endpoint and not args.otlp_traces_endpoint:
        args.otlp_traces_endpoint = for_vllm.otlp_traces_endpoint
    os.environ.update(for_vllm.env)
    provider = tracing.setup_tracing(trace_settings)
    service_metrics = metrics_mod.setup_metrics(metrics_mod.MetricsSettings.from_args(args))

    from vllm.engine.arg_utils import AsyncEngineArgs

    engine_args = AsyncEngineArgs.from_cli_args(args)
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        max_message_bytes=args.max_message_bytes,
        max_request_bytes=args.max_request_bytes,
        max_concurrent_requests=args.max_concurrent_requests,
        decode_threads=args.decode_threads,
        default_video_frames=args.default_video_frames,
        default_max_tokens=args.default_max_tokens,
        drain_grace_s=args.drain_grace_s,
        warmup=not args.no_warmup,
    )
    engine = await Engine.start(engine_args, warmup=False)
    server = None
    try:
        from service.profiling_servicer import ProfilingServicer

        # The servicer also feeds the encoder-budget gauges of /metrics.
        profiling = ProfilingServicer(engine, engine_args, metrics=service_metrics)
        server = await build_server(
            engine, settings, tracer_provider=provider, metrics=service_metrics, profiling_servicer=profiling
        )
        if settings.warmup:
            await engine.warmup()
        await server.mark_serving()
        log.info("nanovl serving %s on %s", engine.summary.served_model_name, server.target)
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


# ---------------------------------------------------------------------- generate


def _add_generate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="send one prompt to a server and stream the answer")
    p.add_argument("prompt", help="the text of the prompt (placed after the media)")
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--image", action="append", default=[], type=Path)
    p.add_argument("--video", action="append", default=[], type=Path)
    p.add_argument("--audio", action="append", default=[], type=Path)
    p.add_argument("--num-frames", type=int, help="frames to sample from each video")
    p.add_argument("--chunked", action="store_true", help="upload media in chunks with StreamGenerate")
    p.add_argument("--chunk-size", type=int, default=1 << 20)
    p.add_argument("--chat", action="store_true", help="send as a user message through the chat template")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--timeout", type=float, default=300)
    p.set_defaults(func=_generate_main)


def _generate_main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from service.client import Delta, Final, InferenceClient, InferenceRpcError, Message, Part, Sampling

    err = Console(stderr=True)
    parts = (
        [Part.image(p) for p in args.image]
        + [Part.video(p, num_frames=args.num_frames) for p in args.video]
        + [Part.audio(p) for p in args.audio]
        + [Part.text(args.prompt)]
    )
    prompt = [Message.user(*parts)] if args.chat else parts
    sampling = Sampling(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    final = None
    with InferenceClient(args.target, timeout=args.timeout) as client:
        try:
            call = (
                client.stream_generate(prompt, sampling=sampling, chunk_size=args.chunk_size)
                if args.chunked
                else client.generate(prompt, sampling=sampling)
            )
            with call:
                for event in call:
                    if isinstance(event, Delta):
                        sys.stdout.write(event.text)
                        sys.stdout.flush()
                    elif isinstance(event, Final):
                        final = event
        except InferenceRpcError as exc:
            err.print(f"[red]error {exc.code.name}[/red]: {exc.message}")
            return 1
    sys.stdout.write("\n")
    if final is not None:
        u, t = final.usage, final.timings
        table = Table(title=f"request {final.request_id} — {final.finish_reason.name.lower()}", show_header=False)
        by = u.prompt_tokens_by_modality
        table.add_row(
            "prompt tokens", f"{u.prompt_tokens} (text {by.text}, image {by.image}, video {by.video}, audio {by.audio})"
        )
        table.add_row("completion tokens", str(u.completion_tokens))
        for name in ("upload_s", "decode_media_s", "queue_s", "prefill_s", "ttft_s", "decode_s", "total_s"):
            table.add_row(name.replace("_s", "").replace("_", " "), f"{getattr(t, name) * 1000:.1f} ms")
        if u.completion_tokens > 1 and t.decode_s > 0:
            table.add_row("decode speed", f"{(u.completion_tokens - 1) / t.decode_s:.1f} tokens/s")
        err.print(table)
    return 0


# ---------------------------------------------------------------------- model


def _add_model(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("model", help="checkpoint tools")
    sub = p.add_subparsers(dest="model_command", required=True)
    b = sub.add_parser("build-tiny", help="build a tiny, randomly initialised NemotronH_Nano_VL_V2 checkpoint")
    b.add_argument("out_dir", type=Path)
    b.add_argument("--variant", default="full", choices=("full", "no-audio", "dynamic", "omni-v3", "omni-v3-no-audio"))
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=_build_tiny_main)
    v = sub.add_parser("validate", help="check a checkpoint directory has every field vLLM needs")
    v.add_argument("path", type=Path)
    v.set_defaults(func=_validate_main)


def _build_tiny_main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from model.tiny import build_tiny_checkpoint

    with Console(stderr=True).status(f"building tiny {args.variant} checkpoint"):
        out = build_tiny_checkpoint(args.out_dir, args.variant, seed=args.seed)
    print(out)
    return 0


def _validate_main(args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError, validate_checkpoint

    try:
        info = validate_checkpoint(args.path)
    except CheckpointError as exc:
        print(f"invalid checkpoint: {exc}", file=sys.stderr)
        return 1
    print(dataclasses.asdict(info))
    return 0


# ---------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanovl", description="gRPC inference service for Nemotron Nano VL")
    subparsers = parser.add_subparsers(dest="command", required=True)
    subparsers.add_parser("serve", help=SERVE_HELP, add_help=False)  # parsed by build_serve_parser
    _add_generate(subparsers)
    _add_model(subparsers)
    from loadtest.cli import add_loadtest_subparser
    from service.profile_cli import add_profile_subparser

    add_profile_subparser(subparsers)
    add_loadtest_subparser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        args = build_serve_parser().parse_args(argv[1:])
    else:
        args = build_parser().parse_args(argv)
    from model.checkpoint import CheckpointError
    from service.errors import NanovlError

    try:
        return int(args.func(args) or 0)
    except (NanovlError, CheckpointError) as exc:
        # Operator mistakes (busy port, bad checkpoint, bad flag value): one clear line.
        print(f"nanovl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
