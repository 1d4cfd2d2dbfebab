"""The encoder memory model (``profiling/sizing/memory_model.py``) against measurement.

For each tiny checkpoint, one engine (eager mode) in a fresh process runs a grid of
``RunDummyProfile`` entries (one modality, ``count`` items of one size: vLLM's processor,
then the model's ``embed_multimodal`` the way the model runner calls it, metered in the
worker) and mixed prompts (several modalities, encoded the way the model runner encodes a
prompt's items: modality group after modality group, earlier groups' embeddings kept).
Each row sets the measured peak beside the model's prediction and the error.

    uv run --no-sync python -m bench.memory_model          # make bench-memory-model
    uv run --no-sync python -m bench.memory_model --variants full

Writes ``docs/benchmarks/memory_model.json`` and the table between the markers in
``docs/sizing.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

from bench.doc_tables import REPO, emit, run_child, write_section

RESULTS = REPO / "docs" / "benchmarks" / "memory_model.json"
MAX_MODEL_LEN = 8192

# (modality, count, size): image WxH, video FRAMESxWxH, audio seconds.
GRIDS: dict[str, list[tuple[str, int, str]]] = {
    "full": [
        ("image", 1, "224x224"),
        ("image", 1, "640x480"),
        ("image", 2, "640x480"),
        ("image", 3, "500x300"),
        ("image", 4, "448x224"),
        ("image", 8, "1024x768"),
        ("image", 12, "1024x768"),  # 156 tiles: two RADIO forwards
        ("video", 1, "8x320x240"),
        ("video", 2, "8x320x240"),
        ("video", 4, "8x640x360"),
        ("video", 1, "32x320x240"),
        ("video", 1, "128x320x240"),
        ("video", 1, "129x320x240"),
        ("video", 2, "100x320x240"),
        ("video", 1, "160x320x240"),
        ("audio", 1, "3"),
        ("audio", 3, "7"),
        ("audio", 2, "10"),
        ("audio", 1, "30"),
        ("audio", 4, "30"),
        ("audio", 1, "45"),
        ("audio", 1, "120"),
    ],
    "dynamic": [
        ("image", 1, "224x224"),
        ("image", 1, "640x480"),
        ("image", 3, "640x480"),
        ("image", 2, "1920x1080"),
        ("image", 6, "320x240"),
        ("image", 1, "100x900"),
        ("video", 2, "8x320x240"),
        ("audio", 1, "20"),
    ],
    "omni-v3": [
        ("image", 2, "640x480"),
        ("video", 1, "8x320x240"),
        ("video", 1, "9x640x360"),
        ("video", 2, "9x640x360"),
        ("video", 1, "64x320x240"),
        ("video", 1, "256x320x240"),  # two 128-frame forwards (the media limit: 256 frames)
        ("audio", 2, "20"),
        ("audio", 1, "90"),
    ],
}
# Mixed prompts: lists of (modality, count, size) encoded together.
MIXES: dict[str, list[list[tuple[str, int, str]]]] = {
    "full": [
        [("image", 2, "640x480"), ("video", 1, "8x320x240"), ("audio", 1, "10")],
        [("image", 1, "1024x768"), ("video", 2, "16x320x240"), ("audio", 2, "30")],
        [("video", 1, "64x320x240"), ("audio", 4, "45")],
    ],
    "dynamic": [[("image", 3, "640x480"), ("audio", 1, "10")]],
    "omni-v3": [[("image", 1, "640x480"), ("video", 2, "8x320x240"), ("audio", 1, "20")]],
}


@dataclass(frozen=True)
class Row:
    variant: str
    items: str  # e.g. "2 x video 8x320x240" or a mix joined by " + "
    tokens: int
    measured_bytes: int
    predicted_bytes: int
    entries: list[tuple[str, int, str]]  # (modality, count, size) of the prompt

    @property
    def error(self) -> float:
        return (self.predicted_bytes - self.measured_bytes) / self.measured_bytes


def _items(modality: str, count: int, size: str):
    from nanovl.media_specs import parse_dims
    from profiling.sizing.budget import AudioItems, ImageItems, VideoItems

    if modality == "image":
        w, h = parse_dims(size, 2, "image")
        return ImageItems(count, w, h)
    if modality == "video":
        n, w, h = parse_dims(size, 3, "video")
        return VideoItems(count, n, w, h)
    return AudioItems(count, float(size))


async def _measure(variant: str) -> list[Row]:
    from model.tiny import cache_root, ensure_tiny_checkpoint
    from profiling.sizing.dummy import DummyProfiler
    from service.engine import Engine, apply_process_environment, default_engine_args

    apply_process_environment(cache_root())
    path = ensure_tiny_checkpoint(variant)
    has_audio = json.loads((path / "config.json").read_text()).get("sound_config") is not None
    limits = {"image": 16, "video": 8, **({"audio": 8} if has_audio else {})}
    args = default_engine_args(str(path), max_model_len=MAX_MODEL_LEN, limit_mm_per_prompt=limits, max_num_seqs=8)
    engine = await Engine.start(args, warmup=False)
    rows: list[Row] = []
    try:
        profiler = DummyProfiler(engine, args)
        for modality, count, size in GRIDS.get(variant, []):
            # run_mix: a prompt of one entry, without RunDummyProfile's encoder-cache check
            # (the largest videos here take more than an 8192-token cache admits).
            r = await profiler.run_mix([_items(modality, count, size)])
            label = f"{count} x {modality} {size}"
            entry = [(modality, count, size)]
            rows.append(Row(variant, label, r.tokens, r.peak_memory_increase_bytes, r.predicted_memory_bytes, entry))
            print(rows[-1], file=sys.stderr, flush=True)
        for mix in MIXES.get(variant, []):
            r = await profiler.run_mix([_items(*entry) for entry in mix])
            label = " + ".join(f"{c} x {m} {s}" for m, c, s in mix)
            rows.append(Row(variant, label, r.tokens, r.peak_memory_increase_bytes, r.predicted_memory_bytes, mix))
            print(rows[-1], file=sys.stderr, flush=True)
    finally:
        engine.shutdown()
    return rows


def table(rows: list[Row]) -> str:
    head = (
        "| checkpoint | items (one prompt) | encoder tokens | measured (MiB) | predicted (MiB) | error |\n"
        "|---|---|---:|---:|---:|---:|\n"
    )
    body = "\n".join(
        f"| {r.variant} | {r.items} | {r.tokens:,} | {r.measured_bytes / 2**20:,.2f} | "
        f"{r.predicted_bytes / 2**20:,.2f} | {r.error * 100:+.1f} % |"
        for r in rows
    )
    worst = max((abs(r.error) for r in rows), default=0.0)
    return head + body + f"\n\n{len(rows)} rows; largest error {worst * 100:.1f} %.\n"


def write(rows: list[Row]) -> None:
    write_section("memory-model", table(rows), RESULTS, [asdict(r) for r in rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=["full", "dynamic", "omni-v3"])
    p.add_argument("--timeout-s", type=float, default=900, help="per engine")
    p.add_argument("--one", metavar="VARIANT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        import asyncio

        emit([asdict(r) for r in asyncio.run(_measure(args.one))])
        return 0
    rows = [Row(**r) for r in json.loads(RESULTS.read_text())] if RESULTS.exists() else []
    for variant in args.variants:
        print(f"{variant} ...", file=sys.stderr, flush=True)
        result = run_child("bench.memory_model", ["--one", variant], timeout_s=args.timeout_s)
        if result is None:
            return 1
        rows = [r for r in rows if r.variant != variant] + [Row(**r) for r in result]
        rows.sort(key=lambda r: list(GRIDS).index(r.variant) if r.variant in GRIDS else 99)
        write(rows)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
