"""No request hurts another: bounded uploads, separate budgets, readiness under load,
per-call engine ids, the rest of the chunk protocol, and chat templates kept off the event
loop. Real servers on the session engine, real sockets."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import inference_pb2_grpc as pb_grpc
from service.server import INFERENCE, build_server
from tests import media_fixtures as mf
from tests.conftest import server_settings

PNG = mf.make_png(48, 48)
END = pb.GenerateChunk(end=pb.End())


def _header(*parts, sizes=None, max_tokens=2, **sampling):
    declared = [pb.DeclaredPart(part=p) for p in parts]
    for d, size in zip(declared, sizes or [], strict=False):
        if size is not None:
            d.size_bytes = size
    return pb.GenerateChunk(
        header=pb.StreamGenerateHeader(parts=declared, sampling=pb.SamplingOptions(max_tokens=max_tokens, **sampling))
    )


def _chunk(i, data, last):
    return pb.GenerateChunk(media=pb.MediaChunk(part_index=i, data=data, last=last))


def _image(data=b""):
    return pb.ContentPart(image=pb.Image(data=data))


async def _collect(call):
    return [resp async for resp in call]


async def _status(call) -> grpc.StatusCode:
    try:
        await _collect(call)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.fixture
async def make_server(engine):
    servers = []

    async def make(**overrides):
        srv = await build_server(engine, server_settings(**overrides))
        await srv.mark_serving()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        await srv.stop()


async def _readiness(channel) -> int:
    health = health_pb2_grpc.HealthStub(channel)
    return (await health.Check(health_pb2.HealthCheckRequest(service=INFERENCE), timeout=10)).status


# ---------------------------------------------------------------------------- uploads


async def test_600_stalled_uploads_never_starve_a_normal_call(make_server):
    """600 uploads that send a header and 1 KiB, then go silent: they fill the upload budget
    (readiness says so), Generate still goes through, and the minimum upload rate cuts
    them long before the idle timeout, so a normal StreamGenerate gets in."""
    srv = await make_server(
        upload_idle_timeout_s=120.0, upload_rate_grace_s=2.0, max_concurrent_uploads=64, max_uploads_per_peer=0
    )
    hold = asyncio.Event()

    async def stalled():
        yield _header(_image(), sizes=[4096])
        yield _chunk(0, b"\0" * 1024, False)
        await hold.wait()  # goes silent

    async def normal():
        yield _header(_image(), sizes=[len(PNG)])
        yield _chunk(0, PNG, True)
        yield END

    async with grpc.aio.insecure_channel(srv.target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        stalls = [asyncio.create_task(_failure(stub.StreamGenerate(stalled(), timeout=100))) for _ in range(600)]
        # The upload budget fills; the rest are refused at once, not queued.
        for _ in range(400):
            if srv.lifecycle.uploading >= 64:
                break
            await asyncio.sleep(0.05)
        assert srv.lifecycle.uploading == 64
        assert await _readiness(channel) == health_pb2.HealthCheckResponse.NOT_SERVING  # full: route elsewhere
        # Uploads take none of the admission slots: a normal call goes through now...
        ok = await _collect(stub.Generate(pb.GenerateRequest(parts=[_image(PNG)]), timeout=60))
        assert ok[-1].HasField("final")
        # ...and a normal upload as soon as the rate rule has cut the stalled ones.
        for _ in range(600):
            code, _ = await _failure(stub.StreamGenerate(normal(), timeout=60))
            if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                break
            await asyncio.sleep(0.1)
        assert code == grpc.StatusCode.OK
        outcomes = await asyncio.gather(*stalls)
        assert await _readiness(channel) == health_pb2.HealthCheckResponse.SERVING
    hold.set()
    cut = [d for c, d in outcomes if c == grpc.StatusCode.DEADLINE_EXCEEDED]
    # Each stalled call either got a slot and was cut by the rate rule, or was refused at
    # once: 64 at least were cut, more when some headers arrived after the first cuts freed
    # slots (how the 600 calls interleave with the 2 s grace depends on the machine).
    assert len(cut) >= 64 and all("--min-upload-bytes-per-s" in d for d in cut), outcomes[:3]
    assert [c for c, _ in outcomes].count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 600 - len(cut)
    assert srv.lifecycle.uploading == 0 and srv.lifecycle.admitted == 0


async def _failure(call) -> tuple[grpc.StatusCode, str]:
    try:
        await _collect(call)
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


async def test_a_trickling_upload_is_cut_by_the_minimum_rate(make_server):
    """Never idle, always too slow: one byte every 0.3 s."""
    srv = await make_server(upload_idle_timeout_s=60.0, upload_rate_grace_s=1.0, min_upload_bytes_per_s=1024)

    async def trickle():
        yield _header(_image(), sizes=[4096])
        for _ in range(400):
            yield _chunk(0, b"\0", False)
            await asyncio.sleep(0.3)

    async with grpc.aio.insecure_channel(srv.target) as channel:
        code, details = await _failure(pb_grpc.InferenceStub(channel).StreamGenerate(trickle(), timeout=100))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "--min-upload-bytes-per-s" in details


@pytest.mark.parametrize("seed", range(3))
async def test_a_bad_first_message_gets_its_own_status_while_the_upload_budget_is_full(make_server, seed):
    """The upload slot is taken after the header is read and checked: an undecodable or
    invalid header is INVALID_ARGUMENT even when every slot is taken."""
    rng = random.Random(seed)
    srv = await make_server(max_concurrent_uploads=2, max_uploads_per_peer=0, upload_idle_timeout_s=60.0)
    hold = asyncio.Event()

    async def stalled():
        yield _header(_image(), sizes=[4096])
        await hold.wait()

    bad = rng.choice(
        [
            b"\x0a",  # undecodable
            pb.GenerateChunk(media=pb.MediaChunk(part_index=0, data=b"x", last=True)).SerializeToString(),  # no header
            _header(_image(PNG)).SerializeToString(),  # payload in the header
            _header(_image(), top_p=1.5).SerializeToString(),  # bad sampling
        ]
    )

    async def send_bad():
        yield bad
        yield END.SerializeToString()

    async with grpc.aio.insecure_channel(srv.target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        stalls = [asyncio.create_task(_status(stub.StreamGenerate(stalled(), timeout=60))) for _ in range(2)]
        while srv.lifecycle.uploading < 2:
            await asyncio.sleep(0.05)
        raw = channel.stream_stream(
            "/nanovl.v1.Inference/StreamGenerate", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        code, details = await _failure(raw(send_bad(), timeout=30))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        hold.set()
        for task in stalls:
            task.cancel()


@pytest.mark.parametrize("round_", range(3))
async def test_a_plain_grpc_client_rejected_while_writing_gets_the_servers_status(make_server, round_):
    """16 concurrent plain grpc.aio StreamGenerate calls whose header the server refuses while
    they are still sending chunks: every one sees INVALID_ARGUMENT, never grpc.aio's
    "Internal error from Core" (the server reads until their half-close first)."""
    rng = random.Random(round_)
    srv = await make_server()
    png = mf.make_png(256, 256, seed=round_)
    step = rng.choice([1024, 4096, 16384])

    async def rejected():
        yield _header(_image(), sizes=[len(png)], top_p=1.5).SerializeToString()
        for i in range(0, len(png), step):
            yield _chunk(0, png[i : i + step], i + step >= len(png)).SerializeToString()
        yield END.SerializeToString()

    async with grpc.aio.insecure_channel(srv.target) as channel:
        raw = channel.stream_stream(
            "/nanovl.v1.Inference/StreamGenerate", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        outcomes = await asyncio.gather(*(_failure(raw(rejected(), timeout=60)) for _ in range(16)))
    assert {c for c, _ in outcomes} == {grpc.StatusCode.INVALID_ARGUMENT}, outcomes


async def test_a_refused_client_writing_slowly_gets_the_status_after_its_last_write(grpc_target):
    """verify-10e D3(b): the server read a refused client's stream for 1 s at most, so a
    client whose writes were slower (a loaded machine, 600 uploads over 30 channels) was
    still writing when the status came, and 415 of 584 saw "Internal error from Core". The
    drain now waits while the client keeps sending (each message within 1 s of the last, up
    to 5 s): a client writing a chunk every 0.4 s for 2.4 s gets the status after its last
    write."""
    png = mf.make_png(64, 64)
    last_write = 0.0

    async def slow_rejected():
        nonlocal last_write
        yield _header(_image(), sizes=[len(png)], top_p=1.5).SerializeToString()
        for i in range(6):
            await asyncio.sleep(0.4)
            last_write = time.monotonic()
            yield _chunk(0, png[i * 10 : i * 10 + 10], False).SerializeToString()

    async with grpc.aio.insecure_channel(grpc_target) as channel:
        raw = channel.stream_stream(
            "/nanovl.v1.Inference/StreamGenerate", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        code, details = await _failure(raw(slow_rejected(), timeout=60))
        answered = time.monotonic()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "top_p" in details, details
    assert answered >= last_write > 0


async def test_idle_upload_times_out_with_a_message_naming_the_flag(make_server):
    srv = await make_server(upload_idle_timeout_s=1.0)

    async def header_then_silence():
        yield _header(_image(), sizes=[len(PNG)])
        await asyncio.Event().wait()

    async with grpc.aio.insecure_channel(srv.target) as channel:
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _collect(pb_grpc.InferenceStub(channel).StreamGenerate(header_then_silence(), timeout=30))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "--upload-idle-timeout-s" in err.value.details()
    assert time.monotonic() - t0 < 10


async def test_declared_size_over_the_limit_is_refused_before_any_byte(grpc_target):
    sent = []

    async def header_only():
        sent.append("header")
        yield _header(_image(), sizes=[1 << 40])
        await asyncio.Event().wait()  # would upload a TiB; must never be asked to

    async with grpc.aio.insecure_channel(grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _collect(pb_grpc.InferenceStub(channel).StreamGenerate(header_only(), timeout=30))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "declares" in err.value.details() and "--max-request-bytes" in err.value.details()
    assert sent == ["header"]


async def test_readiness_reports_a_full_server(make_server):
    srv = await make_server(max_concurrent_requests=2)
    long = pb.GenerateRequest(
        parts=[pb.ContentPart(text="a")], sampling=pb.SamplingOptions(max_tokens=4000, ignore_eos=True)
    )
    async with grpc.aio.insecure_channel(srv.target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        assert await _readiness(channel) == health_pb2.HealthCheckResponse.SERVING
        calls = [stub.Generate(long) for _ in range(2)]
        for call in calls:
            await call.read()  # Started: admitted
        for _ in range(100):
            if await _readiness(channel) == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.05)
        assert await _readiness(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await _status(stub.Generate(long)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        for call in calls:
            call.cancel()
        for _ in range(100):
            if await _readiness(channel) == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.05)
        assert await _readiness(channel) == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------------------- protocol


def _text_header():
    return _header(pb.ContentPart(text="go on"), max_tokens=500, ignore_eos=True)


PROTOCOL = {
    "chunk after End": [
        _header(_image(), max_tokens=500, ignore_eos=True),
        _chunk(0, PNG, True),
        END,
        _chunk(0, b"x", True),
    ],
    "two Ends": [_text_header(), END, END],
    "empty chunk not last": [_header(_image()), _chunk(0, b"", False)],
    "payload in header": [_header(_image(PNG)), END],
}


@pytest.mark.parametrize("name", list(PROTOCOL))
async def test_what_the_proto_forbids_is_refused(grpc_target, name):
    async def send():
        for m in PROTOCOL[name]:
            yield m
        await asyncio.Event().wait()

    async with grpc.aio.insecure_channel(grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _collect(pb_grpc.InferenceStub(channel).StreamGenerate(send(), timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()


# ---------------------------------------------------------------------------- request ids


async def test_two_calls_with_one_request_id_are_isolated(grpc_target, engine):
    req = pb.GenerateRequest(
        request_id="same-id",
        parts=[pb.ContentPart(text="count")],
        sampling=pb.SamplingOptions(max_tokens=40, ignore_eos=True),
    )
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        first, second = stub.Generate(req), stub.Generate(req)
        assert (await first.read()).started.request_id == "same-id"
        assert (await second.read()).started.request_id == "same-id"
        first.cancel()
        events = []
        while (resp := await second.read()) is not grpc.aio.EOF:
            events.append(resp)
    final = events[-1].final
    assert final.finish_reason == pb.FINISH_REASON_LENGTH and final.usage.completion_tokens == 40
    assert final.request_id == "same-id"


# ---------------------------------------------------------------------------- chat templates


def _chat(kwargs: dict, text="hi") -> pb.GenerateRequest:
    struct = struct_pb2.Struct()
    struct.update(kwargs)
    return pb.GenerateRequest(
        messages=[pb.Message(role="user", parts=[pb.ContentPart(text=text)])],
        chat_template=pb.ChatTemplateOptions(chat_template_kwargs=struct),
        sampling=pb.SamplingOptions(max_tokens=2),
    )


RAISING = "{{ raise_exception('roles must alternate') }}"
HOSTILE = (
    "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}"
    "{% endfor %}{% endfor %}{% endfor %}"
)
TEMPLATE_ERRORS = {
    "reserved messages": ({"messages": []}, grpc.StatusCode.INVALID_ARGUMENT, "may not set"),
    "reserved tokenize": ({"tokenize": True}, grpc.StatusCode.INVALID_ARGUMENT, "may not set"),
    "reserved add_generation_prompt": ({"add_generation_prompt": False}, grpc.StatusCode.INVALID_ARGUMENT, "may not"),
    "reserved continue_final_message": ({"continue_final_message": True}, grpc.StatusCode.INVALID_ARGUMENT, "may not"),
    "tools not a list": ({"tools": "x"}, grpc.StatusCode.INVALID_ARGUMENT, "tools must be a list"),
    "documents of strings": ({"documents": ["a"]}, grpc.StatusCode.INVALID_ARGUMENT, "documents must be a list"),
    "request template off": ({"chat_template": "{{ 1 }}"}, grpc.StatusCode.PERMISSION_DENIED, "--allow-request"),
}


@pytest.mark.parametrize("name", list(TEMPLATE_ERRORS))
async def test_chat_template_kwargs_are_checked(grpc_target, name):
    kwargs, code, needle = TEMPLATE_ERRORS[name]
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _collect(pb_grpc.InferenceStub(channel).Generate(_chat(kwargs), timeout=60))
    assert err.value.code() == code, err.value.details()
    assert needle in err.value.details()


async def test_request_templates_render_in_a_sandbox_that_fails_cleanly(make_server):
    srv = await make_server(allow_request_chat_template=True, chat_template_timeout_s=2.0)
    template = "{% for m in messages %}<|im_start|>{{ m.content[0].text }}{% endfor %}<|im_start|>assistant\n"
    async with grpc.aio.insecure_channel(srv.target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        ok = await _collect(stub.Generate(_chat({"chat_template": template}, text="abc"), timeout=60))
        # Byte-level tokenizer: 2 special tokens + "abc" + "assistant\n" (the checkpoint's own
        # template would add the system turn and the role names: far more).
        assert abs(ok[-1].final.usage.prompt_tokens - 15) <= 1
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _collect(stub.Generate(_chat({"chat_template": RAISING}), timeout=60))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "roles must alternate" in raised.value.details()
        # verify-10b D7: placeholders a template writes for media the request does not send
        # are refused as they are in raw text.
        for bomb, needle in (("{{ '<image>' * 2000 }}", "2000 <image> placeholders for 0 image"), ("<img>", "<img>")):
            with pytest.raises(grpc.aio.AioRpcError) as injected:
                await _collect(stub.Generate(_chat({"chat_template": template + bomb}), timeout=60))
            assert injected.value.code() == grpc.StatusCode.INVALID_ARGUMENT, injected.value.details()
            assert needle in injected.value.details() and "request's chat template" in injected.value.details()
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as slow:
            await _collect(stub.Generate(_chat({"chat_template": HOSTILE}), timeout=60))
        assert slow.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "--chat-template-timeout-s" in slow.value.details()
        assert time.monotonic() - t0 < 15


async def test_a_hostile_template_does_not_delay_health_checks_or_other_streams(make_server):
    srv = await make_server(allow_request_chat_template=True, chat_template_timeout_s=4.0)
    stream_req = pb.GenerateRequest(
        parts=[pb.ContentPart(text="tick")], sampling=pb.SamplingOptions(max_tokens=3000, ignore_eos=True)
    )
    async with grpc.aio.insecure_channel(srv.target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        async def health_latencies(seconds: float) -> list[float]:
            out, end = [], time.monotonic() + seconds
            while time.monotonic() < end:
                t0 = time.perf_counter()
                await health.Check(health_pb2.HealthCheckRequest(service=INFERENCE), timeout=10)
                out.append(time.perf_counter() - t0)
                await asyncio.sleep(0.02)
            return out

        async def delta_gaps(call, seconds: float) -> list[float]:
            gaps, last, end = [], time.perf_counter(), time.monotonic() + seconds
            while time.monotonic() < end:
                await call.read()
                now = time.perf_counter()
                gaps.append(now - last)
                last = now
            return gaps

        stream = stub.Generate(stream_req)
        await stream.read()  # Started
        base_health, base_gaps = await asyncio.gather(health_latencies(2.0), delta_gaps(stream, 2.0))
        hostile = asyncio.create_task(_status(stub.Generate(_chat({"chat_template": HOSTILE}), timeout=60)))
        await asyncio.sleep(0.5)  # the sandbox is now spinning
        during_health, during_gaps = await asyncio.gather(health_latencies(2.5), delta_gaps(stream, 2.5))
        assert await hostile == grpc.StatusCode.DEADLINE_EXCEEDED
        stream.cancel()
    assert statistics.median(during_health) <= statistics.median(base_health) + 0.050, (base_health, during_health)
    assert statistics.median(during_gaps) <= statistics.median(base_gaps) + 0.050, (base_gaps, during_gaps)


# ---------------------------------------------------------------------------- structured output


def _properties(n: int) -> str:
    names = [f"p{i:05d}" for i in range(n)]
    return json.dumps({"type": "object", "properties": {k: {"type": "string"} for k in names}, "required": names})


def _compile_bomb(rng: random.Random) -> pb.StructuredOutput:
    """Under the byte limit of the test server, and seconds (or minutes) to compile."""
    kind = rng.choice(["properties", "enum", "anyof"])
    if kind == "properties":
        return pb.StructuredOutput(json_schema=_properties(rng.choice([6000, 9000])))
    if kind == "enum":
        return pb.StructuredOutput(
            json_schema=json.dumps({"enum": [f"{i:06d}" for i in range(rng.choice([40000, 60000]))]})
        )
    alternatives = [
        {"type": "object", "properties": {f"k{i}": {"const": f"v{i}"}}, "required": [f"k{i}"]} for i in range(5000)
    ]
    return pb.StructuredOutput(json_schema=json.dumps({"anyOf": alternatives}))


BENIGN = [
    pb.StructuredOutput(json_schema="{}"),
    pb.StructuredOutput(regex="a*"),
    pb.StructuredOutput(choice=pb.Choices(choices=["yes", "no"])),
    pb.StructuredOutput(json_schema='{"type": "object", "properties": {"a": {"type": "integer"}}}'),
]


@pytest.mark.parametrize("seed", range(2))
async def test_a_compile_bomb_is_refused_and_never_stalls_other_users_structured_output(make_server, seed):
    """vLLM compiles grammars in a small thread pool in the engine core that one slow grammar
    holds for everyone. A constraint that compiles longer than the limit is refused before
    the engine sees it, while other users' constraints are checked and served meanwhile."""
    rng = random.Random(seed)
    # 1.5 s: the four benign constraints still compile one after another in vLLM's own grammar
    # thread (one on two cores) and generate; at 1.0 s a loaded CI machine left the last of
    # them finishing after the bomb's refusal.
    srv = await make_server(structured_output_compile_timeout_s=1.5, max_structured_output_bytes=4 << 20)
    bomb = _compile_bomb(rng)
    finished: list[str] = []

    async def call(name: str, so: pb.StructuredOutput) -> tuple[grpc.StatusCode, str]:
        req = pb.GenerateRequest(
            parts=[pb.ContentPart(text="x")], sampling=pb.SamplingOptions(max_tokens=2, structured_output=so)
        )
        outcome = await _failure(stub.Generate(req, timeout=120))
        finished.append(name)
        return outcome

    async with grpc.aio.insecure_channel(srv.target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        hostile = asyncio.create_task(call("bomb", bomb))
        await asyncio.sleep(0.2)  # the bomb is compiling in the checker
        others = await asyncio.gather(*(call(f"benign{i}", so) for i, so in enumerate(BENIGN)))
        code, details = await hostile
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert "--structured-output-compile-timeout-s" in details
        assert all(c == grpc.StatusCode.OK for c, _ in others), others
        assert finished.index("bomb") == len(BENIGN), finished  # the others did not wait for it
        # Sent again (or by someone else) it is refused from the remembered verdict, and the
        # engine's grammar threads never saw it: structured output still answers.
        again = await call("bomb again", bomb)
        assert again[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await call("after", BENIGN[0]))[0] == grpc.StatusCode.OK


@pytest.mark.parametrize(
    "so",
    [
        pb.StructuredOutput(grammar="root ::= root"),
        pb.StructuredOutput(grammar='root ::= a\na ::= a "x"'),
        pb.StructuredOutput(json_schema='{"allOf": [{"type": "string"}, {"type": "integer"}]}'),
    ],
    ids=["self-rule", "left-recursion-only", "string-and-integer"],
)
async def test_a_constraint_that_matches_no_string_is_refused(grpc_target, so):
    """verify-10e D4: ``root ::= root`` was accepted and the call ended OK with
    FINISH_REASON_ERROR and vLLM ERROR lines. A constraint that allows no first token is
    INVALID_ARGUMENT before the engine; the server serves the next one."""
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        req = pb.GenerateRequest(
            parts=[pb.ContentPart(text="x")], sampling=pb.SamplingOptions(max_tokens=2, structured_output=so)
        )
        code, details = await _failure(stub.Generate(req, timeout=120))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        # (xgrammar itself refuses the contradictory schema: "Unsatisfiable schema".)
        assert "matches no string" in details or "Unsatisfiable schema" in details, details
        ok = pb.GenerateRequest(
            parts=[pb.ContentPart(text="x")],
            sampling=pb.SamplingOptions(max_tokens=2, structured_output=BENIGN[1]),
        )
        assert (await _failure(stub.Generate(ok, timeout=120)))[0] == grpc.StatusCode.OK


@pytest.mark.parametrize("seed", range(4))
async def test_constraints_over_the_size_limits_are_refused_naming_the_flag(grpc_target, seed):
    rng = random.Random(seed)
    so, flag = rng.choice(
        [
            (pb.StructuredOutput(json_schema=json.dumps({"enum": [str(i) for i in range(100_000)]})), "bytes"),
            (pb.StructuredOutput(regex="a" * (200 << 10)), "bytes"),
            (pb.StructuredOutput(choice=pb.Choices(choices=[str(i) for i in range(1001)])), "choices"),
            (pb.StructuredOutput(grammar='root ::= "' + "b" * (200 << 10) + '"'), "bytes"),
        ]
    )
    header = pb.GenerateChunk(
        header=pb.StreamGenerateHeader(
            parts=[pb.DeclaredPart(part=pb.ContentPart(text="x"))],
            sampling=pb.SamplingOptions(max_tokens=2, structured_output=so),
        )
    )

    async def stream():
        yield header
        yield END

    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        req = pb.GenerateRequest(parts=[pb.ContentPart(text="x")], sampling=header.header.sampling)
        for call in (stub.Generate(req, timeout=60), stub.StreamGenerate(stream(), timeout=60)):
            code, details = await _failure(call)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
            assert f"--max-structured-output-{flag}" in details


# ---------------------------------------------------------------------------- drain


async def test_a_drain_that_cuts_calls_says_so(make_server):
    """The SIGTERM path with calls still running at the end of the grace: `nanovl serve`
    exits 3 (not 0) from this result, and the cut call hears why from nanovl.

    The client reads slower than the server streams, so the handler spends most of its time
    suspended in gRPC's send (flow control): a cancel landing there used to end the call
    with gRPC's own "Cancelling all calls" (a CI flake); a call in a send is now cut when
    the send returns."""
    srv = await make_server()
    long = pb.GenerateRequest(
        parts=[pb.ContentPart(text="a")], sampling=pb.SamplingOptions(max_tokens=4000, ignore_eos=True)
    )
    async with grpc.aio.insecure_channel(srv.target) as channel:
        call = pb_grpc.InferenceStub(channel).Generate(long)
        await call.read()

        async def read_slowly() -> int:
            n = 0
            while await call.read() is not grpc.aio.EOF:
                n += 1
                await asyncio.sleep(0.01)
            return n

        reader = asyncio.ensure_future(read_slowly())
        await asyncio.sleep(0.5)  # the server's send buffers are full by now
        assert await srv.drain_and_stop(grace_s=0.5) is False
        assert srv.lifecycle.cut_calls == 1
        # The cut call hears it from nanovl, with what to do, not gRPC's "Cancelling all calls".
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reader
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "drain grace" in err.value.details() and "retry" in err.value.details(), err.value.details()


def _silent_flac(seconds: float, rate: int = 16000) -> bytes:
    """``seconds`` of silence as FLAC: a few hundred bytes per minute, seconds to decode."""
    import io

    import numpy as np
    import soundfile

    out = io.BytesIO()
    soundfile.write(out, np.zeros(int(seconds * rate), dtype=np.int16), rate, format="FLAC", subtype="PCM_16")
    return out.getvalue()


async def test_a_decoder_crash_fails_its_request_only_and_text_never_waits(server, grpc_target):
    """verify-10e D1's kind end to end: a native decoder crash used to kill the server and
    every call in flight. Here a decode worker is frozen mid-decode (SIGSTOP) and then
    crashes (SIGSEGV), as a decoder bug would: the request gets INVALID_ARGUMENT naming the
    signal and the part, the worker is replaced, and the next media request reaches the
    model. Workers killed while idle cost no request (the job goes to another).

    And verify-10d F1b: text-only prompts were once assembled in the media decode pool, so
    4 requests' videos delayed another user's text Generate 7.6 s. With a decode frozen, a
    text request sent after it completes."""
    import os
    import signal

    workers = server.inference._decode_workers
    crashes = workers.crashes
    seconds = min(590.0, server.settings.media_limits.max_audio_seconds)  # seconds of decoding
    audio = pb.ContentPart(audio=pb.Audio(encoded=_silent_flac(seconds)))
    sampling = pb.SamplingOptions(max_tokens=2)
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        audio_req = pb.GenerateRequest(parts=[pb.ContentPart(text="hear"), audio], sampling=sampling)
        audio_call = asyncio.ensure_future(_collect(stub.Generate(audio_req, timeout=120)))
        deadline = time.monotonic() + 60
        while not (busy := workers.decoding_pids()) and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        assert busy, "the audio never reached a decode worker"
        (pid,) = busy
        os.kill(pid, signal.SIGSTOP)
        try:
            text_req = pb.GenerateRequest(parts=[pb.ContentPart(text="hi")], sampling=sampling)
            text = await _collect(stub.Generate(text_req, timeout=60))
            assert text[-1].HasField("final") and not audio_call.done()
            os.kill(pid, signal.SIGSEGV)
        finally:
            os.kill(pid, signal.SIGCONT)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await audio_call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert "part 1 (audio): the decoder crashed on this media (SIGSEGV)" in err.value.details()
        assert workers.crashes == crashes + 1
        for idle in set(workers.pids()) - {pid}:
            os.kill(idle, signal.SIGKILL)
        image_req = pb.GenerateRequest(parts=[pb.ContentPart(text="describe"), _image(PNG)], sampling=sampling)
        after = await _collect(stub.Generate(image_req, timeout=120))
        assert after[0].started.media[0].image.width == 48 and after[-1].HasField("final")
    assert workers.crashes == crashes + 1
    assert pid not in workers.pids()
