"""``nanovl call``: any RPC by hand through reflection, JSON in and out.

Most tests run the real command (a subprocess) against a bare server that carries only
the standard services; one calls the real nanovl server (engine)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nanovl.cli.call import CallError, parse_json_messages, parse_method, terminal_safe_json
from service.grpc_standard import HealthServicer, enable_reflection

REPO = Path(__file__).resolve().parents[2]
HEALTH = "grpc.health.v1.Health"


async def nanovl_call(*args: str, stdin: str | None = None, timeout: float = 60) -> tuple[int, str, str]:
    """Run ``nanovl call`` without blocking the event loop that serves it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nanovl.cli",
        "call",
        *args,
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NANOVL_TARGET": ""},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def _serve(v1: bool):
    server = grpc.aio.server()
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if v1:
        enable_reflection([HEALTH], server)
    else:  # what an older server (grpcio-reflection alone) serves
        reflection.enable_server_reflection([HEALTH, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("nanovl.v1.Inference", health_pb2.HealthCheckResponse.SERVING)
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def target():
    server, addr = await _serve(v1=True)
    yield addr
    await server.stop(0)


# ------------------------------------------------------------------ local parsing


def test_json_messages_in_every_shape() -> None:
    assert parse_json_messages("") == [{}]
    assert parse_json_messages('{"a": 1}') == [{"a": 1}]
    assert parse_json_messages('[{"a": 1}, {"b": 2}]') == [{"a": 1}, {"b": 2}]
    assert parse_json_messages('{"a": 1}\n{"b": 2} {"c": 3}') == [{"a": 1}, {"b": 2}, {"c": 3}]
    with pytest.raises(CallError, match="not valid JSON"):
        parse_json_messages("{bad")
    with pytest.raises(CallError, match="not a JSON object"):
        parse_json_messages("[1]")


def test_method_names() -> None:
    assert parse_method("Inference/GetModelInfo") == ("Inference", "GetModelInfo")
    assert parse_method("/nanovl.v1.Inference/Generate") == ("nanovl.v1.Inference", "Generate")
    assert parse_method("grpc.health.v1.Health.Check") == ("grpc.health.v1.Health", "Check")
    with pytest.raises(CallError):
        parse_method("Generate")


def test_output_json_escapes_what_could_drive_a_terminal() -> None:
    value = {"text": "a\x1b[2J\x02\x7f\u009b\u200b\U000e0001 é 中"}
    out = terminal_safe_json(value, indent=None)
    assert json.loads(out) == value
    assert all(ch.isprintable() for ch in out)


# ------------------------------------------------------------------ against a server


async def test_list_shows_services_and_methods(target) -> None:
    rc, out, err = await nanovl_call("list", "--target", target)
    assert rc == 0, err
    assert f"{HEALTH}\n  Check(grpc.health.v1.HealthCheckRequest) returns (grpc.health.v1.HealthCheckResponse)" in out
    assert "grpc.reflection.v1.ServerReflection" in out and "grpc.reflection.v1alpha.ServerReflection" in out
    assert "List(grpc.health.v1.HealthListRequest)" in out


async def test_unary_call_json_in_and_out(target) -> None:
    rc, out, err = await nanovl_call("Health/Check", '{"service": "nanovl.v1.Inference"}', "--target", target)
    assert rc == 0, err
    assert json.loads(out) == {"status": "SERVING"}
    rc, out, _ = await nanovl_call("grpc.health.v1.Health/List", "--target", target, "--compact")
    assert rc == 0 and json.loads(out)["statuses"]["nanovl.v1.Inference"] == {"status": "SERVING"}


async def test_streaming_call_prints_one_object_per_message(target) -> None:
    # ServerReflectionInfo streams both ways: two requests in (stdin), two responses out.
    requests = '{"list_services": ""}\n{"file_containing_symbol": "grpc.health.v1.Health"}'
    rc, out, err = await nanovl_call(
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "-", "--target", target, "--compact", stdin=requests
    )
    assert rc == 0, err
    first, second = (json.loads(line) for line in out.strip().splitlines())
    assert "list_services_response" in first and "file_descriptor_response" in second


async def test_rpc_failure_is_exit_1_with_the_status_once(target) -> None:
    rc, out, err = await nanovl_call("Health/Check", '{"service": "no.such.Service"}', "--target", target)
    assert rc == 1 and out == ""
    assert err.strip().splitlines() == ["nanovl call: error: NOT_FOUND"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Health/Nope"], "has no method 'Nope'"),
        (["Nothing/Check"], "has no service 'Nothing'"),
        (["Health/Check", '{"nope": 1}'], "does not fit grpc.health.v1.HealthCheckRequest"),
        (["Health/Check", "[{}, {}]"], "takes one request message, got 2"),
        (["describe", "grpc.health.v1.Nothing"], "no symbol"),
    ],
)
async def test_usage_errors_are_exit_2(target, args, message) -> None:
    rc, _, err = await nanovl_call(*args, "--target", target)
    assert rc == 2 and message in err and "Traceback" not in err, err


async def test_bad_json_is_reported_before_connecting() -> None:
    # Nothing listens on port 1: the JSON error must come first, and fast.
    rc, _, err = await nanovl_call("Health/Check", "{bad", "--target", "127.0.0.1:1", "--timeout", "30", timeout=20)
    assert rc == 2 and "not valid JSON" in err


async def test_describe_a_message(target) -> None:
    rc, out, err = await nanovl_call("describe", "grpc.health.v1.HealthCheckRequest", "--target", target)
    assert rc == 0 and 'name: "service"' in out, err


async def test_falls_back_to_reflection_v1alpha() -> None:
    server, addr = await _serve(v1=False)
    try:
        rc, out, err = await nanovl_call("Health/Check", "--target", addr)
        assert rc == 0 and json.loads(out) == {"status": "SERVING"}, err
    finally:
        await server.stop(0)


async def test_no_server_is_exit_1() -> None:
    rc, _, err = await nanovl_call("list", "--target", "127.0.0.1:1", "--timeout", "5")
    assert rc == 1 and "UNAVAILABLE" in err and "Traceback" not in err


# ------------------------------------------------------------------ the real service


async def test_every_inference_rpc_by_hand(grpc_target, admin_target) -> None:
    rc, out, err = await nanovl_call("Inference/GetModelInfo", "--target", grpc_target)
    assert rc == 0, err
    assert json.loads(out)["architecture"] == "NemotronH_Nano_VL_V2"

    request = {"parts": [{"text": "hello"}], "sampling": {"max_tokens": 3, "ignore_eos": True}}
    rc, out, err = await nanovl_call("Inference/Generate", json.dumps(request), "--target", grpc_target, "--compact")
    assert rc == 0, err
    kinds = [next(iter(json.loads(line))) for line in out.strip().splitlines()]
    assert kinds[0] == "started" and kinds[-1] == "final" and kinds.count("final") == 1

    # StreamGenerate: header, then End (a text-only prompt declares no media).
    header = {"parts": [{"part": {"text": "hello"}}], "sampling": {"max_tokens": 2, "ignore_eos": True}}
    stream = [{"header": header}, {"end": {}}]
    rc, out, err = await nanovl_call(
        "Inference/StreamGenerate", json.dumps(stream), "--target", grpc_target, "--compact"
    )
    assert rc == 0, err
    final = json.loads(out.strip().splitlines()[-1])["final"]
    assert final["usage"]["completion_tokens"] == 2

    # The operator surface is on the admin port only (UNIMPLEMENTED-free: not listed here).
    rc, out, err = await nanovl_call("Profiling/GetBudget", "--target", admin_target)
    assert rc == 0, err
    assert json.loads(out)
    rc, out, err = await nanovl_call("Profiling/GetBudget", "--target", grpc_target)
    assert rc == 2 and "no service 'Profiling'" in err, err
