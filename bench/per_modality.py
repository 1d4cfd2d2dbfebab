"""Per-modality TTFT and decode speed: ``AsyncLLM`` in-process vs nanovl over gRPC.

One engine; first measured in-process, then through a nanovl server on the same engine
with the client in a separate process (so client work does not share the server's
event loop). Sequential requests (concurrency 1), greedy, fixed output length.

    uv run --no-sync python -m bench.per_modality [--requests 5] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from nanovl import event_loop

WORKLOADS = ("text", "image", "video", "audio", "mixed")


def media_parts(kind: str):
    """Client-side parts (encoded bytes, as users send them)."""
    from loadtest.media import make_mp4, make_png, make_wav
    from nanovl.client import Part

    text = Part.text("Describe what you see and hear.")
    image = Part.image(make_png(640, 480, seed=1))
    video = Part.video(make_mp4(32, 320, 240, fps=8, seed=2), num_frames=8)
    audio = Part.audio(make_wav(3.0, 16000, 1, seed=3))
    return {
        "text": [text],
        "image": [image, text],
        "video": [video, text],
        "audio": [audio, text],
        "mixed": [image, video, audio, text],
    }[kind]


@dataclass(frozen=True)
class Sample:
    ttft_s: float
    decode_tps: float
    e2e_s: float


def _summary(samples: list[Sample]) -> dict[str, float]:
    return {
        "ttft_ms_p50": 1000 * statistics.median(s.ttft_s for s in samples),
        "decode_tokens_per_s": statistics.median(s.decode_tps for s in samples),
        "e2e_ms_p50": 1000 * statistics.median(s.e2e_s for s in samples),
    }


async def _in_process(engine, kind: str, n: int, max_tokens: int) -> list[Sample]:
    """Same bytes as the gRPC side, decoded with the same code, then straight into AsyncLLM."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from nanovl.client import build_generate_request
    from service.part_decoding import decode_part
    from service.request import assemble_prompt, from_generate_request
    from service.settings import ServerSettings

    settings = ServerSettings()
    req = build_generate_request(media_parts(kind))
    params = SamplingParams(
        max_tokens=max_tokens, temperature=0.0, ignore_eos=True, output_kind=RequestOutputKind.DELTA
    )
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        valid = from_generate_request(req, settings=settings, limits=engine.summary.limits, vocab_size=1 << 20)
        decoded = {
            i: decode_part(
                valid.parts[i],
                default_video_frames=8,
                audio_sample_rate=engine.summary.audio_sample_rate,
                limits=settings.media_limits,
            )
            for i in valid.media_indices
        }
        prompt = assemble_prompt(valid, decoded, chat=None)
        first = last = None
        tokens = 0
        async for o in engine.generate(prompt, params, request_id=uuid.uuid4().hex):
            if o.outputs[0].token_ids:
                now = time.perf_counter()
                first = first or now
                last = now
                tokens += len(o.outputs[0].token_ids)
        out.append(Sample(first - t0, (tokens - 1) / (last - first), last - t0))
    return out


def _grpc_client(target: str, kind: str, n: int, max_tokens: int, queue) -> None:
    """Runs in a child process."""
    from nanovl.client import Delta, InferenceClient, Sampling

    parts = media_parts(kind)
    sampling = Sampling(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    samples = []
    with InferenceClient(target) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            first = last = None
            tokens = 0
            with client.generate(parts, sampling=sampling) as call:
                for event in call:
                    if isinstance(event, Delta) and event.token_ids:
                        now = time.perf_counter()
                        first = first or now
                        last = now
                        tokens += len(event.token_ids)
            samples.append(Sample(first - t0, (tokens - 1) / (last - first), last - t0))
    queue.put([asdict(s) for s in samples])


async def main(args: argparse.Namespace) -> dict:
    from model.tiny import cache_root, ensure_tiny_checkpoint
    from service.engine import Engine, apply_process_environment, default_engine_args
    from service.server import build_server
    from service.settings import ServerSettings

    apply_process_environment(cache_root())
    t0 = time.perf_counter()
    engine = await Engine.start(default_engine_args(str(ensure_tiny_checkpoint()), max_model_len=4096), warmup=False)
    start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    await engine.warmup()
    warmup_s = time.perf_counter() - t0
    results: dict = {"engine_start_s": start_s, "warmup_s": warmup_s, "in_process": {}, "grpc": {}}
    for kind in WORKLOADS:
        await _in_process(engine, kind, 1, args.max_tokens)  # warm this path
        results["in_process"][kind] = _summary(await _in_process(engine, kind, args.requests, args.max_tokens))
    server = await build_server(engine, ServerSettings(port=0))
    await server.mark_serving()
    ctx = mp.get_context("spawn")
    for kind in WORKLOADS:
        queue = ctx.Queue()
        proc = ctx.Process(target=_grpc_client, args=(server.target, kind, args.requests + 1, args.max_tokens, queue))
        proc.start()
        while proc.is_alive() and queue.empty():
            await asyncio.sleep(0.05)  # keep serving while the client runs
        samples = [Sample(**s) for s in queue.get()][1:]  # first one warms the path
        proc.join()
        results["grpc"][kind] = _summary(samples)
    me = psutil.Process()
    results["rss_gib_engine_processes"] = sum(p.memory_info().rss for p in [me, *me.children(recursive=True)]) / 2**30
    await server.stop()
    engine.shutdown()
    return results


def render(results: dict) -> str:
    lines = [
        f"engine start {results['engine_start_s']:.1f} s, warm-up {results['warmup_s']:.1f} s, "
        f"RSS of all engine processes {results['rss_gib_engine_processes']:.2f} GiB",
        "",
        "| modality | in-process TTFT p50 | gRPC TTFT p50 | Δ TTFT | in-process decode tok/s | "
        "gRPC decode tok/s | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in WORKLOADS:
        a, b = results["in_process"][kind], results["grpc"][kind]
        lines.append(
            f"| {kind} | {a['ttft_ms_p50']:.1f} ms | {b['ttft_ms_p50']:.1f} ms | "
            f"{b['ttft_ms_p50'] - a['ttft_ms_p50']:+.1f} ms | {a['decode_tokens_per_s']:.1f} | "
            f"{b['decode_tokens_per_s']:.1f} | {b['decode_tokens_per_s'] / a['decode_tokens_per_s']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/per_modality.json"))
    a = parser.parse_args()
    res = event_loop.run(main(a))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print(render(res))
