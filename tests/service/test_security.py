"""Securing a deployment, end to end over real sockets (servers on the session engine):
TLS with certificates made here, mTLS refusing clients without a certificate or with one
from another CA, bearer tokens per surface, the admin port, PlanBudget never running a
checkpoint's code, and the `nanovl` commands against it all."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nanovl.client import AsyncInferenceClient, InferenceRpcError, Sampling, TlsConfig
from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import inference_pb2_grpc as pb_grpc
from nanovl.v1 import profiling_pb2 as ppb
from nanovl.v1 import profiling_pb2_grpc
from profiling.profilers.limits import OperatorLimits
from profiling.servicer import ProfilingServicer
from service.auth import AuthSettings, TokenSource
from service.server import build_server
from service.tls import TlsSettings
from tests.conftest import REPO, server_settings
from tests.tls_certs import CertificateAuthority

INFERENCE_TOKEN = "inference-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef-xyz"
SHORT = Sampling(max_tokens=2)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority("nanovl-test-ca", root / "ca")
    other = CertificateAuthority("someone-else", root / "other")
    return {
        "ca": ca,
        "server": ca.issue("nanovl.test", server=True, file_stem="server"),
        "client": ca.issue("operator", server=False, file_stem="client"),
        "stranger": other.issue("stranger", server=False, file_stem="stranger"),
        "root": root,
    }


def _token_file(path: Path, *tokens: str) -> Path:
    path.write_text("# test tokens\n" + "\n".join(tokens) + "\n")
    path.chmod(0o600)
    return path


def _evil_checkpoint(tiny_checkpoint: Path, where: Path, marker: Path) -> Path:
    """The tiny checkpoint with a config module that writes ``marker`` when imported."""
    ckpt = where / "evil-ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    with open(ckpt / "configuration_nanovl.py", "a") as f:
        f.write(f"\nimport pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    return ckpt


@pytest.fixture(scope="module")
async def secured(engine, pki, tmp_path_factory, tiny_checkpoint):
    """mTLS + inference and admin tokens + the admin port + one allow-listed plan directory."""
    tmp = tmp_path_factory.mktemp("secured")
    allowed = tmp / "allowed"
    allowed.mkdir()
    marker = tmp / "MARKER"
    settings = server_settings(
        tls=TlsSettings(pki["server"].cert, pki["server"].key, pki["ca"].cert_file),
        auth=AuthSettings(
            inference=TokenSource(file=_token_file(tmp / "inference.tokens", INFERENCE_TOKEN)),
            admin=TokenSource(tokens=(ADMIN_TOKEN,)),  # as from NANOVL_ADMIN_TOKENS
        ),
        admin_port=0,
    )
    profiling = ProfilingServicer(engine, engine.engine_args, limits=OperatorLimits(plan_model_dirs=(allowed,)))
    srv = await build_server(engine, settings, profiling_servicer=profiling)
    await srv.mark_serving()
    yield {
        "server": srv,
        "tmp": tmp,
        "allowed": allowed,
        "marker": marker,
        "inference_tokens": tmp / "inference.tokens",
        "evil_outside": _evil_checkpoint(tiny_checkpoint, tmp, marker),
    }
    await srv.stop()


def _mtls(pki, who: str = "client") -> TlsConfig:
    return TlsConfig(ca_file=pki["ca"].cert_file, cert_file=pki[who].cert, key_file=pki[who].key)


def _admin_channel(target: str, pki) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(target, _mtls(pki).credentials())


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _code(coro) -> tuple[grpc.StatusCode, str]:
    try:
        await coro
    except InferenceRpcError as exc:
        return exc.code, exc.details
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


# ------------------------------------------------------------------ TLS


async def test_tls_round_trip_and_certificate_reload(engine, pki, tmp_path):
    # Copies, so the test can rotate them.
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(pki["server"].cert, cert)
    shutil.copy(pki["server"].key, key)
    srv = await build_server(engine, server_settings(tls=TlsSettings(cert, key), health_port=0))
    await srv.mark_serving()
    try:
        # The plaintext health port answers probes that speak no TLS; it serves nothing else.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.health_port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="nanovl.v1.Inference"), timeout=10
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            code, _ = await _code(
                profiling_pb2_grpc.ProfilingStub(channel).StopTorchProfile(ppb.StopTorchProfileRequest())
            )
            assert code == grpc.StatusCode.UNIMPLEMENTED
        async with AsyncInferenceClient(srv.target, tls=TlsConfig(ca_file=pki["ca"].cert_file)) as client:
            info = await client.get_model_info(timeout=30)
            assert info.max_model_len > 0
            result = await client.generate_text(["hello"], sampling=SHORT, timeout=120)
            assert result.usage.completion_tokens == SHORT.max_tokens
        # A client that does not trust the CA is refused by its own TLS check.
        async with AsyncInferenceClient(
            srv.target, tls=TlsConfig(ca_file=pki["root"] / "other" / "someone-else.crt")
        ) as client:
            code, _ = await _code(client.get_model_info(timeout=10))
            assert code == grpc.StatusCode.UNAVAILABLE
        # Plaintext to a TLS port fails too.
        async with AsyncInferenceClient(srv.target) as client:
            assert (await _code(client.get_model_info(timeout=10)))[0] == grpc.StatusCode.UNAVAILABLE

        port = int(srv.target.rsplit(":", 1)[1])
        assert await asyncio.to_thread(_peer_common_name, port) == "nanovl.test"
        # Rotate: new certificate and key in place; the next connection gets it, no restart.
        rotated = pki["ca"].issue("rotated.nanovl.test", server=True, file_stem="rotated")
        shutil.copy(rotated.key, key)
        shutil.copy(rotated.cert, cert)
        assert await asyncio.to_thread(_peer_common_name, port) == "rotated.nanovl.test"
        async with AsyncInferenceClient(srv.target, tls=TlsConfig(ca_file=pki["ca"].cert_file)) as client:
            assert (await client.get_model_info(timeout=30)).max_model_len > 0
    finally:
        await srv.stop()


def _peer_common_name(port: int) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, ctx.wrap_socket(sock) as tls:
        cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    return cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value


async def test_mtls_refuses_clients_without_a_certificate_or_from_another_ca(secured, pki):
    target = secured["server"].target
    ca_only = TlsConfig(ca_file=pki["ca"].cert_file)
    for tls in (ca_only, _mtls(pki, "stranger")):
        async with AsyncInferenceClient(target, tls=tls, token=INFERENCE_TOKEN) as client:
            code, _ = await _code(client.get_model_info(timeout=10))
            assert code == grpc.StatusCode.UNAVAILABLE, tls
    async with AsyncInferenceClient(target, tls=_mtls(pki), token=INFERENCE_TOKEN) as client:
        result = await client.generate_text(["hi"], sampling=SHORT, timeout=120)
        assert result.usage.completion_tokens == SHORT.max_tokens


# ------------------------------------------------------------------ tokens


async def test_tokens_per_surface(secured, pki):
    srv = secured["server"]
    async with AsyncInferenceClient(srv.target, tls=_mtls(pki)) as anonymous:
        code, details = await _code(anonymous.get_model_info(timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in details
    for token, expected in (
        ("wrong-token-0123456789abcdef", grpc.StatusCode.UNAUTHENTICATED),
        (ADMIN_TOKEN, grpc.StatusCode.PERMISSION_DENIED),  # an operator token is not an inference token
        (INFERENCE_TOKEN, grpc.StatusCode.OK),
    ):
        async with AsyncInferenceClient(srv.target, tls=_mtls(pki), token=token) as client:
            code, details = await _code(client.get_model_info(timeout=10))
            assert code == expected, (token, details)

    async with _admin_channel(srv.admin_target, pki) as channel:
        stub = profiling_pb2_grpc.ProfilingStub(channel)
        stop = ppb.StopTorchProfileRequest()  # cheap: FAILED_PRECONDITION once past auth
        code, details = await _code(stub.StopTorchProfile(stop, timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, details = await _code(stub.StopTorchProfile(stop, timeout=10, metadata=_bearer(INFERENCE_TOKEN)))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "operator" in details
        code, details = await _code(stub.StopTorchProfile(stop, timeout=10, metadata=(("authorization", "Basic x"),)))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in details
        code, details = await _code(stub.StopTorchProfile(stop, timeout=10, metadata=_bearer(ADMIN_TOKEN)))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, details
        # Health stays open on both ports (probes cannot send tokens).
        health = health_pb2_grpc.HealthStub(channel)
        assert (await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)).status == 1
    async with grpc.aio.secure_channel(srv.target, _mtls(pki).credentials()) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="nanovl.v1.Inference"), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_token_file_rotation_needs_no_restart(secured, pki):
    srv, path = secured["server"], secured["inference_tokens"]
    new = "rotated-inference-token-0123456789"
    original = path.read_text()
    try:
        _token_file(path, new)
        await asyncio.sleep(1.2)  # the file is checked at most once a second
        async with AsyncInferenceClient(srv.target, tls=_mtls(pki), token=new) as client:
            assert (await _code(client.get_model_info(timeout=10)))[0] == grpc.StatusCode.OK
        async with AsyncInferenceClient(srv.target, tls=_mtls(pki), token=INFERENCE_TOKEN) as client:
            assert (await _code(client.get_model_info(timeout=10)))[0] == grpc.StatusCode.UNAUTHENTICATED
    finally:
        path.write_text(original)
        await asyncio.sleep(1.2)


# ------------------------------------------------------------------ the operator surface


async def test_profiling_is_not_on_the_inference_port_by_default(grpc_target, admin_target):
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        code, _ = await _code(profiling_pb2_grpc.ProfilingStub(channel).StopTorchProfile(ppb.StopTorchProfileRequest()))
        assert code == grpc.StatusCode.UNIMPLEMENTED
    async with grpc.aio.insecure_channel(admin_target) as channel:
        code, _ = await _code(profiling_pb2_grpc.ProfilingStub(channel).StopTorchProfile(ppb.StopTorchProfileRequest()))
        assert code == grpc.StatusCode.FAILED_PRECONDITION  # served there
    assert admin_target.startswith("127.0.0.1:")


async def test_profiling_on_the_inference_port_when_asked_takes_operator_tokens(engine):
    settings = server_settings(
        profiling_on_inference_port=True,
        auth=AuthSettings(inference=TokenSource(tokens=(INFERENCE_TOKEN,)), admin=TokenSource(tokens=(ADMIN_TOKEN,))),
    )
    srv = await build_server(engine, settings, profiling_servicer=ProfilingServicer(engine, engine.engine_args))
    try:
        async with grpc.aio.insecure_channel(srv.target) as channel:
            stub = profiling_pb2_grpc.ProfilingStub(channel)
            stop = ppb.StopTorchProfileRequest()
            assert (await _code(stub.StopTorchProfile(stop, metadata=_bearer(INFERENCE_TOKEN))))[0] == (
                grpc.StatusCode.PERMISSION_DENIED
            )
            assert (await _code(stub.StopTorchProfile(stop, metadata=_bearer(ADMIN_TOKEN))))[0] == (
                grpc.StatusCode.FAILED_PRECONDITION
            )
    finally:
        await srv.stop()


async def test_plan_budget_never_runs_checkpoint_code(secured, pki, tiny_checkpoint):
    marker, outside = secured["marker"], secured["evil_outside"]
    inside = _evil_checkpoint(tiny_checkpoint, secured["allowed"], marker)
    (secured["allowed"] / "escape").symlink_to(outside)
    request = ppb.PlanBudgetRequest(items=[ppb.MediaItems(count=1, image=ppb.ImageItem(width=224, height=224))])
    async with _admin_channel(secured["server"].admin_target, pki) as channel:
        stub = profiling_pb2_grpc.ProfilingStub(channel)
        md = _bearer(ADMIN_TOKEN)
        # Outside the allow-list (directly, or through a symlink inside it): refused, nothing loaded.
        for path in (outside, secured["allowed"] / "escape"):
            request.model_path = str(path)
            code, details = await _code(stub.PlanBudget(request, timeout=300, metadata=md))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "--plan-model-dir" in details, details
        # Allow-listed: planned with nanovl's own config class; the checkpoint's module never runs.
        request.model_path = str(inside)
        plan = await stub.PlanBudget(request, timeout=300, metadata=md)
        assert plan.accepted and plan.prompt_tokens > 0
        # The served checkpoint (the default) still plans.
        request.ClearField("model_path")
        assert (await stub.PlanBudget(request, timeout=300, metadata=md)).accepted
    assert not marker.exists()


async def test_captures_never_overlap(admin_target):
    async with grpc.aio.insecure_channel(admin_target) as channel:
        stub = profiling_pb2_grpc.ProfilingStub(channel)
        capture = stub.CaptureCpuProfile(ppb.CaptureCpuProfileRequest(duration_s=3, processes=[1]), timeout=120)
        first = asyncio.ensure_future(capture.read())
        await asyncio.sleep(1.5)  # the capture is running
        dummy = ppb.RunDummyProfileRequest(items=[ppb.MediaItems(count=1, image=ppb.ImageItem(width=64, height=64))])
        code, details = await _code(stub.RunDummyProfile(dummy, timeout=60))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "one capture at a time" in details
        second = stub.CaptureCpuProfile(ppb.CaptureCpuProfileRequest(duration_s=1), timeout=60)
        code, details = await _code(second.read())
        assert code == grpc.StatusCode.FAILED_PRECONDITION, details
        assert (await first).file_name  # the first capture completes
        capture.cancel()


# ------------------------------------------------------------------ the commands, as the README has them


async def _nanovl(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nanovl.cli",
        *argv,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    return proc.returncode, out.decode(), err.decode()


async def test_commands_with_mtls_and_tokens(secured, pki):
    srv, tmp = secured["server"], secured["tmp"]
    tls = [
        "--tls-ca-file",
        str(pki["ca"].cert_file),
        "--tls-cert-file",
        str(pki["client"].cert),
        "--tls-key-file",
        str(pki["client"].key),
    ]
    token_file = _token_file(tmp / "my.token", INFERENCE_TOKEN)
    rc, out, err = await _nanovl(
        "generate", "--target", srv.target, *tls, "--token-file", str(token_file), "--max-tokens", "2", "hello"
    )
    assert rc == 0, err
    rc, _, err = await _nanovl("generate", "--target", srv.target, *tls, "--max-tokens", "2", "hello")
    assert rc == 1 and "UNAUTHENTICATED" in err
    # The operator token from the environment, as the README shows.
    admin = ["profile", "torch", "stop", "--target", srv.admin_target, *tls]
    rc, _, err = await _nanovl(*admin, env={"NANOVL_ADMIN_TOKEN": ADMIN_TOKEN})
    assert rc == 1 and "FAILED_PRECONDITION" in err, err  # authenticated; nothing to stop
    rc, _, err = await _nanovl(*admin, "--token-file", str(token_file))
    assert rc == 1 and "PERMISSION_DENIED" in err, err


async def test_refused_streaming_calls_keep_their_status_with_tracing_on(engine):
    """Auth refusal of a server-streaming RPC behind OpenTelemetry's interceptor (which
    iterates the handler's result): UNAUTHENTICATED / PERMISSION_DENIED, never UNKNOWN."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from profiling.telemetry import tracing

    memory = InMemorySpanExporter()
    provider = tracing.setup_tracing(
        tracing.TracingSettings.from_env(exporter="none"), extra_processors=[SimpleSpanProcessor(memory)]
    )
    settings = server_settings(
        auth=AuthSettings(inference=TokenSource(tokens=(INFERENCE_TOKEN,)), admin=TokenSource(tokens=(ADMIN_TOKEN,)))
    )
    srv = await build_server(engine, settings, tracer_provider=provider)
    await srv.mark_serving()
    req = pb.GenerateRequest(parts=[pb.ContentPart(text="hi")], sampling=pb.SamplingOptions(max_tokens=2))

    try:
        async with grpc.aio.insecure_channel(srv.target) as channel:
            stub = pb_grpc.InferenceStub(channel)
            for metadata, code in [
                (None, grpc.StatusCode.UNAUTHENTICATED),
                ((("authorization", "Bearer wrong-token-wrong-token"),), grpc.StatusCode.UNAUTHENTICATED),
                ((("authorization", f"Bearer {ADMIN_TOKEN}"),), grpc.StatusCode.PERMISSION_DENIED),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in stub.Generate(req, metadata=metadata):
                        pass
                assert err.value.code() == code, err.value.details()
                # StreamGenerate through nanovl's client, which reports the server's status even
                # when grpc.aio's raw call reports its own refused write (INTERNAL) instead.
                async with AsyncInferenceClient(srv.target, metadata=metadata or ()) as client:
                    with pytest.raises(InferenceRpcError) as refused:
                        await client.generate_text("x", upload="stream", sampling=Sampling(max_tokens=2))
                assert refused.value.code == code, refused.value
            ok = stub.Generate(req, metadata=(("authorization", f"Bearer {INFERENCE_TOKEN}"),))
            assert [r async for r in ok][-1].HasField("final")
    finally:
        await srv.stop()
        tracing.shutdown_tracing(provider)
