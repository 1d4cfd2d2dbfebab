"""The gRPC service end to end: real server, real socket, real engine."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from nanovl.client import AsyncInferenceClient, InferenceRpcError, Message, Part, Sampling
from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import inference_pb2_grpc as pb_grpc
from service.lifecycle import DRAINING
from service.server import INFERENCE, PROFILING, build_server
from tests import media_fixtures as mf
from tests.conftest import TEST_LIMITS, server_settings

SHORT = Sampling(max_tokens=6, temperature=0.0, ignore_eos=True)

MEDIA = {
    "text": lambda: [Part.text("Hello")],
    "image": lambda: [Part.image(mf.make_png(320, 240, seed=1)), Part.text("Describe.")],
    "video": lambda: [Part.video(mf.make_mp4(16, 128, 96, fps=8, seed=2), num_frames=4), Part.text("What?")],
    "audio": lambda: [Part.audio(mf.make_wav(2.0, 44100, 2, seed=3)), Part.text("Transcribe.")],
    "mixed": lambda: [
        Part.text("Compare "),
        Part.image(mf.make_jpeg(256, 256, seed=4)),
        Part.text(" and "),
        Part.audio(mf.make_flac(1.0, seed=5)),
        Part.text(" and "),
        Part.video(mf.make_webm(8, 64, 64, fps=4, seed=6), num_frames=2),
    ],
}


@pytest.fixture(scope="module")
async def client(grpc_target):
    c = AsyncInferenceClient(grpc_target, timeout=120)
    yield c
    await c.close()


async def _collect(call):
    events = []
    async for resp in call:
        events.append(resp)
    return events


async def test_every_modality_through_both_rpcs_counts_as_accounted(client, tiny_checkpoint):
    """Issue 14's matrix on the ``full`` variant (tests/matrix.py; the other variants run
    the same check on their own engines)."""
    from tests.conftest import TEST_MAX_MODEL_LEN
    from tests.matrix import check_every_modality_through_both_rpcs

    await check_every_modality_through_both_rpcs(client, tiny_checkpoint, TEST_MAX_MODEL_LEN)


@pytest.mark.parametrize("modality", list(MEDIA))
@pytest.mark.parametrize("upload", ["unary", "stream"])
async def test_each_modality_through_both_rpcs(client, modality, upload):
    result = await client.generate_text(MEDIA[modality](), sampling=SHORT, upload=upload, chunk_size=4096)
    assert result.usage.completion_tokens == SHORT.max_tokens
    assert len(result.token_ids) == SHORT.max_tokens
    by_modality = result.usage.prompt_tokens_by_modality
    total = by_modality.text + by_modality.image + by_modality.video + by_modality.audio
    assert total == result.usage.prompt_tokens
    for m in ("image", "video", "audio"):
        present = modality in (m, "mixed")
        assert (getattr(by_modality, m) > 0) == present, (m, by_modality)
    assert result.timings.ttft_s > 0 and result.timings.total_s >= result.timings.ttft_s
    if modality != "text":
        assert result.timings.decode_media_s > 0


async def test_both_rpcs_give_the_same_greedy_tokens(client):
    prompt = MEDIA["mixed"]()
    unary = await client.generate_text(prompt, sampling=SHORT, upload="unary")
    streamed = await client.generate_text(prompt, sampling=SHORT, upload="stream", chunk_size=1000)
    assert unary.token_ids == streamed.token_ids
    assert unary.usage.prompt_tokens == streamed.usage.prompt_tokens


async def test_logprobs_come_with_every_token(grpc_target):
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        req = pb.GenerateRequest(
            parts=[pb.ContentPart(text="logprobs please")],
            sampling=pb.SamplingOptions(max_tokens=4, ignore_eos=True, temperature=0.0, logprobs=2),
        )
        deltas = [
            r.delta
            for r in await _collect(pb_grpc.InferenceStub(channel).Generate(req, timeout=60))
            if r.HasField("delta")
        ]
    token_ids = [t for d in deltas for t in d.token_ids]
    entries = [e for d in deltas for e in d.logprobs]
    assert len(token_ids) == 4 and len(entries) == 4
    for token_id, entry in zip(token_ids, entries, strict=False):
        assert entry.token.token_id == token_id and entry.token.logprob <= 0.0
        assert len(entry.top) >= 2 and entry.top[0].rank == 1
        # Greedy: the sampled token is the most likely one.
        assert entry.top[0].token_id == token_id


async def test_detokenize_false_streams_the_same_token_ids_without_text(client):
    prompt = MEDIA["image"]()
    full = await client.generate_text(prompt, sampling=SHORT)
    ids_only = await client.generate_text(prompt, sampling=dataclasses.replace(SHORT, detokenize=False))
    assert ids_only.token_ids == full.token_ids and full.text
    assert ids_only.text == ""
    assert ids_only.usage.completion_tokens == full.usage.completion_tokens


async def test_detokenize_false_with_stop_strings_is_invalid_argument(client):
    with pytest.raises(InferenceRpcError) as err:
        await client.generate_text("hi", sampling=dataclasses.replace(SHORT, detokenize=False, stop=("x",)))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "detokenize" in err.value.details


async def test_chunked_upload_of_a_multi_megabyte_video(client, tmp_path):
    path = tmp_path / "big.mp4"
    path.write_bytes(mf.make_mp4(64, 640, 480, fps=24, seed=9, crf=10))
    assert path.stat().st_size > 6 * 1024 * 1024  # more than the server's 4 MiB message limit
    with pytest.raises(InferenceRpcError) as too_big:
        await client.generate_text([Part.video(path, num_frames=4)], sampling=SHORT, upload="unary")
    assert too_big.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    result = await client.generate_text(
        [Part.video(path, num_frames=4), Part.text("?")], sampling=SHORT, upload="stream", chunk_size=64 * 1024
    )
    assert result.usage.prompt_tokens_by_modality.video > 4 * 49
    assert result.timings.upload_s > 0


async def test_chat_messages_use_the_chat_template(client):
    chat = [Message.system("Be brief."), Message.user(Part.image(mf.make_png(64, 64)), "What is this?")]
    result = await client.generate_text(chat, sampling=SHORT)
    raw = await client.generate_text([Part.image(mf.make_png(64, 64)), Part.text("What is this?")], sampling=SHORT)
    # The template adds role markers around the same content.
    assert result.usage.prompt_tokens > raw.usage.prompt_tokens
    assert result.usage.prompt_tokens_by_modality.image == raw.usage.prompt_tokens_by_modality.image


async def test_model_info(client, engine):
    info = await client.get_model_info()
    assert info.max_model_len == engine.summary.max_model_len
    by_name = {m.modality: m for m in info.modalities}
    assert {m: by_name[m].max_items_per_prompt for m in TEST_LIMITS} == TEST_LIMITS
    assert "mp4" in by_name["video"].accepted_formats and "wav" in by_name["audio"].accepted_formats
    assert info.audio_sample_rate == 16000 and info.vllm_version


async def _wait_until_idle(engine, timeout_s=30.0):
    for _ in range(int(timeout_s / 0.05)):
        if engine.num_unfinished_requests() == 0:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_cancel_mid_stream_aborts_the_engine_request(grpc_target, engine):
    channel = grpc.aio.insecure_channel(grpc_target)
    stub = pb_grpc.InferenceStub(channel)
    req = pb.GenerateRequest(
        parts=[pb.ContentPart(text="count")], sampling=pb.SamplingOptions(max_tokens=2000, ignore_eos=True)
    )
    call = stub.Generate(req)
    deltas = 0
    async for resp in call:
        deltas += resp.HasField("delta")
        if deltas == 3:
            break
    assert engine.num_unfinished_requests() >= 1
    call.cancel()
    assert await _wait_until_idle(engine)
    await channel.close()


async def test_deadline_exceeded_aborts(grpc_target, engine):
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        req = pb.GenerateRequest(
            parts=[pb.ContentPart(text="go")], sampling=pb.SamplingOptions(max_tokens=2000, ignore_eos=True)
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _collect(stub.Generate(req, timeout=1.0))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await _wait_until_idle(engine)


def _req(*parts, **sampling):
    return pb.GenerateRequest(parts=list(parts), sampling=pb.SamplingOptions(max_tokens=2, **sampling))


def _image(data):
    return pb.ContentPart(image=pb.Image(data=data))


ERRORS = {
    "corrupt image": (_req(_image(b"\x89PNG not really")), grpc.StatusCode.INVALID_ARGUMENT, "image"),
    "unknown audio": (
        _req(pb.ContentPart(audio=pb.Audio(encoded=b"RIFF????garbage"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "audio",
    ),
    "truncated video": (
        _req(pb.ContentPart(video=pb.Video(encoded=mf.make_mp4(8, 64, 64, seed=1)[:600]))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "video",
    ),
    "bad sampling": (_req(pb.ContentPart(text="x"), top_p=1.5), grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
    "token id outside vocab": (
        _req(pb.ContentPart(text="x"), stop_token_ids=[10**6]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outside the vocabulary",
    ),
    "too many items": (
        _req(*[_image(mf.make_png(32, 32, seed=i)) for i in range(5)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "at most 4",
    ),
    "placeholder in text": (
        _req(pb.ContentPart(text="look <image> here")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "reserved string",
    ),
    "empty prompt": (pb.GenerateRequest(), grpc.StatusCode.INVALID_ARGUMENT, "exactly one of parts"),
    "too long": (
        _req(pb.ContentPart(text="y" * 2100)),
        grpc.StatusCode.OUT_OF_RANGE,
        # verify-14g L1: 128 tools made a one-line chat too long; the advice names them.
        "over this server's max_model_len of 2048 (prompts may use at most 2047 tokens); send fewer "
        "or smaller media items (fewer video frames, shorter audio, smaller images) or shorter text (the "
        "messages, and any tools or documents",
    ),
    "raw frames size": (
        _req(
            pb.ContentPart(
                video=pb.Video(raw_frames=pb.RawFrames(rgb24=b"\0" * 100, width=8, height=8, num_frames=2, fps=1))
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "384",
    ),
}


@pytest.mark.parametrize("name", list(ERRORS))
async def test_errors_have_precise_statuses(grpc_target, name):
    request, code, needle = ERRORS[name]
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _collect(pb_grpc.InferenceStub(channel).Generate(request, timeout=60))
    assert err.value.code() == code, err.value.details()
    assert needle in err.value.details()


def _header(*parts, sizes=None):
    declared = [pb.DeclaredPart(part=p) for p in parts]
    for d, size in zip(declared, sizes or [], strict=False):
        if size is not None:
            d.size_bytes = size
    return pb.GenerateChunk(header=pb.StreamGenerateHeader(parts=declared, sampling=pb.SamplingOptions(max_tokens=2)))


def _chunk(i, data, last):
    return pb.GenerateChunk(media=pb.MediaChunk(part_index=i, data=data, last=last))


END = pb.GenerateChunk(end=pb.End())
PNG = mf.make_png(48, 48)
# (messages, the client half-closes after them?, status, message fragment). Where a message
# itself breaks the protocol it is the last one sent and the stream is then held open: a
# client still writing after the server's verdict sees its own failed write instead.
STREAM_ERRORS = {
    "no header": ([_chunk(0, PNG, True)], False, grpc.StatusCode.INVALID_ARGUMENT, "must be a header"),
    "interleaved": (
        [_header(_image(b""), _image(b"")), _chunk(0, PNG[:10], False), _chunk(1, PNG, True)],
        False,
        grpc.StatusCode.INVALID_ARGUMENT,
        "contiguously",
    ),
    "no end": ([_header(_image(b"")), _chunk(0, PNG, True)], True, grpc.StatusCode.INVALID_ARGUMENT, "without an End"),
    "missing payload": ([_header(_image(b"")), END], True, grpc.StatusCode.INVALID_ARGUMENT, "no complete payload"),
    "declared size": (
        [_header(_image(b""), sizes=[5]), _chunk(0, PNG, True)],
        False,
        grpc.StatusCode.INVALID_ARGUMENT,
        "declared 5 bytes",
    ),
    "two headers": (
        [_header(pb.ContentPart(text="x")), _header(pb.ContentPart(text="x"))],
        False,
        grpc.StatusCode.INVALID_ARGUMENT,
        "unexpected header",
    ),
    # 22 x 3 MiB: the 22nd chunk crosses the test server's 64 MiB request limit.
    "over request bytes": (
        [_header(_image(b""))] + [_chunk(0, b"\0" * (3 << 20), False)] * 22,
        False,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "limit of",
    ),
}


@pytest.mark.parametrize("name", list(STREAM_ERRORS))
async def test_chunk_protocol_violations(grpc_target, name):
    messages, half_close, code, needle = STREAM_ERRORS[name]

    async def send():
        for m in messages:
            yield m
        if not half_close:
            await asyncio.Event().wait()  # cancelled when the call ends

    async with grpc.aio.insecure_channel(grpc_target, options=[("grpc.max_send_message_length", 8 << 20)]) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _collect(pb_grpc.InferenceStub(ch).StreamGenerate(send(), timeout=60))
    assert err.value.code() == code, err.value.details()
    assert needle in err.value.details()


async def test_client_keepalive_pings_while_the_server_is_silent_do_not_kill_the_call(grpc_target):
    """A client with aggressive keepalive pings through a stretch where the server writes
    nothing (here: it pauses its upload; in production: a queue wait or a long prefill).
    With gRPC Core's default server policy the pings earn GOAWAY(too_many_pings) and the
    call fails; the server's options must let it complete."""
    keepalive = [
        ("grpc.keepalive_time_ms", 100),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]

    async def send():
        yield _header(_image(b""))
        await asyncio.sleep(5.0)  # gRPC Core's default policy sends GOAWAY after about 3 s of this
        yield _chunk(0, PNG, True)
        yield END

    async with grpc.aio.insecure_channel(grpc_target, options=keepalive) as ch:
        responses = await _collect(pb_grpc.InferenceStub(ch).StreamGenerate(send(), timeout=60))
    assert responses[-1].final.usage.completion_tokens == 2


