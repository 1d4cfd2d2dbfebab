"""The security building blocks without an engine: tokens, the authenticator's decisions,
exposure checks, TLS settings and files, client-side TLS/token options, profiler bounds."""

from __future__ import annotations

import time

import grpc
import pytest

from nanovl.client.security import TlsConfig, bearer_metadata, read_token_file
from nanovl.errors import InvalidArgument, NanovlError, PermissionDenied, Unauthenticated
from profiling.profilers.cpu_profile import CpuProfileRequest, redact_paths
from profiling.profilers.limits import CpuProfileLimits
from service.auth import Authenticator, AuthSettings, TokenSet, TokenSource, load_token_sets, parse_tokens
from service.server import check_exposure, is_loopback
from service.settings import ServerSettings
from service.tls import TlsSettings, load_pem_files
from tests.tls_certs import CertificateAuthority

INF = "inference-token-0123456789abcdef"
ADM = "admin-token-0123456789abcdef-xyz"
RULES = {
    "nanovl.v1.Inference": frozenset({"inference"}),
    "nanovl.v1.Profiling": frozenset({"admin"}),
    "grpc.reflection.*": frozenset({"inference", "admin"}),
}


def _sets(**sources: TokenSource) -> dict:
    return {role: TokenSet(role, src) for role, src in sources.items()}


def _md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_parse_tokens_lines_commas_and_comments() -> None:
    assert parse_tokens("# c\n a , b\n\nc # d\n") == ("a", "b", "c")


def test_short_tokens_and_empty_files_are_refused(tmp_path) -> None:
    with pytest.raises(InvalidArgument, match="at least 16"):
        TokenSet("inference", TokenSource(tokens=("short",)))
    empty = tmp_path / "t"
    empty.write_text("# nothing\n")
    with pytest.raises(InvalidArgument, match="no tokens"):
        TokenSet("admin", TokenSource(file=empty))
    with pytest.raises(InvalidArgument, match="cannot read"):
        TokenSet("admin", TokenSource(file=tmp_path / "missing"))


def test_token_source_from_env_never_shows_the_tokens() -> None:
    src = TokenSource.from_env("admin", None, {"NANOVL_ADMIN_TOKENS": f"{ADM},{ADM}2"})
    assert src.tokens == (ADM, ADM + "2") and ADM not in repr(src) and ADM not in repr(AuthSettings(admin=src))


def test_authenticator_decisions() -> None:
    auth = Authenticator(RULES, _sets(inference=TokenSource(tokens=(INF,)), admin=TokenSource(tokens=(ADM,))))
    auth.check("nanovl.v1.Inference", _md(INF))
    auth.check("nanovl.v1.Profiling", _md(ADM))
    auth.check("grpc.health.v1.Health", None)  # open
    auth.check("grpc.reflection.v1.ServerReflection", _md(ADM))  # prefix rule
    for service, md, err in (
        ("nanovl.v1.Inference", None, Unauthenticated),
        ("nanovl.v1.Inference", (("authorization", "Basic abc"),), Unauthenticated),
        ("nanovl.v1.Inference", (("authorization", "Bearer "),), Unauthenticated),
        ("nanovl.v1.Inference", _md("x" * 32), Unauthenticated),
        ("nanovl.v1.Inference", _md(ADM), PermissionDenied),
        ("nanovl.v1.Profiling", _md(INF), PermissionDenied),
        ("grpc.reflection.v1alpha.ServerReflection", None, Unauthenticated),
    ):
        with pytest.raises(err) as info:
            auth.check(service, md)
        assert info.value.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    with pytest.raises(PermissionDenied, match="operator"):
        auth.check("nanovl.v1.Profiling", _md(INF))


def test_a_role_without_tokens_leaves_its_services_open() -> None:
    auth = Authenticator(RULES, _sets(inference=TokenSource(tokens=(INF,))))
    auth.check("nanovl.v1.Profiling", None)
    with pytest.raises(Unauthenticated):
        auth.check("nanovl.v1.Inference", None)


def test_token_file_reload(tmp_path) -> None:
    path = tmp_path / "tokens"
    path.write_text(INF + "\n")
    now = [0.0]
    tokens = TokenSet("inference", TokenSource(file=path), clock=lambda: now[0])
    auth = Authenticator(RULES, {"inference": tokens})
    auth.check("nanovl.v1.Inference", _md(INF))
    path.write_text("# rotated\n" + INF + "-new\n")
    now[0] += 2
    with pytest.raises(Unauthenticated):
        auth.check("nanovl.v1.Inference", _md(INF))
    auth.check("nanovl.v1.Inference", _md(INF + "-new"))
    path.write_text("")  # mid-rotation: keep what we have
    now[0] += 2
    auth.check("nanovl.v1.Inference", _md(INF + "-new"))


