"""``make bench``: nanovl against in-process ``AsyncLLM`` and vLLM's frontends, in one run
on this machine.

::

    python -m bench.run            # full: text, image, mixed at c=1,8,32,128; every side
    python -m bench.run --quick    # image at c=1,4, 4 requests; sides a, b (for iterating)
    python -m bench.run --quick --workloads text --levels 1:4,8:8 --profile --upload
    python -m bench.run --baseline docs/benchmarks/results.json   # + a before/after table

Sides run one after another (never two engines at once). The benchmark's own process is
the client of the server sides; it pins itself to the last CPU before it starts any
thread, and starts every server with all CPUs (see :mod:`bench.servers`). After nanovl's
(b) passes, on the same server: the py-spy ``--native`` profiles and the chunked-upload
case. Writes the markdown report, ``results.json`` and the plots (full run:
``docs/benchmarks.md`` and ``docs/benchmarks/``; quick run: ``.cache/bench/quick/``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.baseline import Baseline, load_baseline
from bench.config import DEFAULT_SIDES, BenchConfig, PassPolicy, Side, SideSpec, parse_variant
from bench.machine import collect_machine, load_average
from bench.passes import MeasurePoint, run_schedule
from bench.plan import Point, build_points, build_profile_points, with_target
from bench.results import BenchResult, PointResult, ProfileSummary, SideRun, UploadResult, write_json
from bench.servers import (
    REPO_ROOT,
    Launch,
    PortPool,
    ServerFailed,
    ServerProcess,
    grpc_health_ready,
    http_ready,
    missing_flags,
    nanovl_serve_help,
    server_launch,
)
from bench.sides import PointOutcome
from nanovl import event_loop

__all__ = ["main", "parse_args", "run_bench"]

STARTUP_TIMEOUT_S = 900.0  # engine start on a busy 2-core machine can take minutes
INPROCESS_TIMEOUT_S = 5400.0
NANOVL_READY_SERVICE = "nanovl.v1.Inference"


def _log(msg: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- sides


async def _run_inprocess(
    points: Sequence[Point],
    checkpoint: str,
    overrides: dict[str, Any],
    passes: PassPolicy,
    cpus: Sequence[int],
    work: Path,
) -> SideRun:
    from bench.sides.inprocess import InprocessJob, InprocessRun

    t0 = time.perf_counter()
    job_path, out_path = work / "inprocess-job.pkl", work / "inprocess-out.pkl"
    out_path.unlink(missing_ok=True)
    job_path.write_bytes(pickle.dumps(InprocessJob(tuple(points), checkpoint, overrides, passes)))
    child = ServerProcess(
        "inprocess", ["-m", "bench.sides.inprocess", str(job_path), str(out_path)], work / "logs" / "inprocess.log"
    )
    load_before = load_average()
    child.start(cpus)

    def done(run: SideRun) -> SideRun:
        return replace(run, duration_s=time.perf_counter() - t0)

    try:
        await child.wait_exit(INPROCESS_TIMEOUT_S)
    except ServerFailed as e:
        return done(SideRun("inprocess", child.command, None, (), str(e), load_before))
    finally:
        child.stop()
    if not out_path.exists():
        return done(
            SideRun(
                "inprocess",
                child.command,
                None,
                (),
                f"the in-process run wrote no result:\n{child.log_tail()}",
                load_before,
            )
        )
    run: InprocessRun = pickle.loads(out_path.read_bytes())
    error = None if run.error is None else f"{run.error}\n{child.log_tail()}"
    return done(
        SideRun("inprocess", child.command, run.startup_s, _points("inprocess", run.outcomes), error, load_before)
    )


def _points(side: Side, outcomes: Sequence[PointOutcome]) -> tuple[PointResult, ...]:
    """The measured points, every pass, the fastest error-free pass of each point marked
    chosen (warm-up points are dropped; a failed one is logged)."""
    for o in outcomes:
        if o.warmup_only and (o.error or (o.level is not None and o.level.overall.failed)):
            _log(f"{side}: warm-up of {o.workload} failed: {o.error or o.level.overall.errors}")  # type: ignore[union-attr]
    measured = [o for o in outcomes if not o.warmup_only]

    def score(o: PointOutcome) -> tuple[bool, float]:
        ok = o.level is not None and o.error is None and not o.level.overall.failed
        return ok, o.level.overall.output_tokens_per_s if o.level is not None else 0.0

    order = {w: i for i, w in enumerate(dict.fromkeys(o.workload for o in measured))}
    best: dict[tuple[str, int], PointOutcome] = {}
    for o in measured:
        key = (o.workload, o.concurrency)
        if key not in best or score(o) > score(best[key]):
            best[key] = o
    return tuple(
        PointResult(
            side,
            o.workload,
            o.concurrency,
            o.level,
            o.error,
            cpu=o.cpu,
            pass_index=o.pass_index,
            chosen=best[(o.workload, o.concurrency)] is o,
        )
        for o in sorted(measured, key=lambda o: (order[o.workload], o.concurrency, o.pass_index))
    )


def _probe(spec: SideSpec, launch: Launch) -> Callable[[], Awaitable[bool]]:
    if spec.kind == "nanovl":
        return lambda: grpc_health_ready(launch.target, NANOVL_READY_SERVICE)
    if spec.kind == "vllm-grpc":
        from bench.sides.vllm_grpc import VLLM_GRPC_SERVICE

        return lambda: grpc_health_ready(launch.target, VLLM_GRPC_SERVICE)
    assert launch.http_url is not None
    url = launch.http_url
    if spec.kind == "vllm-rust":

        async def both() -> bool:
            import grpc

            if not await http_ready(url):
                return False
            async with grpc.aio.insecure_channel(launch.target) as channel:
                await asyncio.wait_for(channel.channel_ready(), 5.0)
            return True

        return both
    return lambda: http_ready(url)


async def _measure_side(
    spec: SideSpec, points: Sequence[Point], launch: Launch, checkpoint: str, pid: int, passes: PassPolicy
) -> list[PointOutcome]:
    def run(measure: MeasurePoint) -> Awaitable[list[PointOutcome]]:
        return run_schedule(points, measure, passes, log=lambda m: _log(f"{spec.id}: {m}"))

    if spec.kind == "nanovl":
        from bench.sides.nanovl import nanovl_measurer

        return await run(nanovl_measurer(launch.target, pid, spec.connections))
    if spec.kind == "vllm-http":
        from bench.sides.vllm_http import vllm_http_measurer

        assert launch.http_url is not None
        async with vllm_http_measurer(launch.http_url, pid) as measure:
            return await run(measure)
    if spec.kind == "vllm-grpc":
        from bench.sides.vllm_grpc import vllm_grpc_measurer

        async with vllm_grpc_measurer(launch.target, checkpoint, pid) as measure:
            return await run(measure)
    from bench.sides.vllm_rust import vllm_rust_measurer

    async with vllm_rust_measurer(launch.target, checkpoint, pid) as measure:
        return await run(measure)


def _unavailable(spec: SideSpec) -> str | None:
    """Why the side cannot run on this machine (checked before starting anything), or None."""
    if spec.kind == "vllm-rust":
        from bench.sides.vllm_rust import rust_frontend_binary

        return rust_frontend_binary()[1]
    if spec.kind == "nanovl" and spec.extra_flags:
        missing = missing_flags(nanovl_serve_help(), spec.extra_flags)
        if missing:
            return (
                f"`nanovl serve` does not have {', '.join(f'`{m}`' for m in missing)} yet (not in `nanovl serve "
                "--help`); the side runs once it does"
            )
    return None


def _refused_flag(log_tail: str, code: int | None) -> bool:
    """argparse's refusal (exit status 2, 'unrecognized arguments' / 'invalid choice')."""
    return code == 2 and ("unrecognized arguments" in log_tail or "invalid choice" in log_tail)


