"""Throughput with nanovl's tracing on (100% sampling, OTLP/gRPC export) vs off, side by side.

One engine, two servers on it: one without a tracer provider, one exporting every span
over OTLP/gRPC to a collector stand-in running in another process. The load tester (in
its own process) alternates between them, off/on/off/on…, so drift on a noisy machine
hits both sides alike.

    uv run --no-sync python -m bench.tracing_overhead [--rounds 3] [--requests 48]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
from pathlib import Path

from nanovl import event_loop


def _receiver(queue, stop) -> None:
    from tests.otlp_receiver import OtlpReceiver

    with OtlpReceiver() as receiver:
        queue.put(receiver.endpoint)
        stop.wait()
        queue.put(len(receiver.spans))


def _load(target: str, requests: int, concurrency: int, queue) -> None:
    from loadtest import LoadTestConfig, run_load_test
    from loadtest.mix import Mix

    result = run_load_test(
        LoadTestConfig(
            target=target,
            concurrency=(concurrency,),
            requests=requests,
            mix=Mix.parse("text=0.5,image=0.5"),
            max_tokens=32,
            warmup_requests=2,
        )
    )
    overall = result.levels[0].overall
    queue.put(
        {
            "tokens_per_s": overall.output_tokens_per_s,
            "errors": overall.failed,
            "ttft_p50_ms": overall.ttft.p50 * 1000 if overall.ttft.p50 else None,
        }
    )


async def _run_client(ctx, target: str, args) -> dict:
    queue = ctx.Queue()
    proc = ctx.Process(target=_load, args=(target, args.requests, args.concurrency, queue))
    proc.start()
    while proc.is_alive() and queue.empty():
        await asyncio.sleep(0.05)  # the servers live on this loop
    proc.join()
    return queue.get()


async def main(args: argparse.Namespace) -> dict:
    from model.tiny import cache_root, ensure_tiny_checkpoint
    from profiling.telemetry import tracing
    from service.engine import Engine, apply_process_environment, default_engine_args
    from service.server import build_server
    from service.settings import ServerSettings

    apply_process_environment(cache_root())
    ctx = mp.get_context("spawn")
    endpoints, stop = ctx.Queue(), ctx.Event()
    receiver = ctx.Process(target=_receiver, args=(endpoints, stop))
    receiver.start()
    endpoint = endpoints.get(timeout=60)
    engine = await Engine.start(default_engine_args(str(ensure_tiny_checkpoint()), max_model_len=4096))
    provider = tracing.setup_tracing(
        tracing.TracingSettings.from_env(exporter="otlp", endpoint=endpoint, protocol="grpc", sampler_ratio=1.0)
    )
    servers = {
        "off": await build_server(engine, ServerSettings(port=0)),
        "on": await build_server(engine, ServerSettings(port=0), tracer_provider=provider),
    }
    for srv in servers.values():
        await srv.mark_serving()
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for side in ("off", "on"):
            runs[side].append(await _run_client(ctx, servers[side].target, args))
    for srv in servers.values():
        await srv.stop()
    tracing.shutdown_tracing(provider)
    engine.shutdown()
    stop.set()
    spans = endpoints.get(timeout=30)
    receiver.join()
    med = {side: statistics.median(r["tokens_per_s"] for r in rs) for side, rs in runs.items()}
    return {
        "runs": runs,
        "median_tokens_per_s": med,
        "ratio_on_over_off": med["on"] / med["off"],
        "spans_exported": spans,
        "errors": sum(r["errors"] for rs in runs.values() for r in rs),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/tracing_overhead.json"))
    a = parser.parse_args()
    res = event_loop.run(main(a))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=2))
