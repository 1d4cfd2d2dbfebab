"""What decoding in worker processes costs: one media item decoded in a thread of this
process (as nanovl did before ``service.decode_workers``) vs in a decode worker, side by
side, interleaved, same bytes.

The difference is the price of a decoder crash failing one request instead of the
server: the request's bytes copied to the worker and the decoded frames or samples
copied back (through shared memory above ``service.decode_workers.OUT_OF_BAND_BYTES``),
and a pipe's round trip. Reported as medians and their ratio per item; written to
``docs/benchmarks/decode_isolation.json``.

    uv run --no-sync python -m bench.decode_isolation [--runs 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from nanovl.v1 import inference_pb2 as pb
from service import media
from service.decode_workers import DecodeWorkers
from service.part_decoding import decode_part

KWARGS = {"default_video_frames": 8, "audio_sample_rate": 16000, "limits": media.DEFAULT_MEDIA_LIMITS}


def _items() -> dict[str, pb.ContentPart]:
    from loadtest.media import make_jpeg, make_mp4, make_wav

    return {
        "image JPEG 1024x768": pb.ContentPart(image=pb.Image(data=make_jpeg(1024, 768, seed=1))),
        "image JPEG 3000x2000": pb.ContentPart(image=pb.Image(data=make_jpeg(3000, 2000, seed=2))),
        "video MP4 64f 640x480, 8 sampled": pb.ContentPart(
            video=pb.Video(encoded=make_mp4(64, 640, 480, fps=24, seed=3), num_frames=8)
        ),
        "video MP4 120f 1280x720, 32 sampled": pb.ContentPart(
            video=pb.Video(encoded=make_mp4(120, 1280, 720, fps=30, seed=4), num_frames=32)
        ),
        "audio WAV 10 s 44.1 kHz stereo": pb.ContentPart(audio=pb.Audio(encoded=make_wav(10.0, 44100, channels=2))),
    }


def _decoded_bytes(item) -> int:
    """Bytes of what the model receives: arrays' and images' pixels, samples."""
    if isinstance(item, (tuple, list)):
        return sum(_decoded_bytes(x) for x in item)
    if isinstance(item, dict):
        return sum(_decoded_bytes(x) for x in item.values())
    if hasattr(item, "getbands"):  # a PIL image
        return item.width * item.height * len(item.getbands())
    return int(getattr(item, "nbytes", 0))


async def _measure(runs: int) -> list[dict]:
    workers = DecodeWorkers(1, timeout_s=120)
    await workers.start()
    rows = []
    try:
        for name, part in _items().items():
            in_thread, in_worker = [], []
            for i in range(runs + 1):  # the first of each is a warm-up
                for side, sink in ((0, in_thread), (1, in_worker)) if i % 2 else ((1, in_worker), (0, in_thread)):
                    start = time.perf_counter()
                    if side == 0:
                        decoded = await asyncio.to_thread(decode_part, part, **KWARGS)
                    else:
                        decoded = await workers.run(decode_part, part, **KWARGS)
                    if i:
                        sink.append(time.perf_counter() - start)
            thread_ms = statistics.median(in_thread) * 1000
            worker_ms = statistics.median(in_worker) * 1000
            rows.append(
                {
                    "item": name,
                    "request_bytes": part.ByteSize(),
                    "decoded_bytes": _decoded_bytes(decoded.part.item),
                    "thread_ms": round(thread_ms, 2),
                    "worker_ms": round(worker_ms, 2),
                    "added_ms": round(worker_ms - thread_ms, 2),
                    "ratio": round(worker_ms / thread_ms, 3),
                }
            )
            print(
                f"{name:38} {part.ByteSize() / 1e6:7.2f} MB in {_decoded_bytes(decoded.part.item) / 1e6:7.2f} MB out  "
                f"thread {thread_ms:8.2f} ms  worker {worker_ms:8.2f} ms  {worker_ms / thread_ms:5.2f}x",
                flush=True,
            )
    finally:
        workers.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=15, help="timed decodes per item and side (interleaved)")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks/decode_isolation.json"))
    args = p.parse_args()
    rows = asyncio.run(_measure(args.runs))
    args.out.write_text(json.dumps({"runs": args.runs, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
