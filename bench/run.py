"""``make bench``: the four-way benchmark, in one run on this machine.

::

    python -m bench.run            # full: text, image, mixed at c=1,8,32; sides a, b, c, d
    python -m bench.run --quick    # image at c=1,4, 4 requests; sides a, b (for iterating)

Sides run one after another (never two engines at once). The benchmark's own process is
the client of sides (b), (c) and (d); it pins itself to the last CPU before it starts any
thread, and starts every server with all CPUs (see :mod:`bench.servers`). Writes the
markdown report, ``results.json`` and the plots (full run: ``docs/benchmarks.md`` and
``docs/benchmarks/``; quick run: ``.cache/bench/quick/``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.config import ALL_SIDES, BenchConfig, Side
from bench.machine import collect_machine, load_average
from bench.plan import Point, build_points, with_target
from bench.results import BenchResult, PointResult, ProfileSummary, SideRun, write_json
from bench.servers import REPO_ROOT, ServerFailed, ServerProcess, free_port, grpc_health_ready, http_ready, server_argv
from bench.sides import PointOutcome
from nanovl import event_loop

__all__ = ["main", "parse_args", "run_bench"]

STARTUP_TIMEOUT_S = 900.0  # engine start on a busy 2-core machine can take minutes
INPROCESS_TIMEOUT_S = 3600.0
NANOVL_READY_SERVICE = "nanovl.v1.Inference"


def _log(msg: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- sides


async def _run_inprocess(
    points: Sequence[Point], checkpoint: str, overrides: dict[str, Any], cpus: Sequence[int], work: Path
) -> SideRun:
    from bench.sides.inprocess import InprocessJob, InprocessRun

    job_path, out_path = work / "inprocess-job.pkl", work / "inprocess-out.pkl"
    out_path.unlink(missing_ok=True)
    job_path.write_bytes(pickle.dumps(InprocessJob(tuple(points), checkpoint, overrides)))
    child = ServerProcess(
        "inprocess", ["-m", "bench.sides.inprocess", str(job_path), str(out_path)], work / "logs" / "inprocess.log"
    )
    load_before = load_average()
    child.start(cpus)
    try:
        await child.wait_exit(INPROCESS_TIMEOUT_S)
    except ServerFailed as e:
        return SideRun("inprocess", child.command, None, (), str(e), load_before)
    finally:
        child.stop()
    if not out_path.exists():
        return SideRun(
            "inprocess",
            child.command,
            None,
            (),
            f"the in-process run wrote no result:\n{child.log_tail()}",
            load_before,
        )
    run: InprocessRun = pickle.loads(out_path.read_bytes())
    error = None if run.error is None else f"{run.error}\n{child.log_tail()}"
    return SideRun("inprocess", child.command, run.startup_s, _points("inprocess", run.outcomes), error, load_before)


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
        for o in measured
    )


async def _measure(side: Side, points: Sequence[Point], port: int, checkpoint: str, pid: int) -> list[PointOutcome]:
    target = f"127.0.0.1:{port}"
    if side == "nanovl":
        from bench.sides.nanovl import measure_nanovl

        return await measure_nanovl(points, target, pid)
    if side == "vllm-http":
        from bench.sides.vllm_http import measure_vllm_http

        return await measure_vllm_http(points, f"http://{target}", pid)
    from bench.sides.vllm_grpc import measure_vllm_grpc

    return await measure_vllm_grpc(points, target, checkpoint, pid)


def _probe(side: Side, port: int):  # noqa: ANN202 - a zero-argument coroutine factory
    target = f"127.0.0.1:{port}"
    if side == "nanovl":
        return lambda: grpc_health_ready(target, NANOVL_READY_SERVICE)
    if side == "vllm-grpc":
        from bench.sides.vllm_grpc import VLLM_GRPC_SERVICE

        return lambda: grpc_health_ready(target, VLLM_GRPC_SERVICE)
    return lambda: http_ready(f"http://{target}")


def _weakest_point(points: Sequence[Point], inprocess: SideRun | None, nanovl: Sequence[PointOutcome]) -> Point:
    """The point where nanovl is furthest below in-process throughput (the last point
    when there is nothing to compare)."""
    best: tuple[float, Point] | None = None
    for p, o in zip(points, nanovl, strict=True):
        if p.warmup_only:
            continue
        a = inprocess.point(p.workload, p.concurrency) if inprocess is not None else None
        if o.level is None or a is None or a.stats is None or not a.stats.output_tokens_per_s:
            continue
        ratio = o.level.overall.output_tokens_per_s / a.stats.output_tokens_per_s
        if best is None or ratio < best[0]:
            best = (ratio, p)
    return best[1] if best is not None else [p for p in points if not p.warmup_only][-1]


async def _profile_nanovl(point: Point, pid: int, port: int, work: Path, out_path: Path) -> ProfileSummary:
    from bench.profile import PySpy, summarize_speedscope
    from loadtest.runner import run_load_test_async

    spy = PySpy(pid, out_path)
    # A fresh seed: the pass must not replay prompts the server has seen.
    config = replace(with_target(point, f"127.0.0.1:{port}"), seed=point.config.seed + 7919)
    try:
        spy.start()
        await asyncio.sleep(1.0)  # let py-spy attach
        await run_load_test_async(config)
    except Exception as e:
        spy.stop()
        return ProfileSummary(point.workload, point.concurrency, 0.0, str(out_path), (), (), f"{type(e).__name__}: {e}")
    try:
        await asyncio.to_thread(spy.stop)
        samples, packages, functions = summarize_speedscope(out_path)
    except Exception as e:
        return ProfileSummary(point.workload, point.concurrency, 0.0, str(out_path), (), (), f"{type(e).__name__}: {e}")
    return ProfileSummary(point.workload, point.concurrency, samples, str(out_path), packages, functions)


async def _run_server_side(
    side: Side,
    points: Sequence[Point],
    checkpoint: str,
    config: BenchConfig,
    cpus: Sequence[int],
    work: Path,
    inprocess: SideRun | None,
) -> tuple[SideRun, ProfileSummary | None]:
    port = free_port()
    server = ServerProcess(
        side, server_argv(side, checkpoint=checkpoint, port=port, engine=config.engine), work / "logs" / f"{side}.log"
    )
    load_before = load_average()
    server.start(cpus)
    profile = None
    try:
        try:
            startup_s = await server.wait_ready(_probe(side, port), STARTUP_TIMEOUT_S)
        except ServerFailed as e:
            return SideRun(side, server.command, None, (), str(e), load_before), None
        _log(f"{side}: ready after {startup_s:.0f} s (pid {server.pid}); running {len(points)} points")
        assert server.pid is not None
        outcomes = await _measure(side, points, port, checkpoint, server.pid)
        if server.proc is not None and server.proc.poll() is not None:
            return SideRun(
                side,
                server.command,
                startup_s,
                _points(side, outcomes),
                f"the server exited during the run:\n{server.log_tail()}",
                load_before,
            ), None
        if side == "nanovl" and config.profile and server.pid is not None:
            target = _weakest_point(points, inprocess, outcomes)
            _log(f"nanovl: py-spy during an extra pass of {target.workload} c={target.concurrency}")
            profile = await _profile_nanovl(target, server.pid, port, work, work / "nanovl.speedscope.json")
        return SideRun(side, server.command, startup_s, _points(side, outcomes), None, load_before, server.pid), profile
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
    config: BenchConfig, checkpoint: str, cpus: Sequence[int], work: Path, inprocess_args: dict[str, Any]
) -> BenchResult:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    load_start = load_average()
    _log(f"load average at start: {load_start}; preparing prompts")
    points = await asyncio.to_thread(build_points, config)
    runs: list[SideRun] = []
    profile = None
    for side in config.sides:
        side_points = [p for p in points if p.workload in config.workloads_for(side)]
        _log(f"{side}: starting ({sum(not p.warmup_only for p in side_points)} points + warm-ups)")
        if side == "inprocess":
            run = await _run_inprocess(side_points, checkpoint, inprocess_args, cpus, work)
        else:
            inprocess = next((r for r in runs if r.side == "inprocess"), None)
            run, side_profile = await _run_server_side(side, side_points, checkpoint, config, cpus, work, inprocess)
            profile = profile or side_profile
        if run.error:
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
        profile=profile,
    )


def _levels(text: str) -> tuple[tuple[int, int], ...]:
    try:
        pairs = [item.split(":") for item in text.split(",") if item]
        return tuple((int(c), int(n)) for c, n in pairs)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CONCURRENCY:REQUESTS,..., got {text!r}") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="image only, c=1,4, 4 requests, sides inprocess,nanovl")
    p.add_argument(
        "--sides", type=lambda s: tuple(x for x in s.split(",") if x), help=f"subset of {','.join(ALL_SIDES)}"
    )
    p.add_argument("--workloads", type=lambda s: tuple(x for x in s.split(",") if x), help="subset of text,image,mixed")
    p.add_argument("--levels", type=_levels, help="CONCURRENCY:REQUESTS pairs, e.g. 1:8,8:32,32:64")
    p.add_argument("--max-tokens", type=int)
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="py-spy the nanovl server during an extra pass of its weakest point (default: on, off with --quick)",
    )
    p.add_argument(
        "--passes",
        type=int,
        help="measure every point this many times, fresh prompts each; the "
        "report shows the fastest pass and lists all (default: 2; 1 with --quick)",
    )
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
    overrides = {}
    for name in ("sides", "workloads", "levels", "max_tokens", "passes"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.profile is not None:
        overrides["profile"] = args.profile
    return BenchConfig.quick_config(**overrides) if args.quick else BenchConfig(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    # Pin the client (this process) to the last CPU before anything starts a thread; the
    # servers get every CPU back (bench.servers).
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[-1]})
    args = parse_args(argv)
    config = config_from_args(args)

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
    else:
        apply_process_environment(cache_root())
        checkpoint = str(ensure_tiny_checkpoint())
        overrides = inprocess_overrides(config.engine, checkpoint)
        result = event_loop.run(run_bench(config, checkpoint, cpus, work, overrides))
        saved.write_bytes(pickle.dumps(result))
    doc = write_report(
        result, out / "benchmarks.md", out / "benchmarks", client_cpu=cpus[-1] if len(cpus) > 1 else None
    )
    write_json(result, out / "benchmarks" / "results.json")
    _log(f"wrote {doc}")
    failed = [r.side for r in result.sides if r.error]
    return 1 if failed or not result.sides else 0


if __name__ == "__main__":
    sys.exit(main())
