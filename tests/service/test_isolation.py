"""No request hurts another: bounded uploads, separate budgets, readiness under load,
per-call engine ids, the rest of the chunk protocol, and chat templates kept off the event
loop. Real servers on the session engine, real sockets."""

from __future__ import annotations

import asyncio
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
    idle_s = 3.0
    srv = await make_server(upload_idle_timeout_s=idle_s, max_concurrent_uploads=64)
    hold = asyncio.Event()

    async def stalled():
        yield _header(_image(), sizes=[4096])
        yield _chunk(0, b"\0" * 1024, False)
        await hold.wait()  # goes silent

    async with grpc.aio.insecure_channel(srv.target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        t0 = time.monotonic()
        stalls = [asyncio.create_task(_status(stub.StreamGenerate(stalled(), timeout=60))) for _ in range(600)]
        # The upload budget fills; the rest are refused at once, not queued.
        for _ in range(400):
            if srv.lifecycle.uploading >= 64:
                break
            await asyncio.sleep(0.05)
        assert srv.lifecycle.uploading == 64
        # Uploads take none of the admission slots: a normal call goes through now...
        ok = await _collect(stub.Generate(pb.GenerateRequest(parts=[_image(PNG)]), timeout=60))
        assert ok[-1].HasField("final")
        assert await _readiness(channel) == health_pb2.HealthCheckResponse.SERVING
        # ...and a normal upload as soon as the stalled ones time out.
        codes = await asyncio.gather(*stalls)
        elapsed = time.monotonic() - t0
        assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) == 64, codes
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 600 - 64
        assert elapsed < idle_s + 20

        async def normal():
            yield _header(_image(), sizes=[len(PNG)])
            yield _chunk(0, PNG, True)
            yield END

        events = await _collect(stub.StreamGenerate(normal(), timeout=60))
        assert events[-1].HasField("final")
    hold.set()
    assert srv.lifecycle.uploading == 0 and srv.lifecycle.admitted == 0


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


async def test_a_drain_that_cuts_calls_says_so(make_server):
    """The SIGTERM path with calls still running at the end of the grace: `nanovl serve`
    exits 3 (not 0) from this result."""
    srv = await make_server()
    long = pb.GenerateRequest(
        parts=[pb.ContentPart(text="a")], sampling=pb.SamplingOptions(max_tokens=4000, ignore_eos=True)
    )
    async with grpc.aio.insecure_channel(srv.target) as channel:
        call = pb_grpc.InferenceStub(channel).Generate(long)
        await call.read()
        assert await srv.drain_and_stop(grace_s=0.5) is False
        assert srv.lifecycle.cut_calls == 1
        call.cancel()
