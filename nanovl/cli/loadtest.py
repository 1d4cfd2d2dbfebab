"""``nanovl loadtest``: command-line front end of the load tester.

``nanovl.cli`` registers it with :func:`register` and calls
``args.func(args)``; ``python -m nanovl.cli loadtest`` runs it standalone. Exit status: 0 all
requests succeeded, 1 some failed (reports are still written), 2 the test could not run
(bad arguments, unreachable server, failed warm-up).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtest.config import DEFAULT_MIX, AudioSpec, ImageSpec, LoadTestConfig, VideoSpec
from loadtest.mix import Mix
from nanovl.cli.common import add_connection_args, connection_from_args
from nanovl.client import DEFAULT_CHUNK_SIZE
from nanovl.errors import InvalidArgument, NanovlError
from nanovl.media_specs import parse_dims

if TYPE_CHECKING:
    from rich.console import Console

# The runner, reports and plots (rich, pydantic, matplotlib) are imported when a command
# runs, not when the parser is built: `nanovl serve` registers this CLI too.

__all__ = ["config_from_args", "main", "register", "run_loadtest_command"]

EXIT_OK, EXIT_REQUEST_ERRORS, EXIT_CANNOT_RUN = 0, 1, 2


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    load = p.add_argument_group("load")
    load.add_argument(
        "--target",
        metavar="HOST:PORT[,HOST:PORT...]",
        default=os.environ.get("NANOVL_TARGET") or None,
        help="the nanovl gRPC server, or a balancer in front of several (required to run; env NANOVL_TARGET); "
        "several, comma-separated: requests are dealt to them in turn and the report has per-target figures",
    )
    add_connection_args(p)
    load.add_argument(
        "--concurrency",
        type=_int_list,
        default=(),
        metavar="N[,N...]",
        help="closed-loop levels: requests kept in flight, e.g. 1,8,32,128",
    )
    load.add_argument(
        "--rate",
        type=_float_list,
        default=(),
        metavar="R[,R...]",
        help="open-loop levels: Poisson arrivals per second, e.g. 0.5,1,2 (run after --concurrency levels)",
    )
    amount = load.add_mutually_exclusive_group()
    amount.add_argument(
        "--requests",
        type=int,
        metavar="N",
        help="measured requests per level (default: max(32, 4 x concurrency) or max(32, 30 s x rate))",
    )
    amount.add_argument("--duration", type=float, metavar="S", help="seconds per level instead of a request count")
    load.add_argument("--warmup", type=int, metavar="N", help="unmeasured requests first (default: one per mix kind)")
    load.add_argument(
        "--ramp-up",
        type=float,
        default=0.0,
        metavar="S",
        help="closed loop: start workers evenly over S seconds; open loop: raise the rate linearly over S",
    )
    load.add_argument(
        "--client-processes",
        type=int,
        default=1,
        metavar="N",
        help="split the load over N client processes (for loads one Python process cannot drive)",
    )
    load.add_argument(
        "--connections",
        type=int,
        default=1,
        metavar="N",
        help="channels (TCP connections) per target per client process, requests dealt over them in turn: "
        "a server with --frontend-processes N spreads connections, not calls, over its processes, so give "
        "it many (e.g. 16 x N): the kernel deals each connection to a process at random",
    )
    load.add_argument("--seed", type=int, default=0)

    work = p.add_argument_group("workload")
    work.add_argument(
        "--mix",
        default=DEFAULT_MIX,
        help=f"kinds and weights (default {DEFAULT_MIX}); join media with + for multi-media prompts, "
        "e.g. image+audio=0.1; reasoning and tools (alone) are chat prompts for reasoning models (Nemotron 3): "
        "thinking on with a 64-token budget, and a tool the model may call",
    )
    work.add_argument("--image-size", default="640x480", metavar="WxH")
    work.add_argument("--image-format", choices=("jpeg", "png"), default="jpeg")
    work.add_argument("--video-size", default="8x320x240", metavar="FRAMESxWxH")
    work.add_argument("--video-fps", type=float, default=8.0)
    work.add_argument("--video-format", choices=("mp4", "raw"), default="mp4", help="raw: client-decoded RGB24 frames")
    work.add_argument("--video-sample-frames", type=int, metavar="N", help="frames the server samples (default: all)")
    work.add_argument("--audio-seconds", type=float, default=3.0)
    work.add_argument("--audio-format", choices=("wav", "pcm"), default="wav", help="pcm: raw 16-bit samples")
    work.add_argument(
        "--media-content",
        choices=("smooth", "noise"),
        default="smooth",
        help="synthetic pixels: smooth (photo-like sizes, default) or noise (incompressible)",
    )
    work.add_argument("--media-dir", metavar="DIR", help="send these files (by extension) instead of synthetic media")
    work.add_argument(
        "--media-pool",
        type=int,
        metavar="N",
        help="distinct prompts per kind (default: one per request; prompts then never repeat)",
    )
    work.add_argument("--prompt-words", type=int, default=32, help="random words in each prompt's text part")
    work.add_argument("--chat", action="store_true", help="send chat messages (the model's chat template)")

    req = p.add_argument_group("requests")
    req.add_argument("--max-tokens", type=int, default=64)
    req.add_argument(
        "--no-ignore-eos",
        dest="ignore_eos",
        action="store_false",
        help="let EOS end generations early (default: always generate --max-tokens)",
    )
    req.add_argument("--temperature", type=float)
    req.add_argument("--chunked", action="store_true", help="upload with StreamGenerate (chunked) instead of Generate")
    req.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, metavar="BYTES")
    req.add_argument("--timeout", type=float, default=600.0, metavar="S", help="deadline per request")
    req.add_argument(
        "--connect-timeout", type=float, default=60.0, metavar="S", help="wait this long for the server to come up"
    )

    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", help="results directory (default: loadtest-results/<UTC time>)")
    out.add_argument("--name", default="", help="run label in reports and comparisons")
    out.add_argument("--no-plots", action="store_true")
    out.add_argument("--no-progress", action="store_true", help="no live progress display")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``loadtest`` (and ``loadtest compare``) on an argparse subparsers object;
    the parsed namespace's ``func(args) -> int`` runs it."""
    p = subparsers.add_parser(
        "loadtest",
        help="load-test a nanovl gRPC server (all modalities)",
        description="Load-test a nanovl gRPC server: closed-loop concurrency sweeps and open-loop Poisson "
        "rates, mixed text/image/video/audio prompts; writes results.json, CSVs and PNG plots. "
        "`nanovl loadtest compare A.json B.json` overlays runs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_run_arguments(p)
    sub = p.add_subparsers(dest="loadtest_command", metavar="compare")
    c = sub.add_parser(
        "compare", help="compare runs (the first is the baseline)", description="Compare load-test runs."
    )
    c.add_argument("results", nargs="+", metavar="RESULTS.json")
    c.add_argument("--out", metavar="DIR", help="write compare.csv and overlay plots here")
    c.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=run_loadtest_command)
    return p