async def _profile(point: Point, pid: int, target: str, path: Path, measured_ms: float | None = None) -> ProfileSummary:
    """py-spy --native (falling back to Python frames) during one unmeasured pass of
    ``point``, with nanovl's frontend CPU metered over it."""
    from bench.cpu import CpuMeter
    from bench.profile import PySpy, split_speedscope, summarize_speedscope, waiting_seconds
    from bench.sides.nanovl import MeterAroundLevel
    from loadtest.runner import run_load_test_async

    def failed(error: str, native_failed: str | None = None) -> ProfileSummary:
        return ProfileSummary(
            point.workload, point.concurrency, 0.0, str(path), (), (), error, native_failed=native_failed
        )

    native_failed = None
    spy = PySpy(pid, path, native=True)
    try:
        spy.start()
        await asyncio.sleep(1.5)  # let py-spy attach (or fail to)
        early = spy.failed_early()
        if early is not None:
            native_failed = early
            spy = PySpy(pid, path, native=False)
            spy.start()
            await asyncio.sleep(1.0)
            if (again := spy.failed_early()) is not None:
                return failed(f"py-spy could not attach: {again}", native_failed)
    except RuntimeError as e:
        return failed(str(e))
    meter = CpuMeter(pid, os.getpid())
    try:
        result = await run_load_test_async(with_target(point, target), progress=MeterAroundLevel(meter))
    except Exception as e:
        await asyncio.to_thread(spy.stop)
        return failed(f"{type(e).__name__}: {e}", native_failed)
    try:
        await asyncio.to_thread(spy.stop)
        busy, packages, functions = summarize_speedscope(path)
        split = split_speedscope(path)
        waiting = waiting_seconds(path)
    except Exception as e:
        return failed(f"{type(e).__name__}: {e}", native_failed)
    overall = result.levels[0].overall
    ms = meter.usage.frontend_s * 1000 / overall.output_tokens if meter.usage and overall.output_tokens else None
    return ProfileSummary(
        point.workload,
        point.concurrency,
        busy,
        str(path),
        packages,
        functions,
        native=native_failed is None,
        native_failed=native_failed,
        split=split,
        requests=overall.succeeded,
        output_tokens=overall.output_tokens,
        frontend_ms_per_token=ms,
        frontend_cpu_s=meter.usage.frontend_s if meter.usage else None,
        waiting_s=waiting,
    )


