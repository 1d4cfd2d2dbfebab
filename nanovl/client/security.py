"""Client side of a secured server: TLS / mTLS channel credentials and bearer tokens.

``TlsConfig`` builds ``grpc.ssl_channel_credentials`` (server verified against ``ca_file``,
or the system's roots without one; a client certificate for mTLS); ``server_name``
overrides the name checked against the server's certificate (connecting by IP address, or
through a tunnel). A token travels as ``authorization: Bearer <token>`` metadata on every
call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from nanovl.errors import InvalidArgument

AUTHORIZATION = "authorization"
# Environment variables the nanovl commands read (flags win).
TLS_ENV = {
    "ca_file": "NANOVL_TLS_CA_FILE",
    "cert_file": "NANOVL_TLS_CERT_FILE",
    "key_file": "NANOVL_TLS_KEY_FILE",
    "server_name": "NANOVL_TLS_SERVER_NAME",
}


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the {what} {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class TlsConfig:
    """TLS for a client channel; ``cert_file`` + ``key_file`` present a client certificate (mTLS)."""

    ca_file: str | os.PathLike[str] | None = None  # None: the system's root certificates
    cert_file: str | os.PathLike[str] | None = None
    key_file: str | os.PathLike[str] | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise InvalidArgument("a client certificate needs both cert_file and key_file (--tls-cert-file/-key-file)")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "CA file") if self.ca_file else None,
            private_key=_read(self.key_file, "client key file") if self.key_file else None,
            certificate_chain=_read(self.cert_file, "client certificate file") if self.cert_file else None,
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    @classmethod
    def from_values(
        cls,
        *,
        enabled: bool = False,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        server_name: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> TlsConfig | None:
        """From command-line values, each falling back to its ``NANOVL_TLS_*`` variable;
        None (plaintext) when nothing asks for TLS."""
        env = os.environ if environ is None else environ
        values = {
            "ca_file": ca_file or env.get(TLS_ENV["ca_file"]) or None,
            "cert_file": cert_file or env.get(TLS_ENV["cert_file"]) or None,
            "key_file": key_file or env.get(TLS_ENV["key_file"]) or None,
            "server_name": server_name or env.get(TLS_ENV["server_name"]) or None,
        }
        if not enabled and not any(values.values()):
            return None
        return cls(**values)


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The first token in ``path`` (blank lines and ``#`` comments skipped)."""
    for line in _read(path, "token file").decode(errors="replace").splitlines():
        token = line.split("#", 1)[0].strip()
        if token:
            return token
    raise InvalidArgument(f"the token file {path} has no token")


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    if token is None:
        return ()
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise InvalidArgument("a bearer token must be one non-empty word")
    return ((AUTHORIZATION, f"Bearer {token}"),)


def channel_settings(
    credentials: grpc.ChannelCredentials | None,
    tls: TlsConfig | None,
    token: str | None,
    metadata: Any,
    options: Any,
) -> tuple[grpc.ChannelCredentials | None, tuple[tuple[str, str], ...], list[tuple[str, Any]]]:
    """(credentials, metadata, extra channel options) for a client given ``tls`` and ``token``."""
    if credentials is not None and tls is not None:
        raise InvalidArgument("pass either credentials or tls, not both")
    if tls is not None:
        credentials = tls.credentials()
    md = tuple(metadata) + bearer_metadata(token)
    return credentials, md, [*options, *(tls.channel_options() if tls else [])]


__all__ = ["TLS_ENV", "TlsConfig", "bearer_metadata", "channel_settings", "read_token_file"]