def config_from_args(args: argparse.Namespace) -> LoadTestConfig:
    if not args.target:
        raise InvalidArgument("--target HOST:PORT is required")
    width, height = parse_dims(args.image_size, 2, "--image-size")
    frames, vw, vh = parse_dims(args.video_size, 3, "--video-size")
    return LoadTestConfig(
        target=args.target,
        concurrency=args.concurrency,
        rates=args.rate,
        requests=args.requests,
        duration_s=args.duration,
        mix=Mix.parse(args.mix),
        image=ImageSpec(width, height, args.image_format),
        video=VideoSpec(frames, vw, vh, args.video_fps, args.video_format, args.video_sample_frames),
        audio=AudioSpec(args.audio_seconds, format=args.audio_format),
        content=args.media_content,
        media_dir=args.media_dir,
        media_pool=args.media_pool,
        prompt_words=args.prompt_words,
        chat=args.chat,
        max_tokens=args.max_tokens,
        ignore_eos=args.ignore_eos,
        temperature=args.temperature,
        warmup_requests=args.warmup,
        ramp_up_s=args.ramp_up,
        chunked=args.chunked,
        chunk_size=args.chunk_size,
        timeout_s=args.timeout,
        connect_timeout_s=args.connect_timeout,
        seed=args.seed,
        client_processes=args.client_processes,
        connections=args.connections,
        name=args.name,
        tls=connection_from_args(args)[0],
        token_file=args.token_file,
    )


def _run(args: argparse.Namespace, console: Console) -> int:
    config = config_from_args(args)
    _preflight(config)
    # The runner, reports and plots (rich, pydantic, matplotlib) only once the server answered.
    from loadtest.plots import plot_run
    from loadtest.report import RichProgress, result_tables, write_reports
    from loadtest.runner import run_load_test

    out = Path(args.out or Path("loadtest-results") / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"))
    if args.no_progress:
        result = run_load_test(config)
    else:
        with RichProgress() as progress:
            result = run_load_test(config, progress=progress)
    files = write_reports(result, out)
    plots = [] if args.no_plots else plot_run(result, out)
    for table in result_tables(result):
        console.print(table)
    reused = [m for m in result.media if m.sent > m.unique]
    for m in reused:
        console.print(
            f"note: {m.kind}: {m.sent} requests used {m.unique} distinct prompts; repeats may hit server caches"
        )
    console.print(
        f"wrote {files.json}, {files.summary_csv.name}, {files.requests_csv.name}"
        + (f" and {len(plots)} plots" if plots else "")
        + f" in {out}"
    )
    return EXIT_REQUEST_ERRORS if result.total_errors else EXIT_OK


def _preflight(config: LoadTestConfig) -> None:
    """One GetModelInfo before the heavy imports: a wrong target, TLS setting or token fails
    in a fraction of a second. UNIMPLEMENTED is fine (not a nanovl server; Generate may work)."""
    import grpc

    from nanovl.client import InferenceClient, InferenceRpcError
    from nanovl.client.security import read_token_file

    token = read_token_file(config.token_file) if config.token_file else (os.environ.get("NANOVL_TOKEN") or None)
    for target in config.targets:
        with InferenceClient(target, tls=config.tls, token=token) as client:
            try:
                client.get_model_info(timeout=config.connect_timeout_s)
            except InferenceRpcError as exc:
                if exc.code not in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE):
                    raise


def _compare(args: argparse.Namespace, console: Console) -> int:
    from loadtest.plots import plot_compare
    from loadtest.report import compare_table, load_result, write_compare_csv

    results = [load_result(p) for p in args.results]
    console.print(compare_table(results))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        written = [write_compare_csv(results, out / "compare.csv")]
        if not args.no_plots:
            written += plot_compare(results, out)
        console.print(f"wrote {', '.join(p.name for p in written)} in {out}")
    return EXIT_OK


def run_loadtest_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))  # files and pipes: do not squeeze tables
    try:
        if getattr(args, "loadtest_command", None) == "compare":
            return _compare(args, console)
        return _run(args, console)
    except NanovlError as e:
        Console(stderr=True).print(f"[bold red]error[/]: {e} [dim]({e.code.name})[/]")
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nanovl")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["loadtest", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))
