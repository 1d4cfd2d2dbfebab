"""TLS and mutual TLS for nanovl's gRPC servers, with certificate reload without a restart.

``grpc.dynamic_ssl_server_credentials`` asks a fetcher for the certificate configuration at
every TLS handshake (gRPC calls it from one of its own threads; this works with ``grpc.aio``
servers in grpcio 1.85). The fetcher here stats the PEM files and hands gRPC a new
configuration only when one of them changed and the new set is valid (key matches
certificate, CA file parses); otherwise the connections keep the current one. New
connections then use the new certificate; established connections keep theirs.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from nanovl.errors import InvalidArgument

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsSettings:
    cert_file: Path
    key_file: Path
    # Client certificates are required, and must chain to this CA bundle, when given.
    client_ca_file: Path | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.cert_file, self.key_file) + ((self.client_ca_file,) if self.client_ca_file else ())

    @classmethod
    def from_flags(cls, cert_file: str | None, key_file: str | None, client_ca_file: str | None) -> TlsSettings | None:
        if not cert_file and not key_file:
            if client_ca_file:
                raise InvalidArgument("--tls-client-ca-file needs --tls-cert-file and --tls-key-file (mTLS is TLS)")
            return None
        if not (cert_file and key_file):
            raise InvalidArgument("TLS needs both --tls-cert-file and --tls-key-file")
        return cls(Path(cert_file), Path(key_file), Path(client_ca_file) if client_ca_file else None)


@dataclass(frozen=True)
class _Loaded:
    key: bytes
    chain: bytes
    client_ca: bytes | None


def load_pem_files(settings: TlsSettings) -> _Loaded:
    """Reads and checks the files (the key matches the certificate; the CA bundle parses)."""
    for path in settings.files:
        if not path.is_file():
            raise InvalidArgument(f"TLS file {path} does not exist or is not a file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
        if settings.client_ca_file is not None:
            ctx.load_verify_locations(cafile=settings.client_ca_file)
    except ssl.SSLError as exc:
        raise InvalidArgument(
            f"TLS files rejected ({exc.reason or exc}): --tls-cert-file must be a PEM certificate chain whose "
            "key is --tls-key-file (PEM, unencrypted); --tls-client-ca-file a PEM CA bundle"
        ) from None
    except OSError as exc:
        raise InvalidArgument(f"cannot read the TLS files: {exc}") from None
    return _Loaded(
        key=settings.key_file.read_bytes(),
        chain=settings.cert_file.read_bytes(),
        client_ca=settings.client_ca_file.read_bytes() if settings.client_ca_file else None,
    )


class _ReloadingFetcher:
    """The ``certificate_configuration_fetcher``: a new configuration when the files changed."""

    def __init__(self, settings: TlsSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._stamp = self._stamp_now()
        self.initial = self._configuration(load_pem_files(settings))

    def _stamp_now(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in self._settings.files:
            try:
                st = os.stat(path)
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamps.append((0, 0, 0))
        return tuple(stamps)

    @staticmethod
    def _configuration(loaded: _Loaded) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(loaded.key, loaded.chain)], loaded.client_ca)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        # Runs in a gRPC thread at each handshake: never raise, keep it cheap (a few stats).
        try:
            with self._lock:
                stamp = self._stamp_now()
                if stamp == self._stamp:
                    return None
                self._stamp = stamp
                # Mid-rotation (certificate written, key not yet) this fails; the next write
                # changes the stamp again and the next handshake retries.
                loaded = load_pem_files(self._settings)
            log.info("TLS: reloaded %s", ", ".join(str(p) for p in self._settings.files))
            return self._configuration(loaded)
        except Exception as exc:  # noqa: BLE001 - an exception here would fail the handshake
            log.warning("TLS: keeping the current certificate; the changed files do not load: %s", exc)
            return None


def server_credentials(settings: TlsSettings) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port``; checks the files now (``InvalidArgument``)."""
    fetcher = _ReloadingFetcher(settings)
    return grpc.dynamic_ssl_server_credentials(fetcher.initial, fetcher, require_client_authentication=settings.mutual)


__all__ = ["TlsSettings", "load_pem_files", "server_credentials"]
