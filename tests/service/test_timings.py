"""``Final.timings`` mean what inference.proto says: the relations between the fields hold
for every modality and both RPCs, and StreamGenerate's upload overlaps media decoding
exactly as documented."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from nanovl.client import AsyncInferenceClient, Part, Sampling
from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import inference_pb2_grpc as pb_grpc
from tests import media_fixtures as mf

SHORT = Sampling(max_tokens=4, temperature=0.0, ignore_eos=True)
# Clock granularity and rounding: every relation may be off by this much.
EPS = 0.002

PROMPTS = {
    "text": lambda: [Part.text("Hello")],
    "image": lambda: [Part.image(mf.make_png(320, 240, seed=11)), Part.text("Describe.")],
    "video": lambda: [Part.video(mf.make_mp4(16, 128, 96, fps=8, seed=12), num_frames=4), Part.text("What?")],
    "audio": lambda: [Part.audio(mf.make_wav(1.0, 16000, 1, seed=13)), Part.text("Transcribe.")],
}


def check_relations(t, *, streamed: bool, media: bool) -> None:
    """The relations inference.proto's Timings comment promises."""
    for name in ("queue_s", "ttft_s", "total_s", "prefill_s", "decode_s", "decode_media_s", "upload_s", "preprocess_s"):
        assert getattr(t, name) >= 0.0, name
    assert t.ttft_s > 0 and t.prefill_s > 0 and t.preprocess_s > 0
    assert (t.decode_media_s > 0) == media
    engine = t.queue_s + t.prefill_s
    if streamed:
        assert t.upload_s + t.ttft_s <= t.total_s + EPS
        assert t.preprocess_s + engine <= t.ttft_s + EPS
        assert t.upload_s + t.preprocess_s + engine + t.decode_s <= t.total_s + EPS
        assert t.decode_media_s <= t.upload_s + t.ttft_s + EPS
    else:
        assert t.upload_s == 0.0
        assert t.decode_media_s + t.preprocess_s + engine <= t.ttft_s + EPS
        assert t.ttft_s <= t.total_s
        assert t.decode_media_s + t.preprocess_s + engine + t.decode_s <= t.total_s + EPS


@pytest.fixture(scope="module")
async def client(grpc_target):
    c = AsyncInferenceClient(grpc_target, timeout=120)
    yield c
    await c.close()


@pytest.mark.parametrize("modality", list(PROMPTS))
@pytest.mark.parametrize("upload", ["unary", "stream"])
async def test_timings_add_up(client, modality, upload):
    result = await client.generate_text(PROMPTS[modality](), sampling=SHORT, upload=upload, chunk_size=4096)
    check_relations(result.timings, streamed=upload == "stream", media=modality != "text")


async def test_stream_generate_decodes_during_the_upload_and_counts_ttft_from_end(grpc_target):
    """Two images with a pause between them: the first decodes while the client is still
    uploading, so its decoding lies inside upload_s, and ttft_s starts at End."""
    pause_s = 0.5
    first, second = mf.make_png(320, 240, seed=21), mf.make_png(320, 240, seed=22)

    async def chunks():
        header = pb.StreamGenerateHeader(
            parts=[
                pb.DeclaredPart(part=pb.ContentPart(image=pb.Image())),
                pb.DeclaredPart(part=pb.ContentPart(image=pb.Image())),
                pb.DeclaredPart(part=pb.ContentPart(text="compare")),
            ],
            sampling=pb.SamplingOptions(max_tokens=2, ignore_eos=True, temperature=0.0),
        )
        yield pb.GenerateChunk(header=header)
        yield pb.GenerateChunk(media=pb.MediaChunk(part_index=0, data=first, last=True))
        await asyncio.sleep(pause_s)  # part 0 decodes meanwhile
        yield pb.GenerateChunk(media=pb.MediaChunk(part_index=1, data=second, last=True))
        yield pb.GenerateChunk(end=pb.End())

    async with grpc.aio.insecure_channel(grpc_target) as channel:
        responses = [r async for r in pb_grpc.InferenceStub(channel).StreamGenerate(chunks(), timeout=120)]
    t = responses[-1].final.timings
    check_relations(t, streamed=True, media=True)
    # The pause is upload time, not time to first token: TTFT starts at End.
    assert t.upload_s >= pause_s - EPS
    assert t.ttft_s <= t.total_s - t.upload_s + EPS