async def _run_server_side(
    spec: SideSpec,
    points: Sequence[Point],
    checkpoint: str,
    config: BenchConfig,
    cpus: Sequence[int],
    work: Path,
    ports: PortPool,
    metrics_ports: PortPool,
    extras: Callable[[int, str], Awaitable[None]] | None = None,
) -> SideRun:
    """Start the side's server, measure every point, run ``extras(pid, target)`` (nanovl's
    profiles and upload case), stop it."""
    t0 = time.perf_counter()
    why_not = await asyncio.to_thread(_unavailable, spec)
    if why_not is not None:
        return SideRun(spec.id, "", None, (), skipped=why_not)
    launch = server_launch(spec, checkpoint=checkpoint, engine=config.engine, ports=ports, metrics_ports=metrics_ports)
    server = ServerProcess(spec.id, launch.argv, work / "logs" / f"{spec.id}.log", env=launch.env)
    load_before = load_average()
    server.start(cpus)

    def done(run: SideRun) -> SideRun:
        return replace(run, duration_s=time.perf_counter() - t0)

    try:
        try:
            startup_s = await server.wait_ready(_probe(spec, launch), STARTUP_TIMEOUT_S)
        except ServerFailed as e:
            code = server.proc.poll() if server.proc is not None else None
            if spec.extra_flags and _refused_flag(server.log_tail(), code):
                return done(
                    SideRun(
                        spec.id,
                        server.command,
                        None,
                        (),
                        load_before=load_before,
                        skipped=f"its server refused the side's flags: {server.log_tail(3).strip()}",
                    )
                )
            return done(SideRun(spec.id, server.command, None, (), str(e), load_before))
        assert server.pid is not None
        _log(f"{spec.id}: ready after {startup_s:.0f} s (pid {server.pid}); {len(points)} points planned")
        outcomes = await _measure_side(spec, points, launch, checkpoint, server.pid, config.passes)
        if server.proc is not None and server.proc.poll() is not None:
            return done(
                SideRun(
                    spec.id,
                    server.command,
                    startup_s,
                    _points(spec.id, outcomes),
                    f"the server exited during the run:\n{server.log_tail()}",
                    load_before,
                )
            )
        if extras is not None:
            await extras(server.pid, launch.target)
        return done(
            SideRun(
                spec.id,
                server.command,
                startup_s,
                _points(spec.id, outcomes),
                None,
                load_before,
                server.pid,
                connections=spec.connections,
            )
        )
    finally:
        await asyncio.to_thread(server.stop)


# ----------------------------------------------------------------------------- prompts


def _with_prompt_checks(runs: Sequence[SideRun]) -> list[SideRun]:
    """Per point, how many requests' prompt token counts differ from side (a)'s: the
    check that every side got the same prompts (same text, same media tokens)."""
    base = next((r for r in runs if r.side == "inprocess"), None)
    out = []
    for run in runs:
        if base is None or run.side == "inprocess":
            out.append(run)
            continue
        points = []
        for p in run.points:
            # The same pass: same prompts.
            a = next((q for q in base.passes(p.workload, p.concurrency) if q.pass_index == p.pass_index), None)
            mismatches = None
            if p.level is not None and a is not None and a.level is not None:
                expected = {r.index: r.prompt_tokens for r in a.level.requests if r.ok}
                mismatches = sum(
                    1 for r in p.level.requests if r.ok and r.index in expected and r.prompt_tokens != expected[r.index]
                )
            points.append(replace(p, prompt_mismatches=mismatches))
        out.append(replace(run, points=tuple(points)))
    return out


