"""Unit tests of the client library: request building (parts, StreamGenerate chunking,
sampling), response conversion, and the transport behaviour (chunked upload, cancellation,
deadlines, interceptors) against a small in-process fake servicer. No engine."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest
import pytest_asyncio

from nanovl.client import (
    AsyncInferenceClient,
    ChatTemplate,
    Delta,
    Final,
    FinishReason,
    InferenceClient,
    InferenceRpcError,
    Message,
    Modality,
    Part,
    Prompt,
    Sampling,
    Started,
    StructuredOutput,
    build_generate_request,
    collect_result,
    event_from_proto,
    iter_stream_chunks,
)
from nanovl.errors import InvalidArgument, NanovlError
from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import inference_pb2_grpc as pb_grpc

RNG = np.random.default_rng(1234)


def _random_bytes(n: int) -> bytes:
    return RNG.integers(0, 256, size=n, dtype=np.uint8).tobytes()


# ------------------------------------------------------------------ a reference reassembler


def reassemble(chunks: Iterable[pb.GenerateChunk]) -> pb.GenerateRequest:
    """What a server must do with StreamGenerate messages, enforcing the documented order:
    header first; each media part's chunks contiguous, in declaration order, ending with
    `last`; then End. Written independently of the client so it checks it."""
    it = iter(chunks)
    first = next(it)
    assert first.WhichOneof("kind") == "header"
    header = first.header
    declared = [d for d in header.parts] or [d for m in header.messages for d in m.parts]
    media = [i for i, d in enumerate(declared) if d.part.WhichOneof("kind") != "text"]
    payloads: dict[int, bytearray] = {}
    expected = iter(media)
    current: int | None = None
    ended = False
    for msg in it:
        assert not ended, "messages after End"
        kind = msg.WhichOneof("kind")
        if kind == "end":
            assert current is None, "End before the current part's last chunk"
            ended = True
            continue
        assert kind == "media", f"unexpected {kind} after the header"
        c = msg.media
        if current is None:
            current = next(expected)
            payloads[current] = bytearray()
        assert c.part_index == current, "chunks of different parts interleaved or out of order"
        assert c.data or c.last, "an empty chunk that is not last"
        payloads[current] += c.data
        if c.last:
            current = None
    assert ended, "no End"
    assert next(expected, None) is None, "declared media parts never sent"

    def fill(d: pb.DeclaredPart, index: int) -> pb.ContentPart:
        part = pb.ContentPart()
        part.CopyFrom(d.part)
        if index not in payloads:
            return part
        data = bytes(payloads[index])
        if d.HasField("size_bytes"):
            assert d.size_bytes == len(data), "declared size differs from what was sent"
        kind = part.WhichOneof("kind")
        if kind == "image":
            assert part.image.data == b""
            part.image.data = data
        elif kind == "video":
            if part.video.WhichOneof("source") == "raw_frames":
                assert part.video.raw_frames.rgb24 == b""
                part.video.raw_frames.rgb24 = data
            else:
                assert part.video.encoded == b""
                part.video.encoded = data
        else:
            if part.audio.WhichOneof("source") == "pcm":
                assert part.audio.pcm.data == b""
                part.audio.pcm.data = data
            else:
                assert part.audio.encoded == b""
                part.audio.encoded = data
        return part

    req = pb.GenerateRequest()
    if header.HasField("request_id"):
        req.request_id = header.request_id
    for name in ("sampling", "chat_template", "tool_choice"):
        if header.HasField(name):
            getattr(req, name).CopyFrom(getattr(header, name))
    req.tools.extend(header.tools)
    if header.parts:
        req.parts.extend(fill(d, i) for i, d in enumerate(header.parts))
    index = 0
    for m in header.messages:
        out = req.messages.add(role=m.role, tool_call_id=m.tool_call_id, reasoning_text=m.reasoning_text)
        out.tool_calls.extend(m.tool_calls)
        for d in m.parts:
            out.parts.append(fill(d, index))
            index += 1
    return req


@pytest.fixture
def media(tmp_path: Path) -> dict[str, Part]:
    video_file = tmp_path / "clip.mp4"
    video_file.write_bytes(_random_bytes(5003))
    frames = RNG.integers(0, 256, size=(3, 4, 6, 3), dtype=np.uint8)
    pcm = (RNG.standard_normal((800, 2)) * 1000).astype(np.int16)
    return {
        "image": Part.image(_random_bytes(2500), format="png"),
        "video_file": Part.video(video_file, num_frames=4),
        "frames": Part.video_frames(frames, fps=2.5, num_frames=2),
        "pcm": Part.pcm(pcm, sample_rate=22050),
        "audio": Part.audio(_random_bytes(999), format="wav"),
    }


# ------------------------------------------------------------------ chunking


@pytest.mark.parametrize("chunk_size", [1, 999, 1000, 4096, 1 << 20])
def test_stream_chunks_reassemble_to_the_unary_request(media: dict[str, Part], chunk_size: int) -> None:
    prompt = ["Describe:", media["image"], media["video_file"], "and", media["frames"], media["pcm"], media["audio"]]
    sampling = Sampling(temperature=0.0, max_tokens=7)
    chunks = list(iter_stream_chunks(prompt, chunk_size=chunk_size, sampling=sampling, request_id="r1"))
    assert reassemble(chunks) == build_generate_request(prompt, sampling=sampling, request_id="r1")

    # Every chunk respects the size, and each part is split into the fewest chunks.
    media_chunks = [c.media for c in chunks if c.WhichOneof("kind") == "media"]
    assert all(0 < len(c.data) <= chunk_size for c in media_chunks)
    for index, part in enumerate(Prompt.of(prompt).flat_parts()):
        n = sum(1 for c in media_chunks if c.part_index == index)
        assert n == (math.ceil(part.size_bytes / chunk_size) if part.is_media else 0)


def test_stream_chunks_number_parts_across_chat_messages(media: dict[str, Part]) -> None:
    prompt = [
        Message.system("Be brief."),
        Message.user(media["image"], "then", media["audio"]),
        Message.assistant("Sure."),
        Message.user(media["video_file"]),
    ]
    chat = ChatTemplate(add_generation_prompt=True, kwargs={"enable_thinking": False})
    chunks = list(iter_stream_chunks(prompt, chunk_size=700, chat_template=chat))
    indices = sorted({c.media.part_index for c in chunks if c.WhichOneof("kind") == "media"})
    # Flattened numbering: system text 0, image 1, text 2, audio 3, assistant text 4, video 5.
    assert indices == [1, 3, 5]
    req = reassemble(chunks)
    assert req == build_generate_request(prompt, chat_template=chat)
    assert req.chat_template.chat_template_kwargs["enable_thinking"] is False
    assert [m.role for m in req.messages] == ["system", "user", "assistant", "user"]


def test_header_declares_parts_without_payloads(media: dict[str, Part]) -> None:
    prompt = ["hi", media["image"], media["video_file"], media["frames"], media["pcm"], media["audio"]]
    header = next(iter_stream_chunks(prompt)).header
    text, image, video, frames, pcm, audio = header.parts
    assert text.part.text == "hi" and not text.HasField("size_bytes")
    assert image.part.image.data == b"" and image.part.image.format == "png" and image.size_bytes == 2500
    assert video.part.video.WhichOneof("source") == "encoded"  # empty, but the oneof is set
    assert video.part.video.num_frames == 4 and video.size_bytes == 5003
    rf = frames.part.video.raw_frames
    assert (rf.num_frames, rf.height, rf.width, rf.fps, rf.rgb24) == (3, 4, 6, 2.5, b"")
    assert frames.size_bytes == 3 * 4 * 6 * 3 and frames.part.video.num_frames == 2
    p = pcm.part.audio.pcm
    assert (p.encoding, p.sample_rate, p.channels, p.data) == (pb.PCM_ENCODING_S16LE, 22050, 2, b"")
    assert pcm.size_bytes == 800 * 2 * 2
    assert audio.part.audio.WhichOneof("source") == "encoded" and audio.size_bytes == 999


def test_file_parts_are_read_lazily_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(b"x" * 100)
    part = Part.audio(path)
    chunks = iter_stream_chunks([part], chunk_size=30)
    next(chunks)  # the header is built from the size captured at construction
    path.write_bytes(b"y" * 150)  # the file changes before its bytes are sent
    with pytest.raises(InvalidArgument, match="changed while being sent"):
        list(chunks)


def test_raw_media_payloads_are_exact() -> None:
    frames = RNG.integers(0, 256, size=(2, 3, 5, 3), dtype=np.uint8)
    assert Part.video_frames(frames, fps=1).read_payload() == frames.tobytes()
    by_bytes = Part.video_frames(frames.tobytes(), fps=1, width=5, height=3)
    assert by_bytes.raw_frames == Part.video_frames(frames, fps=1).raw_frames
    wave = RNG.standard_normal(64).astype(np.float32)
    p = Part.pcm(wave, sample_rate=16000)
    assert p.pcm_spec is not None and (p.pcm_spec.encoding, p.pcm_spec.channels) == ("f32le", 1)
    assert np.array_equal(np.frombuffer(p.read_payload(), dtype="<f4"), wave)
    # Big-endian input is converted, not sent as-is.
    assert Part.pcm(wave.astype(">f4"), sample_rate=16000).read_payload() == p.read_payload()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda tmp: Part.image(tmp / "missing.png"), "cannot read"),
        (lambda tmp: Part.image(tmp), "not a regular file"),
        (lambda tmp: Part.image(b""), "empty"),
        (lambda tmp: Part.video_frames(b"\0" * 10, fps=1, width=2, height=2), "whole number"),
        (lambda tmp: Part.video_frames(np.zeros((2, 2, 2), np.uint8), fps=1), r"\[T, H, W, 3\]"),
        (lambda tmp: Part.video_frames(np.zeros((1, 2, 2, 3), np.uint8), fps=0), "fps"),
        (lambda tmp: Part.pcm(np.zeros(4, np.float64), sample_rate=16000), "int16 or float32"),
        (lambda tmp: Part.pcm(b"\0" * 3, sample_rate=16000, encoding="s16le"), "whole number"),
        (lambda tmp: Part.pcm(b"\0" * 4, sample_rate=16000), "encoding"),
        (lambda tmp: Prompt.of([]), "empty"),
        (lambda tmp: Prompt.of([Message.user("a"), "b"]), "not both"),
        (lambda tmp: Prompt.of([1]), "str or Part"),
        (lambda tmp: iter_stream_chunks("hi", chunk_size=0), "chunk_size"),
    ],
)
def test_invalid_prompts_fail_before_sending(tmp_path: Path, build, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        build(tmp_path)


# ------------------------------------------------------------------ sampling


def test_sampling_unset_fields_stay_unset() -> None:
    msg = Sampling().to_proto()
    assert msg == pb.SamplingOptions()
    for name in ("temperature", "top_p", "top_k", "max_tokens", "seed", "logprobs", "skip_special_tokens"):
        assert not msg.HasField(name)


def test_sampling_conversion_keeps_explicit_zeros_and_lists() -> None:
    s = Sampling(
        temperature=0.0,
        top_k=-1,
        max_tokens=32,
        min_tokens=0,
        seed=-5,
        ignore_eos=False,
        logprobs=0,
        stop="END",  # type: ignore[arg-type]  # a bare string is one stop string
        stop_token_ids=(2, 3),
        logit_bias={7: 1.5},
        bad_words=("x",),
        structured_output=StructuredOutput.json({"type": "object"}, disable_any_whitespace=True),
    )
    msg = s.to_proto()
    assert msg.HasField("temperature") and msg.temperature == 0.0
    assert msg.HasField("min_tokens") and msg.HasField("ignore_eos") and msg.HasField("logprobs")
    assert (msg.top_k, msg.max_tokens, msg.seed) == (-1, 32, -5)
    assert list(msg.stop) == ["END"] and list(msg.stop_token_ids) == [2, 3]
    assert dict(msg.logit_bias) == {7: 1.5} and list(msg.bad_words) == ["x"]
    so = msg.structured_output
    assert so.WhichOneof("constraint") == "json_schema" and json.loads(so.json_schema) == {"type": "object"}
    assert so.disable_any_whitespace
    assert not msg.HasField("top_p")


@pytest.mark.parametrize(
    ("constraint", "field", "value"),
    [
        (StructuredOutput.regex("[a-z]+"), "regex", "[a-z]+"),
        (StructuredOutput.grammar("root ::= 'a'"), "grammar", "root ::= 'a'"),
        (StructuredOutput.json_object(), "json_object", True),
    ],
)
def test_structured_output_constraints(constraint: StructuredOutput, field: str, value: object) -> None:
    msg = constraint.to_proto()
    assert msg.WhichOneof("constraint") == field and getattr(msg, field) == value


def test_structured_output_choice() -> None:
    msg = StructuredOutput.choice(["yes", "no"]).to_proto()
    assert msg.WhichOneof("constraint") == "choice" and list(msg.choice.choices) == ["yes", "no"]


@pytest.mark.parametrize("bad", [Sampling(max_tokens=-1), Sampling(stop_token_ids=(-3,)), Sampling(logprobs=-1)])
def test_sampling_out_of_range_is_invalid_argument(bad: Sampling) -> None:
    with pytest.raises(InvalidArgument, match="sampling"):
        bad.to_proto()


# ------------------------------------------------------------------ responses


def _responses(text: str = "hello world", request_id: str = "rid") -> list[pb.GenerateResponse]:
    out = [pb.GenerateResponse(started=pb.Started(request_id=request_id))]
    for i, word in enumerate(text.split(" ")):
        piece = word if i == 0 else " " + word
        lp = pb.TokenLogprobs(token=pb.TokenLogprob(token_id=i, text=piece, logprob=-0.5, rank=1))
        out.append(pb.GenerateResponse(delta=pb.Delta(text=piece, token_ids=[i], logprobs=[lp])))
    final = pb.Final(
        finish_reason=pb.FINISH_REASON_STOP,
        stop_string="\n",
        request_id=request_id,
        usage=pb.Usage(prompt_tokens=5, completion_tokens=2, prompt_tokens_by_modality=pb.ModalityTokens(text=5)),
        timings=pb.Timings(ttft_s=0.25, total_s=0.5),
    )
    out.append(pb.GenerateResponse(final=final))
    return out


def test_events_fold_into_a_result() -> None:
    events = [event_from_proto(r) for r in _responses()]
    assert isinstance(events[0], Started) and events[0].prompt_tokens_by_modality is None
    assert all(isinstance(e, Delta) for e in events[1:-1])
    result = collect_result(events)
    assert result.text == "hello world" and result.token_ids == (0, 1)
    assert result.finish_reason is FinishReason.STOP and result.stop_reason == "\n"
    assert result.usage.prompt_tokens_by_modality.text == 5 and result.usage.completion_tokens == 2
    assert result.timings.ttft_s == 0.25 and result.request_id == "rid"
    assert [lp.token.rank for lp in result.logprobs if lp.token] == [1, 1]


def test_stop_token_reason_and_missing_rank() -> None:
    final = event_from_proto(
        pb.GenerateResponse(
            final=pb.Final(
                finish_reason=pb.FINISH_REASON_LENGTH,
                stop_token_id=2,
                prompt_logprobs=[pb.TokenLogprobs(), pb.TokenLogprobs(token=pb.TokenLogprob(token_id=3))],
            )
        )
    )
    assert isinstance(final, Final)
    assert final.finish_reason is FinishReason.LENGTH and final.stop_reason == 2
    assert final.prompt_logprobs[0].token is None
    assert final.prompt_logprobs[1].token is not None and final.prompt_logprobs[1].token.rank is None


def test_stream_without_final_is_an_error() -> None:
    with pytest.raises(NanovlError, match="without a Final"):
        collect_result([event_from_proto(r) for r in _responses()[:-1]])


# ------------------------------------------------------------------ transport (fake servicer)


class FakeInference(pb_grpc.InferenceServicer):
    """Echoes what it received: the text is a JSON summary of the request."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.metadata: list[tuple[str, str]] = []

    async def _respond(self, req: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> AsyncIterator:
        self.metadata = [(k, v) for k, v in context.invocation_metadata() if k.startswith("x-")]
        parts = list(req.parts) or [p for m in req.messages for p in m.parts]
        summary = []
        for p in parts:
            kind = p.WhichOneof("kind")
            if kind == "text":
                summary.append(["text", p.text])
            else:
                if kind == "image":
                    payload = p.image.data
                elif kind == "video":
                    payload = p.video.encoded or p.video.raw_frames.rgb24
                else:
                    payload = p.audio.encoded or p.audio.pcm.data
                summary.append([kind, hashlib.sha256(payload).hexdigest()])
        rid = req.request_id or "server-id"
        yield pb.GenerateResponse(started=pb.Started(request_id=rid))
        if req.sampling.ignore_eos:  # "generate forever" until cancelled
            while True:
                yield pb.GenerateResponse(delta=pb.Delta(text=".", token_ids=[1]))
                await asyncio.sleep(0.01)
        yield pb.GenerateResponse(delta=pb.Delta(text=json.dumps(summary), token_ids=[1, 2]))
        yield pb.GenerateResponse(
            final=pb.Final(finish_reason=pb.FINISH_REASON_STOP, request_id=rid, usage=pb.Usage(completion_tokens=2))
        )

    async def Generate(self, request, context):
        try:
            async for r in self._respond(request, context):
                yield r
        except (asyncio.CancelledError, GeneratorExit):
            # The server stops a cancelled RPC's handler by cancelling its task or, when a
            # write finds the client gone, by closing the generator.
            self.cancelled.set()
            raise

    async def StreamGenerate(self, request_iterator, context):
        try:
            chunks = [c async for c in request_iterator]
            async for r in self._respond(reassemble(chunks), context):
                yield r
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled.set()
            raise

    async def GetModelInfo(self, request, context):
        await asyncio.sleep(float(dict(context.invocation_metadata()).get("x-delay", "0")))
        return pb.ModelInfo(
            model_name="tiny",
            max_model_len=2048,
            modalities=[pb.ModalityInfo(modality=pb.MODALITY_VIDEO, enabled=True, max_num_frames=32)],
        )


@pytest_asyncio.fixture(scope="module")
async def fake_server() -> AsyncIterator[tuple[str, FakeInference]]:
    server = grpc.aio.server()  # default 4 MiB receive limit, as a real server might have
    servicer = FakeInference()
    pb_grpc.add_InferenceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", servicer
    await server.stop(None)


def _digest(part: Part) -> str:
    return hashlib.sha256(part.read_payload()).hexdigest()


async def test_unary_and_streamed_upload_deliver_the_same_bytes(fake_server, media: dict[str, Part]) -> None:
    target, _ = fake_server
    prompt = ["look", media["image"], media["video_file"], media["frames"], media["pcm"]]
    expected = [["text", "look"], *([p.kind, _digest(p)] for p in prompt[1:])]
    async with AsyncInferenceClient(target) as client:
        unary = await client.generate_text(prompt, upload="unary", request_id="u1")
        streamed = await client.generate_text(prompt, upload="stream", chunk_size=1000)
    assert json.loads(unary.text) == expected == json.loads(streamed.text)
    assert unary.request_id == "u1" and streamed.request_id == "server-id"
    assert unary.finish_reason is FinishReason.STOP and streamed.usage.completion_tokens == 2


async def test_large_media_needs_and_gets_the_streamed_upload(fake_server, tmp_path: Path) -> None:
    target, _ = fake_server
    big = tmp_path / "big.mp4"
    big.write_bytes(_random_bytes(5 << 20))  # over the server's 4 MiB message limit
    part = Part.video(big)
    async with AsyncInferenceClient(target) as client:
        with pytest.raises(InferenceRpcError) as err:
            await client.generate_text([part], upload="unary")
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        result = await client.generate_text([part])  # auto: streams because it is big
    assert json.loads(result.text) == [["video", _digest(part)]]


async def test_leaving_the_stream_cancels_the_rpc(fake_server) -> None:
    target, servicer = fake_server
    servicer.cancelled.clear()
    async with AsyncInferenceClient(target) as client:
        async with client.generate("go", sampling=Sampling(ignore_eos=True)) as stream:
            events = []
            async for event in stream:
                events.append(event)
                if len(events) == 3:
                    break
        assert isinstance(events[0], Started) and stream.request_id == "server-id"
        await asyncio.wait_for(servicer.cancelled.wait(), timeout=30)
        assert [e async for e in stream] == []  # a cancelled stream just ends


async def test_cancel_mid_iteration_ends_iteration(fake_server) -> None:
    target, servicer = fake_server
    servicer.cancelled.clear()
    async with AsyncInferenceClient(target) as client:
        stream = client.stream_generate(["go"], sampling=Sampling(ignore_eos=True))
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 2:
                stream.cancel()
        assert seen == 2
        await asyncio.wait_for(servicer.cancelled.wait(), timeout=30)


async def test_cancel_from_another_task_ends_a_pending_read(fake_server) -> None:
    target, servicer = fake_server
    servicer.cancelled.clear()
    async with AsyncInferenceClient(target) as client:
        stream = client.generate("go", sampling=Sampling(ignore_eos=True))
        two = asyncio.Event()

        async def consume() -> int:
            n = 0
            async for _ in stream:
                n += 1
                if n == 2:
                    two.set()
            return n

        task = asyncio.create_task(consume())
        await two.wait()
        stream.cancel()
        assert await task >= 2  # ends normally: no CancelledError leaks into the consumer
        await asyncio.wait_for(servicer.cancelled.wait(), timeout=30)


async def test_deadline_and_metadata_pass_through(fake_server) -> None:
    target, servicer = fake_server
    async with AsyncInferenceClient(target, metadata=[("x-tenant", "t1")]) as client:
        with pytest.raises(InferenceRpcError) as err:
            await client.get_model_info(timeout=0.05, metadata=[("x-delay", "5")])
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        info = await client.get_model_info()
        await client.generate_text("hi", metadata=[("x-call", "c1")])
    assert info.model_name == "tiny" and info.max_model_len == 2048
    video = info.modality(Modality.VIDEO)
    assert video is not None and video.max_num_frames == 32 and video.default_num_frames is None
    assert info.modality("audio") is None
    assert servicer.metadata == [("x-tenant", "t1"), ("x-call", "c1")]


class _TagInterceptor(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        md = list(client_call_details.metadata or []) + [("x-intercepted", "yes")]
        return await continuation(client_call_details._replace(metadata=md), request)


async def test_interceptors_are_installed(fake_server) -> None:
    target, servicer = fake_server
    async with AsyncInferenceClient(target, interceptors=[_TagInterceptor()]) as client:
        result = await client.generate_text("hi")
        async with client.generate("go", sampling=Sampling(ignore_eos=True)) as stream:
            assert isinstance(await anext(stream), Started)
    assert json.loads(result.text) == [["text", "hi"]]
    assert ("x-intercepted", "yes") in servicer.metadata


async def test_sync_client(fake_server, media: dict[str, Part]) -> None:
    target, servicer = fake_server
    servicer.cancelled.clear()

    def run() -> tuple[str, str, int]:
        with InferenceClient(target, timeout=30) as client:
            unary = client.generate_text([media["audio"], "x"], upload="unary")
            streamed = client.generate_text([media["audio"], "x"], upload="stream", chunk_size=100)
            with client.generate("go", sampling=Sampling(ignore_eos=True)) as stream:
                seen = 0
                for _ in stream:
                    seen += 1
                    if seen == 3:
                        stream.cancel()
            return unary.text, streamed.text, seen

    unary, streamed, seen = await asyncio.to_thread(run)
    assert json.loads(unary) == [["audio", _digest(media["audio"])], ["text", "x"]] == json.loads(streamed)
    assert seen == 3
    await asyncio.wait_for(servicer.cancelled.wait(), timeout=30)


async def test_opentelemetry_interceptors_keep_streaming_and_cancellation(fake_server) -> None:
    from opentelemetry.instrumentation.grpc import aio_client_interceptors, client_interceptor

    target, servicer = fake_server
    image = Part.image(_random_bytes(3000))
    servicer.cancelled.clear()
    async with AsyncInferenceClient(target, interceptors=aio_client_interceptors()) as client:
        result = await client.generate_text([image], upload="stream", chunk_size=1000)
        async with client.generate("go", sampling=Sampling(ignore_eos=True)) as stream:
            assert isinstance(await anext(stream), Started)
        await asyncio.wait_for(servicer.cancelled.wait(), timeout=30)
    assert json.loads(result.text) == [["image", _digest(image)]]

    # The blocking interceptor wraps the response stream in a plain generator.
    servicer.cancelled.clear()

    def run() -> str:
        with InferenceClient(target, interceptors=[client_interceptor()]) as client:
            text = client.generate_text([image], upload="stream", chunk_size=999).text
            with client.generate("go", sampling=Sampling(ignore_eos=True)) as stream:
                assert isinstance(next(stream), Started)
            return text

    assert json.loads(await asyncio.to_thread(run)) == [["image", _digest(image)]]
    await asyncio.wait_for(servicer.cancelled.wait(), timeout=30)


def test_started_media_items_from_proto() -> None:
    from nanovl.client import Started, event_from_proto
    from nanovl.v1 import inference_pb2 as pb

    started = pb.Started(request_id="r")
    started.media.add(
        part_index=1,
        video=pb.VideoItemInfo(
            width=64,
            height=96,
            frame_timestamps_s=[0.0, 0.5],
            frame_indices=[0, 12],
            rotation_degrees=90,
            source_frame_count=24,
            duration_s=1.0,
            format="mp4",
        ),
    )
    started.media.add(
        part_index=2,
        audio=pb.AudioItemInfo(
            duration_s=3.0,
            sample_rate=16000,
            num_samples=48000,
            source_sample_rate=44100,
            source_channels=2,
            format="wav",
        ),
    )
    started.media.add(part_index=0, image=pb.ImageItemInfo(width=8, height=4, format="png", source_mode="I;16"))
    event = event_from_proto(pb.GenerateResponse(started=started))
    assert isinstance(event, Started)
    video, audio, image = event.media
    assert (video.part_index, video.kind, video.details["frame_timestamps_s"]) == (1, "video", [0.0, 0.5])
    assert video.details["frame_indices"] == [0, 12] and video.details["mirrored"] is False
    assert video.describe() == "video: 2 of 24 frames, 64x96, rotated 90°, at [0.00, 0.50] s of 1.00 s"
    assert audio.describe() == "audio: 3.00 s wav (2 ch at 44100 Hz) → 48000 samples at 16000 Hz mono"
    assert image.describe() == "image: 8x4 png (source mode I;16)"


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_a_stream_cut_without_a_status_is_unavailable() -> None:
    """What grpc-core says when an HTTP/2 proxy ends a stream cleanly after its upstream died
    (tests/deploy/test_balancer.py sees it through HAProxy): UNAVAILABLE, as a direct connection
    that breaks gives; a server's own UNKNOWN stays UNKNOWN."""
    cut = InferenceRpcError(
        _FakeRpcError(grpc.StatusCode.UNKNOWN, "Stream removed (Data frame with END_STREAM flag received)")
    )
    assert cut.code == grpc.StatusCode.UNAVAILABLE
    assert "without a gRPC status" in cut.details and "Data frame with END_STREAM" in cut.details
    own = InferenceRpcError(_FakeRpcError(grpc.StatusCode.UNKNOWN, "Unexpected <class 'ValueError'>"))
    assert own.code == grpc.StatusCode.UNKNOWN and own.details == "Unexpected <class 'ValueError'>"
