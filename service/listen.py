"""Binding the ports ``nanovl serve`` listens on, with errors that name the flag."""

from __future__ import annotations

import socket
from collections.abc import Sequence

import grpc

from nanovl.errors import FailedPrecondition
from service.tls import TlsSettings, server_credentials


def listen(server: grpc.aio.Server, address: str, flag: str, tls: TlsSettings | None = None) -> int:
    """Binds ``address`` (``host:port``); the bound port. Raises :class:`FailedPrecondition`
    naming ``flag`` when it cannot be bound (grpc's own error says only "Failed to bind")."""
    try:
        bound = (
            server.add_insecure_port(address)
            if tls is None
            else server.add_secure_port(address, server_credentials(tls))
        )
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise FailedPrecondition(_unbindable(address, flag))
    return bound


def _unbindable(address: str, flag: str) -> str:
    return (
        f"cannot listen on {address} ({flag}): the port is in use or the address is not this "
        f"host's; stop what holds it or choose another {flag}"
    )


def check_listen_addresses(addresses: Sequence[tuple[str, int, str]]) -> None:
    """Binds and listens on each ``(host, port, flag)`` (port 0 and None skipped), all at
    once, then releases them, before anything slow starts: a port in use, or one port given
    to two flags (verify-10d F4), fails ``nanovl serve`` in a second rather than after the
    engine's start. Raises :class:`FailedPrecondition` naming the flags. SO_REUSEADDR as
    gRPC Core sets it (a port in TIME_WAIT is free); no SO_REUSEPORT, so a port another
    server listens on is in use even when that server shares it (``--frontend-processes``)."""
    held: list[tuple[socket.socket, int, str]] = []
    try:
        for host, port, flag in addresses:
            if not port:
                continue
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            except socket.gaierror as exc:
                raise FailedPrecondition(f"cannot listen on {host}:{port} ({flag}): {exc.strerror}") from None
            family, kind, proto, _, sockaddr = infos[0]
            probe = socket.socket(family, kind, proto)
            held.append((probe, port, flag))
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
                probe.listen(1)  # a listener: a second bind of the same address fails, as gRPC's would
            except OSError:
                same = next((f for _, p, f in held[:-1] if p == port), None)
                if same is not None:
                    raise FailedPrecondition(
                        f"{flag} {port} is also given as {same}: each listener needs a port of its own"
                    ) from None
                raise FailedPrecondition(_unbindable(f"{host}:{port}", flag)) from None
    finally:
        for probe, _, _ in held:
            probe.close()