def _media_summary(points: Sequence[Point]) -> tuple[tuple[str, float], ...]:
    sizes: dict[str, list[int]] = {}
    for p in points:
        for r in p.measured:
            sizes.setdefault(r.kind, []).append(r.media_bytes)
    return tuple((k, sum(v) / len(v)) for k, v in sizes.items())


# ----------------------------------------------------------------------------- main


async def run_bench(
    config: BenchConfig,
    checkpoint: str,
    cpus: Sequence[int],
    work: Path,
    inprocess_args: dict[str, Any],
    *,
    ports: PortPool | None = None,
    metrics_ports: PortPool | None = None,
    baseline: Baseline | None = None,
) -> BenchResult:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    ports = ports or PortPool()
    metrics_ports = metrics_ports or PortPool()
    load_start = load_average()
    _log(f"load average at start: {load_start}; preparing prompts")
    points = await asyncio.to_thread(build_points, config)
    profile_points = await asyncio.to_thread(build_profile_points, config) if config.profile else ()
    videos: list[Any] = []
    upload: UploadResult | None = None
    if config.upload.enabled and "nanovl" in config.sides:
        from bench.upload import prepare_videos, upload_seeds

        _log(f"preparing {2 + 2 * config.upload.repeats} upload videos (cached under {work.parent / 'upload'})")
        videos = await asyncio.to_thread(
            prepare_videos, config.upload, upload_seeds(config.upload, config.seed), work.parent / "upload"
        )
    runs: list[SideRun] = []
    profiles: list[ProfileSummary] = []

    async def nanovl_extras(pid: int, target: str) -> None:
        nonlocal upload
        for p in profile_points:
            _log(f"nanovl: py-spy --native during an extra pass of {p.workload} c={p.concurrency}")
            path = work / f"nanovl-{p.workload}-c{p.concurrency}.speedscope.json"
            profiles.append(await _profile(p, pid, target, path))
        if videos:
            from bench.upload import measure_upload

            _log("nanovl: the chunked-upload case")
            upload = await measure_upload(config.upload, videos, target)

    for side in config.sides:
        spec = config.spec(side)
        side_points = [p for p in points if p.workload in config.workloads_for(side)]
        _log(f"{side}: starting ({sum(not p.warmup_only for p in side_points)} points planned + warm-ups)")
        if spec.kind == "inprocess":
            run = await _run_inprocess(side_points, checkpoint, inprocess_args, config.passes, cpus, work)
        else:
            run = await _run_server_side(
                spec,
                side_points,
                checkpoint,
                config,
                cpus,
                work,
                ports,
                metrics_ports,
                extras=nanovl_extras if side == "nanovl" else None,
            )
        if run.skipped:
            _log(f"{side}: skipped: {run.skipped}")
        elif run.error:
            _log(f"{side}: FAILED: {run.error.splitlines()[0]}")
        runs.append(run)
        _log(f"{side}: done")
    return BenchResult(
        config=config,
        machine=collect_machine(len(cpus)),
        started_at=started,
        duration_s=time.perf_counter() - t0,
        load_start=load_start,
        load_end=load_average(),
        checkpoint=checkpoint,
        engine_flags=tuple(config.engine.cli_flags()),
        inprocess_extra=tuple(
            sorted((k, repr(v)) for k, v in inprocess_args.items() if k not in config.engine.overrides())
        ),
        media=_media_summary(points),
        sides=tuple(_with_prompt_checks(runs)),
        profiles=tuple(profiles),
        upload=upload,
        baseline=baseline,
    )


def _levels(text: str) -> tuple[tuple[int, int], ...]:
    try:
        pairs = [item.split(":") for item in text.split(",") if item]
        return tuple((int(c), int(n)) for c, n in pairs)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CONCURRENCY:REQUESTS,..., got {text!r}") from None