async def test_server_keeps_serving_after_errors(client):
    for _ in range(3):
        with pytest.raises(InferenceRpcError):
            await client.generate_text([Part.image(b"junk")], sampling=SHORT)
    assert (await client.generate_text("still here?", sampling=SHORT)).usage.completion_tokens == 6


async def test_a_rejected_prompt_does_not_poison_the_media_cache(client):
    """A prompt rejected after vLLM processed its media (too long) must not break the next
    request carrying the same media (vLLM's front-end cache then believes the engine has it)."""
    image = Part.image(mf.make_png(640, 480, seed=77))  # 639 tokens
    with pytest.raises(InferenceRpcError) as err:
        await client.generate_text([image, image, image, Part.text("z" * 200)], sampling=SHORT)
    assert err.value.code == grpc.StatusCode.OUT_OF_RANGE
    result = await client.generate_text([image, Part.text("again")], sampling=SHORT)
    assert result.usage.completion_tokens == SHORT.max_tokens


def _reflect(target: str) -> tuple[set[str], list[str]]:
    # grpcio-reflection's own client, through a sync channel (what grpcurl does).
    with grpc.insecure_channel(target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        file = db.FindFileContainingSymbol(INFERENCE)
        methods = [m.name for s in file.service for m in s.method]
    return services, methods


async def test_reflection_lists_the_services(grpc_target):
    # The sync client blocks: run it off the event loop that serves it.
    services, methods = await asyncio.to_thread(_reflect, grpc_target)
    assert {INFERENCE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    assert PROFILING not in services  # the operator surface is on the admin port
    assert {"Generate", "StreamGenerate", "GetModelInfo"} <= set(methods)


async def test_health_transitions_and_draining(engine):
    """A second server on the same engine: starting → serving → readiness withdrawn (still
    serving: what balancers see first) → draining (refusing) → stopped."""
    srv = await build_server(engine, server_settings(drain_grace_s=60))
    async with grpc.aio.insecure_channel(srv.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def status(service=INFERENCE):
            return (await health.Check(health_pb2.HealthCheckRequest(service=service))).status

        assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING  # starting
        assert await status("") == health_pb2.HealthCheckResponse.SERVING  # alive
        await srv.mark_serving()
        assert await status() == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.InferenceStub(channel)
        long = pb.GenerateRequest(
            parts=[pb.ContentPart(text="a")], sampling=pb.SamplingOptions(max_tokens=40, ignore_eos=True)
        )
        in_flight = asyncio.create_task(_collect(stub.Generate(long)))
        while srv.lifecycle.in_flight == 0:
            await asyncio.sleep(0.01)
        # A drain's first step (and SIGUSR1's): NOT_SERVING, but a call still gets served in full.
        await srv.withdraw_readiness()
        assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await status("") == health_pb2.HealthCheckResponse.SERVING
        assert srv.readiness().detail.startswith("draining") and srv.liveness().ok
        short = pb.GenerateRequest(parts=[pb.ContentPart(text="b")], sampling=pb.SamplingOptions(max_tokens=2))
        assert (await _collect(stub.Generate(short)))[-1].HasField("final")
        # The readiness grace counts from the withdrawal: 0 s left, so the drain refuses at once.
        drained = asyncio.create_task(srv.drain_and_stop(readiness_grace_s=0))
        while srv.lifecycle.state != DRAINING:
            await asyncio.sleep(0.01)
        assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _collect(stub.Generate(long))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        events = await in_flight  # accepted before draining: finishes completely
        assert events[-1].final.usage.completion_tokens == 40
        assert await drained is True


async def test_queue_full_is_resource_exhausted(engine):
    srv = await build_server(engine, server_settings(max_concurrent_requests=1))
    await srv.mark_serving()
    try:
        async with grpc.aio.insecure_channel(srv.target) as channel:
            stub = pb_grpc.InferenceStub(channel)
            long = pb.GenerateRequest(
                parts=[pb.ContentPart(text="a")], sampling=pb.SamplingOptions(max_tokens=60, ignore_eos=True)
            )
            first = asyncio.create_task(_collect(stub.Generate(long)))
            while srv.lifecycle.in_flight == 0:
                await asyncio.sleep(0.01)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _collect(stub.Generate(long))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 1 concurrent" in err.value.details()
            assert (await first)[-1].HasField("final")
    finally:
        await srv.stop()


async def test_64_concurrent_mixed_streams(engine):
    # 32 uploads at once from one address, as behind a balancer (every client is its
    # address): such a server runs with no per-address share (--max-uploads-per-peer 0).
    srv = await build_server(engine, server_settings(max_uploads_per_peer=0))
    await srv.mark_serving()
    kinds = list(MEDIA)
    prompts = [MEDIA[kinds[i % len(kinds)]]() for i in range(64)]
    try:
        async with AsyncInferenceClient(srv.target, timeout=120) as client:
            results = await asyncio.gather(
                *(
                    client.generate_text(
                        p,
                        sampling=Sampling(max_tokens=4, temperature=0.8, seed=i, ignore_eos=True),
                        upload="stream" if i % 2 else "unary",
                        chunk_size=8192,
                    )
                    for i, p in enumerate(prompts)
                )
            )
    finally:
        await srv.stop()
    assert all(r.usage.completion_tokens == 4 for r in results)
    assert len({r.request_id for r in results}) == 64
    assert await _wait_until_idle(engine)


async def test_one_address_gets_its_share_of_the_upload_budget(client):
    """The session server keeps the default share (--max-uploads-per-peer 16 of 64): the
    17th upload in progress from one address is refused with the flag named; the others
    finish whole."""
    video = MEDIA["video"]()
    calls = [
        client.generate_text(video, sampling=Sampling(max_tokens=2, temperature=0.0), upload="stream", chunk_size=1024)
        for _ in range(24)
    ]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, InferenceRpcError)]
    done = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(refused) + len(done) == 24, [o for o in outcomes if isinstance(o, BaseException) and o not in refused]
    assert all(e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-uploads-per-peer" in e.details for e in refused)
    assert all(r.usage.completion_tokens == 2 for r in done) and len(done) >= 16


async def test_prompt_logprobs_are_returned_one_per_prompt_token(grpc_target):
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        req = pb.GenerateRequest(
            parts=[pb.ContentPart(text="prompt logprobs please")],
            sampling=pb.SamplingOptions(max_tokens=2, ignore_eos=True, temperature=0.0, prompt_logprobs=3),
        )
        responses = await _collect(pb_grpc.InferenceStub(channel).Generate(req, timeout=60))
    final = responses[-1].final
    entries = list(final.prompt_logprobs)
    assert len(entries) == final.usage.prompt_tokens > 5
    assert not entries[0].HasField("token") and not entries[0].top  # the first token has no logprob
    for entry in entries[1:]:
        assert entry.token.logprob <= 0.0 and 3 <= len(entry.top) <= 4
        assert entry.top[0].rank == 1 and entry.token.rank >= 1
    # The byte-level tokenizer maps the prompt's bytes to these token ids, in order.
    assert "".join(e.token.text for e in entries[1:]) == "rompt logprobs please"


async def test_started_reports_what_the_model_received(client):
    vfr = mf.make_vfr_video(mf.VFR_TIMES_S, width=64, height=48)
    rotated = mf.make_oriented_video("mp4", "libx264", degrees=-90)
    prompt = [
        Part.image(mf.gray16_ramp_png()),
        Part.video(vfr, num_frames=8),
        Part.video(rotated, fps=8.0, max_frames=3),
        Part.audio(mf.with_wav_data_size(mf.make_wav(3.0, 16000, 1, seed=1), 0)),
        Part.text("?"),
    ]
    call = client.generate(prompt, sampling=SHORT)
    started = None
    async for event in call:
        if type(event).__name__ == "Started":
            started = event
    assert started is not None
    image, video, turned, audio = started.media
    assert [m.part_index for m in started.media] == [0, 1, 2, 3]
    assert image.kind == "image" and image.details["source_mode"] == "I;16"
    assert (image.details["width"], image.details["height"]) == (256, 32)
    assert video.details["frame_timestamps_s"] == pytest.approx([0, 29 / 30, 3, 4, 6, 7, 9, 11], abs=1e-3)
    assert video.details["frame_indices"] == [0, 29, 31, 32, 34, 35, 37, 39]
    assert (turned.details["width"], turned.details["height"], turned.details["rotation_degrees"]) == (64, 96, 90)
    # 8 fps would take all 4 frames; max_frames=3 takes 3 uniformly (0, 0.1875, 0.375 s → frames shown then).
    assert turned.details["frame_timestamps_s"] == pytest.approx([0.0, 0.125, 0.375])
    assert audio.details["num_samples"] == 48000 and audio.details["sample_rate"] == 16000
    assert "rotated 90°" in turned.describe() and "0.97" in video.describe()


async def test_video_sampling_controls_change_what_the_model_gets(client):
    clip = mf.make_mp4(48, 64, 48, fps=24, seed=3)  # 2 s
    by_fps = await client.generate_text([Part.video(clip, fps=2.0), Part.text("?")], sampling=SHORT)
    by_count = await client.generate_text([Part.video(clip, num_frames=2), Part.text("?")], sampling=SHORT)
    per_frame = (by_fps.usage.prompt_tokens_by_modality.video - by_count.usage.prompt_tokens_by_modality.video) / 2
    assert per_frame > 0  # 4 frames at 2 fps vs 2 frames: two more frames' tokens


async def test_model_info_reports_video_sampling_defaults(client):
    info = await client.get_model_info()
    video = next(m for m in info.modalities if m.modality == "video")
    assert video.default_num_frames == 8 and video.default_fps is None
    assert video.default_max_frames == video.max_num_frames
