"""Exact encoder sizing (``nanovl serve --exact-mm-sizing``) against vLLM's default sizing.

For each tiny checkpoint, ``max_model_len`` and sizing (vLLM's default; a declared typical
service; ``limits``, derived from nanovl's media limits), one engine start in compile mode
(``enforce_eager`` off: on CPU only then does vLLM run its start-up dummy profile), in a
fresh process, reporting:

- the encoder compute budget and encoder cache size vLLM built (tokens; from the worker's
  ``MultiModalBudget``), the per-item maxima, and what the start-up profile encodes;
- the dummy profile's encoder peak: the profile's own dummy batch encoded again after
  start-up under nanovl's tensor-allocation meter (``nanovl_replay_profile``: peak tensor
  bytes, pixel inputs included), and the worker process's peak RSS over the start-up
  (``getrusage``: model load, compilation and the profile together);
- start-up time (``AsyncLLM`` construction to a ready engine), wall and the worker's CPU.

Chunked prefill is on with ``max_num_batched_tokens`` 2048 (vLLM's CPU default for its
server): with chunked prefill off vLLM raises ``max_num_batched_tokens`` to
``max_model_len``, and the encoder budget, ``max(max_num_batched_tokens, largest
per-item maximum)``, is then the whole context whatever the per-item maxima. KV-cache blocks
gained need a GPU (the CPU KV cache is a fixed ``VLLM_CPU_KVCACHE_SPACE``).

    uv run --no-sync python -m bench.exact_sizing            # make bench-exact-sizing
    uv run --no-sync python -m bench.exact_sizing --variants full --lens 8192

Writes ``docs/benchmarks/exact_sizing.json`` and the table between the markers in
``docs/sizing.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

from bench.doc_tables import REPO, emit, run_child, write_section

RESULTS = REPO / "docs" / "benchmarks" / "exact_sizing.json"

BATCH_TOKENS = 2048
# A typical service's largest items: 32 frames at 2 fps, one minute of audio.
TYPICAL = "video=32x640x480@2,audio=60"
SIZINGS = {"default": None, "typical": TYPICAL, "limits": "limits"}
LIMITS = {"image": 1, "video": 1, "audio": 1}


@dataclass(frozen=True)
class Run:
    variant: str
    max_model_len: int
    sizing: str  # a key of SIZINGS
    setting: str  # the --exact-mm-sizing value ("" for default)
    max_tokens_per_item: dict[str, int]
    compute_budget_tokens: int
    cache_size_tokens: int
    profile_modality: str | None
    profile_items: int
    profile_tokens: int  # encoder embeddings the replayed dummy batch produced
    profile_peak_bytes: int  # replayed dummy batch: peak tensor bytes (inputs included)
    startup_peak_rss_bytes: int  # the worker process's peak RSS after start-up (getrusage)
    startup_s: float
    # CPU seconds the worker process (and compile workers it waited for) spent starting:
    # steadier than wall time on a shared machine. 0: not measured.
    startup_cpu_s: float = 0.0
    profile_encode_s: float = 0.0  # the replayed profile batch's encoder pass


async def _one(variant: str, max_model_len: int, sizing: str) -> Run:
    from model.item_maxima import parse
    from model.tiny import cache_root, ensure_tiny_checkpoint
    from service.engine import Engine, apply_process_environment, default_engine_args
    from service.media import DEFAULT_MEDIA_LIMITS

    apply_process_environment(cache_root())
    path = ensure_tiny_checkpoint(variant)
    config = json.loads((path / "config.json").read_text())
    has_audio = config.get("sound_config") is not None
    spec = SIZINGS[sizing]
    overrides: dict = {}
    if spec is not None:
        maxima = parse(
            spec,
            max_video_frames=DEFAULT_MEDIA_LIMITS.max_video_frames,
            max_audio_seconds=DEFAULT_MEDIA_LIMITS.max_audio_seconds,
            frame_side=int(config["force_image_size"]),
            supports_audio=has_audio,
        )
        overrides = maxima.hf_overrides()
    args = default_engine_args(
        str(path),
        max_model_len=max_model_len,
        enforce_eager=False,
        enable_chunked_prefill=True,
        max_num_batched_tokens=BATCH_TOKENS,
        limit_mm_per_prompt={m: n for m, n in LIMITS.items() if m != "audio" or has_audio},
        max_num_seqs=8,
        hf_overrides=overrides,
    )
    t0 = time.perf_counter()
    engine = await Engine.start(args, warmup=False)
    startup_s = time.perf_counter() - t0
    try:
        # Before the replay below adds its own: the worker's (where the profile ran) peak
        # RSS and CPU time over the start-up.
        (usage, *_) = await engine.llm.collective_rpc("nanovl_process_usage")
        (facts, *_) = await engine.llm.collective_rpc("nanovl_budget_facts")
        (replay, *_) = await engine.llm.collective_rpc("nanovl_replay_profile")
    finally:
        engine.shutdown()
    enc = facts["encoder"]
    return Run(
        variant=variant,
        max_model_len=max_model_len,
        sizing=sizing,
        setting=engine.summary.item_maxima.spec() if engine.summary.item_maxima else "",
        max_tokens_per_item={k: int(v) for k, v in enc["max_tokens_per_item"].items()},
        compute_budget_tokens=int(enc["compute_budget_tokens"]),
        cache_size_tokens=int(enc["cache_size_tokens"]),
        profile_modality=replay["modality"],
        profile_items=int(replay["items"]),
        profile_tokens=int(replay["tokens"]),
        profile_peak_bytes=int(replay["peak_bytes"]),
        startup_peak_rss_bytes=int(usage["peak_rss_bytes"]),
        startup_s=startup_s,
        startup_cpu_s=float(usage["cpu_s"]),
        profile_encode_s=float(replay["seconds"]),
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def table(runs: list[Run]) -> str:
    """The markdown table for docs/sizing.md: default vs exact, per checkpoint and length."""
    head = (
        "| checkpoint | max_model_len | sizing | video / audio tokens per item | encoder budget | encoder cache "
        "| profiled | profile encoder peak (MiB) | start-up peak RSS (MiB) | start-up (s) | start-up CPU (s) |\n"
        "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|\n"
    )
    rows = []
    for r in runs:
        per_item = f"{r.max_tokens_per_item.get('video', 0):,} / {r.max_tokens_per_item.get('audio', 0):,}"
        label = r.sizing if not r.setting else f"{r.sizing} (`{r.setting}`)"
        profiled = (
            f"{r.profile_items} {r.profile_modality} ({r.profile_tokens:,} tokens)" if r.profile_modality else "–"
        )
        cpu = f"{r.startup_cpu_s:.1f}" if r.startup_cpu_s else "–"  # older results lack it
        rows.append(
            f"| {r.variant} | {r.max_model_len:,} | {label} | {per_item} | {r.compute_budget_tokens:,} "
            f"| {r.cache_size_tokens:,} | {profiled} | {_mib(r.profile_peak_bytes)} | {_mib(r.startup_peak_rss_bytes)} "
            f"| {r.startup_s:.1f} | {cpu} |"
        )
    return head + "\n".join(rows) + "\n"


def write(runs: list[Run]) -> None:
    write_section("exact-sizing-bench", table(runs), RESULTS, [asdict(r) for r in runs])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.exact_sizing", description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=["full"])
    p.add_argument("--lens", nargs="+", type=int, default=[8192, 32768])
    p.add_argument("--sizings", nargs="+", default=["default", "typical"], choices=list(SIZINGS))
    p.add_argument("--timeout-s", type=float, default=900, help="per engine start")
    p.add_argument("--one", nargs=3, metavar=("VARIANT", "LEN", "SIZING"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        import asyncio

        emit(asdict(asyncio.run(_one(args.one[0], int(args.one[1]), args.one[2]))))
        return 0

    runs = [Run(**r) for r in json.loads(RESULTS.read_text())] if RESULTS.exists() else []
    # The tiny checkpoints stop at 8192 positions; vLLM checks max_model_len against that.
    env = {**os.environ, "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"}
    for variant in args.variants:
        for length in args.lens:
            for sizing in args.sizings:
                print(f"{variant} max_model_len={length} {sizing} ...", file=sys.stderr, flush=True)
                result = run_child(
                    "bench.exact_sizing", ["--one", variant, str(length), sizing], timeout_s=args.timeout_s, env=env
                )
                if result is None:
                    return 1
                run = Run(**result)
                runs = [r for r in runs if (r.variant, r.max_model_len, r.sizing) != (variant, length, sizing)]
                runs.append(run)
                runs.sort(key=lambda r: (r.variant, r.max_model_len, list(SIZINGS).index(r.sizing)))
                write(runs)
                print(table([run]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
