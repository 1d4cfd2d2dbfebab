"""`nanovl serve`'s security flags: turned into settings, and operator mistakes refused before
any engine starts (exit 2, one clear line)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nanovl.cli import serve
from nanovl.errors import InvalidArgument
from tests.tls_certs import CertificateAuthority

TOKEN = "a-token-of-enough-length-0123"


def _args(*argv: str):
    args, _ = serve.build_parser().parse_known_args(list(argv))
    return args


def test_defaults_are_loopback_without_an_admin_port() -> None:
    fields = serve.security_settings(_args(), environ={})
    assert fields["tls"] is None and fields["admin_port"] is None and fields["admin_host"] == "127.0.0.1"
    assert not fields["auth"].inference.configured and not fields["auth"].admin.configured
    assert fields["profiling_on_inference_port"] is False and fields["health_port"] is None
    limits = serve.operator_limits(_args())
    assert limits.plan_model_dirs == () and limits.cpu_profile.max_rate_hz == 100


def test_everything_configured(tmp_path) -> None:
    ca = CertificateAuthority("ca", tmp_path / "ca")
    pem = ca.issue("server", server=True)
    tokens = tmp_path / "admin.tokens"
    tokens.write_text(TOKEN + "\n")
    fields = serve.security_settings(
        _args(
            "--host", "0.0.0.0",
            "--tls-cert-file", str(pem.cert), "--tls-key-file", str(pem.key), "--tls-client-ca-file", str(ca.cert_file),
            "--admin-token-file", str(tokens), "--admin-host", "0.0.0.0", "--admin-port", "50062",
            "--health-port", "50063", "--auth-reflection",
        ),
        environ={"NANOVL_INFERENCE_TOKENS": f"{TOKEN}1,{TOKEN}2"},
    )  # fmt: skip
    assert fields["tls"].mutual and fields["auth"].inference.tokens == (f"{TOKEN}1", f"{TOKEN}2")
    assert fields["auth"].admin.file == tokens and fields["auth"].reflection_requires_token
    limits = serve.operator_limits(
        _args("--plan-model-dir", str(tmp_path), "--max-cpu-profile-s", "5", "--max-cpu-profile-rate-hz", "50")
    )
    assert limits.plan_model_dirs == (tmp_path.resolve(),) and limits.cpu_profile.max_duration_s == 5


@pytest.mark.parametrize(
    "argv, env, match",
    [
        (("--admin-host", "0.0.0.0", "--admin-port", "50062"), {}, "--admin-token-file"),
        (("--host", "0.0.0.0", "--profiling-on-inference-port"), {}, "operator tokens"),
        (("--tls-cert-file", "x.pem"), {}, "both"),
        (("--tls-client-ca-file", "ca.pem"), {}, "mTLS is TLS"),
        (("--tls-cert-file", "/nonexistent.pem", "--tls-key-file", "/nonexistent.key"), {}, "does not exist"),
        ((), {"NANOVL_ADMIN_TOKENS": "short"}, "at least 16"),
        (("--inference-token-file", "/nonexistent"), {}, "cannot read"),
    ],
)
def test_operator_mistakes_are_refused(argv, env, match) -> None:
    with pytest.raises(InvalidArgument, match=match):
        serve.security_settings(_args(*argv), environ=env)


def test_bad_plan_model_dir_and_capture_maxima() -> None:
    with pytest.raises(InvalidArgument, match="--plan-model-dir"):
        serve.operator_limits(_args("--plan-model-dir", "/nonexistent"))
    with pytest.raises(InvalidArgument, match="--max-cpu-profile-rate-hz"):
        serve.operator_limits(_args("--max-cpu-profile-rate-hz", "5000"))


def test_serve_exits_2_before_starting_an_engine() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nanovl.cli", "serve", "--admin-host", "0.0.0.0", "--admin-port", "50062"],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("NANOVL_ADMIN_TOKENS")},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--admin-token-file" in proc.stderr and "Engine" not in proc.stderr


@pytest.fixture
def busy_port():
    """A port something else listens on (no SO_REUSEPORT), as another server would."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_serve_with_a_port_in_use_exits_2_at_once_naming_the_flag(busy_port: int) -> None:
    # Checked with the security flags, before vLLM's import and the engine's start.
    for flag in ("--port", "--health-port", "--metrics-port"):
        argv = ["--port", str(busy_port)] if flag == "--port" else ["--port", "0", flag, str(busy_port)]
        proc = subprocess.run(
            [sys.executable, "-m", "nanovl.cli", "serve", *argv], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert lines == [
            f"nanovl serve: error: cannot listen on 127.0.0.1:{busy_port} ({flag}): {lines[0].split('): ', 1)[1]}"
        ]
        assert "in use" in lines[0] and "Traceback" not in proc.stderr and "vLLM" not in proc.stderr


async def test_grpc_bind_failures_name_the_flag(busy_port: int) -> None:
    """Past the early check (a port taken in between): grpc's bare "Failed to bind" becomes
    FailedPrecondition naming the flag (service.listen.listen)."""
    import grpc

    from nanovl.errors import FailedPrecondition
    from service.listen import check_listen_addresses, listen

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    with pytest.raises(FailedPrecondition, match=rf"127\.0\.0\.1:{busy_port} \(--admin-port\).*in use"):
        listen(server, f"127.0.0.1:{busy_port}", "--admin-port")
    assert listen(server, "127.0.0.1:0", "--port") > 0
    await server.stop(None)
    with pytest.raises(FailedPrecondition, match=r"\(--health-port\)"):
        check_listen_addresses([("127.0.0.1", 0, "--port"), ("127.0.0.1", busy_port, "--health-port")])
    with pytest.raises(FailedPrecondition, match=r"nowhere\.invalid:5 \(--admin-port\)"):
        check_listen_addresses([("nowhere.invalid", 5, "--admin-port")])


@pytest.mark.parametrize(
    "hosts",
    [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("127.0.0.1", "0.0.0.0")],
    ids=["same-host", "wildcard-first", "wildcard-second"],
)
def test_one_port_given_to_two_flags_fails_at_start(hosts) -> None:
    """verify-10d F4: --port X with --admin-port X (or health/metrics) went on to load the
    engine. Each address is held while the next is checked, so they collide as gRPC's
    listeners would; different ports on one host, or free ports, pass."""
    from nanovl.errors import FailedPrecondition
    from service.listen import check_listen_addresses
    from tests.ports import free_port

    port, other = free_port(), free_port()
    flags = ["--port", "--admin-port", "--health-port", "--metrics-port"]
    for i, first in enumerate(flags):
        for second in flags[i + 1 :]:
            with pytest.raises(FailedPrecondition, match=rf"{second} {port} is also given as {first}"):
                check_listen_addresses([(hosts[0], port, first), (hosts[1], other, "--x"), (hosts[1], port, second)])
    check_listen_addresses([(hosts[0], port, "--port"), (hosts[1], other, "--admin-port")])