def _passes(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    try:
        lo = int(low)
        return lo, int(high) if high else lo
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN or MIN:MAX, got {text!r}") from None


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x for x in text.split(",") if x)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="image only, c=1,4, 4 requests, sides inprocess,nanovl")
    p.add_argument("--sides", type=_csv, help=f"which sides, in order (default: {','.join(DEFAULT_SIDES)})")
    p.add_argument(
        "--nanovl-variant",
        action="append",
        default=[],
        metavar="ID=FLAGS",
        help="add a nanovl side nanovl-ID with extra `nanovl serve` flags, e.g. 'x4=--frontend-processes 4' "
        "(repeatable; it runs after the other sides unless --sides names it)",
    )
    p.add_argument("--workloads", type=_csv, help="subset of text,image,mixed")
    p.add_argument("--levels", type=_levels, help="CONCURRENCY:REQUESTS pairs, e.g. 1:8,8:32,32:96,128:256")
    p.add_argument("--max-tokens", type=int)
    p.add_argument(
        "--passes",
        type=_passes,
        metavar="MIN[:MAX]",
        help="measure every point MIN times, fresh prompts each, and up to MAX times while its two fastest "
        "passes disagree (default 2:4; 1:1 with --quick)",
    )
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="py-spy --native the nanovl server during extra passes of text c=8, text c=32, mixed c=8 "
        "(default: on, off with --quick)",
    )
    p.add_argument(
        "--upload",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the chunked-upload case (20 MiB video, StreamGenerate in 64 KiB chunks) on the nanovl side "
        "(default: on, off with --quick)",
    )
    p.add_argument("--upload-repeats", type=int, help="requests per upload variant (default 5; 2 with --quick)")
    p.add_argument(
        "--baseline",
        type=Path,
        help="a saved results.json: the report adds a before/after table of nanovl's frontend CPU per token",
    )
    p.add_argument("--ports", help="servers' ports from this range, LOW-HIGH (default: picked by the kernel)")
    p.add_argument("--metrics-ports", help="nanovl's --metrics-port from this range, LOW-HIGH (default: kernel)")
    p.add_argument(
        "--out", type=Path, help="report directory (default: docs/ for a full run, .cache/bench/quick/ for --quick)"
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rewrite the report, plots and JSON from the last run's saved results",
    )
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    overrides: dict[str, Any] = {}
    for name in ("workloads", "levels", "max_tokens"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.profile is not None:
        overrides["profile"] = args.profile
    variants = tuple(parse_variant(v, i) for i, v in enumerate(args.nanovl_variant))
    base = BenchConfig.quick_config() if args.quick else BenchConfig()
    if variants:
        overrides["variants"] = variants
    sides = args.sides or (base.sides + tuple(v.id for v in variants))
    overrides["sides"] = sides
    if args.passes is not None:
        low, high = args.passes
        overrides["passes"] = replace(base.passes, min_passes=low, max_passes=high)
    upload = base.upload
    if args.upload is not None:
        upload = replace(upload, enabled=args.upload)
    if args.upload_repeats is not None:
        upload = replace(upload, repeats=args.upload_repeats)
    overrides["upload"] = upload
    return replace(base, **overrides)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    # Pin the client (this process) to the last CPU before anything starts a thread; the
    # servers get every CPU back (bench.servers).
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[-1]})
    args = parse_args(argv)
    config = config_from_args(args)
    # SIGTERM as Ctrl-C: the run's finally blocks stop every server and child it started
    # (the default action would leave them running: verify-16).
    signal.signal(signal.SIGTERM, _interrupt)
    ports, metrics_ports = PortPool.parse(args.ports), PortPool.parse(args.metrics_ports)
    # Read before anything is written: the baseline may be the file this run replaces.
    baseline = load_baseline(args.baseline) if args.baseline is not None else None

    from bench.report import write_report
    from bench.servers import inprocess_overrides
    from model.tiny import cache_root, ensure_tiny_checkpoint
    from service.engine import apply_process_environment

    work = cache_root() / "bench" / ("quick" if config.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or (work if config.quick else REPO_ROOT / "docs")
    saved = work / "result.pkl"
    if args.report_only:
        if not saved.exists():
            _log(f"no saved results at {saved}: run the benchmark first")
            return 2
        result: BenchResult = pickle.loads(saved.read_bytes())
        if baseline is not None:
            result = replace(result, baseline=baseline)
    else:
        apply_process_environment(cache_root())
        checkpoint = str(ensure_tiny_checkpoint())
        overrides = inprocess_overrides(config.engine, checkpoint)
        try:
            result = event_loop.run(
                run_bench(
                    config,
                    checkpoint,
                    cpus,
                    work,
                    overrides,
                    ports=ports,
                    metrics_ports=metrics_ports,
                    baseline=baseline,
                )
            )
        except KeyboardInterrupt:
            _log("interrupted: every server this run started is stopped; nothing was written")
            return 130
        saved.write_bytes(pickle.dumps(result))
    doc = write_report(
        result, out / "benchmarks.md", out / "benchmarks", client_cpu=cpus[-1] if len(cpus) > 1 else None
    )
    write_json(result, out / "benchmarks" / "results.json")
    _log(f"wrote {doc} ({result.duration_s / 60:.1f} min)")
    failed = [r.side for r in result.sides if r.error]
    return 1 if failed or not result.sides else 0


if __name__ == "__main__":
    sys.exit(main())