def test_exposure_rules() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")
    no_admin = load_token_sets(AuthSettings(inference=TokenSource(tokens=(INF,))))
    with pytest.raises(InvalidArgument, match="--admin-host 0.0.0.0"):
        check_exposure(ServerSettings(admin_host="0.0.0.0", admin_port=50052), no_admin)
    with pytest.raises(InvalidArgument, match="--profiling-on-inference-port"):
        check_exposure(ServerSettings(host="0.0.0.0", profiling_on_inference_port=True), no_admin)
    check_exposure(ServerSettings(admin_port=50052), no_admin)  # loopback: fine
    with_admin = load_token_sets(AuthSettings(admin=TokenSource(tokens=(ADM,))))
    check_exposure(ServerSettings(host="0.0.0.0", admin_host="0.0.0.0", admin_port=50052), with_admin)


def test_tls_settings_and_files(tmp_path) -> None:
    assert TlsSettings.from_flags(None, None, None) is None
    with pytest.raises(InvalidArgument, match="both"):
        TlsSettings.from_flags("c", None, None)
    with pytest.raises(InvalidArgument, match="mTLS is TLS"):
        TlsSettings.from_flags(None, None, "ca")
    ca = CertificateAuthority("ca", tmp_path / "ca")
    a, b = ca.issue("a", server=True), ca.issue("b", server=True)
    load_pem_files(TlsSettings(a.cert, a.key, ca.cert_file))
    with pytest.raises(InvalidArgument, match="TLS files rejected"):
        load_pem_files(TlsSettings(a.cert, b.key))  # key of another certificate
    with pytest.raises(InvalidArgument, match="does not exist"):
        load_pem_files(TlsSettings(a.cert, tmp_path / "nope"))


def test_client_tls_and_token_options(tmp_path) -> None:
    assert TlsConfig.from_values(environ={}) is None
    assert TlsConfig.from_values(enabled=True, environ={}) == TlsConfig()
    env = {"NANOVL_TLS_CA_FILE": "/ca.pem", "NANOVL_TLS_SERVER_NAME": "svc"}
    tls = TlsConfig.from_values(environ=env)
    assert tls == TlsConfig(ca_file="/ca.pem", server_name="svc")
    assert tls.channel_options() == [("grpc.ssl_target_name_override", "svc")]
    with pytest.raises(InvalidArgument, match="both"):
        TlsConfig(cert_file="c")
    with pytest.raises(InvalidArgument, match="cannot read"):
        TlsConfig(ca_file=tmp_path / "missing").credentials()
    assert bearer_metadata(INF) == (("authorization", f"Bearer {INF}"),)
    with pytest.raises(InvalidArgument):
        bearer_metadata("two words")
    path = tmp_path / "t"
    path.write_text("# mine\n\n" + INF + "\n")
    assert read_token_file(path) == INF


def test_cpu_profile_limits_and_path_redaction() -> None:
    limits = CpuProfileLimits(max_duration_s=30, max_rate_hz=100)
    limits.check(CpuProfileRequest(duration_s=30, rate_hz=100))
    with pytest.raises(InvalidArgument, match="--max-cpu-profile-rate-hz"):
        limits.check(CpuProfileRequest(duration_s=1, rate_hz=1000))
    with pytest.raises(InvalidArgument, match="--max-cpu-profile-s"):
        limits.check(CpuProfileRequest(duration_s=31))
    with pytest.raises(NanovlError):
        CpuProfileLimits(max_rate_hz=0)
    import sys
    from pathlib import Path

    import service

    app = str(Path(service.__file__).resolve().parents[1])
    data = f'{{"file": "{app}/service/server.py"}} {sys.prefix}/lib/x.py'.encode()
    redacted = redact_paths(data)
    assert app.encode() not in redacted and sys.prefix.encode() not in redacted
    assert b"$APP/service/server.py" in redacted


def test_auth_check_overhead_is_small() -> None:
    """The per-call cost of the token check (SHA-256 + constant-time compares), measured."""
    auth = Authenticator(RULES, _sets(inference=TokenSource(tokens=(INF,)), admin=TokenSource(tokens=(ADM,))))
    md = _md(INF)
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        auth.check("nanovl.v1.Inference", md)
    per_call_us = (time.perf_counter() - start) / n * 1e6
    print(f"token check: {per_call_us:.2f} us per call")
    assert per_call_us < 200
