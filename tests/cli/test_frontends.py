"""``nanovl serve --frontend-processes``: the pure logic of the frontends' settings and exit
status. The process tree itself runs as replica1 of the fleet (tests/deploy/test_balancer.py),
which shares its engine start with the fleet's."""

from __future__ import annotations

import socket

from nanovl.cli.frontends import FrontendRole, _exit_status, _port_in_use
from service.settings import ServerSettings


def test_only_frontend_0_serves_the_admin_and_health_ports() -> None:
    base = ServerSettings(admin_port=50052, health_port=50053)
    first = FrontendRole(0, 2, {}, None).settings(base)
    other = FrontendRole(1, 2, {}, None).settings(base)
    assert (first.reuse_port, first.admin_port, first.health_port) == (True, 50052, 50053)
    assert (other.reuse_port, other.admin_port, other.health_port) == (True, None, None)
    assert not base.reuse_port  # a lone server fails on a busy port instead of sharing it


def test_exit_status_is_the_worst_of_the_frontends() -> None:
    assert _exit_status({1: 0, 2: 0}) == 0
    assert _exit_status({1: 0, 2: 3}) == 3
    assert _exit_status({1: 3, 2: 4}) == 4
    assert _exit_status({1: 0, 2: -9}) == 1  # killed: a failure the supervisor must see
    assert _exit_status({1: 0, 2: 1}) == 1


def _listener(reuse_port: bool = False) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_a_port_is_in_use_while_a_server_listens_not_after_it_stopped() -> None:
    """verify-drain: a restart within a minute of the last server on the port was refused
    ("Address already in use"): its closed connections (TIME_WAIT) held the check's bind."""
    for reuse_port in (False, True):  # a lone server; another --frontend-processes server
        server = _listener(reuse_port)
        port = server.getsockname()[1]
        assert _port_in_use("127.0.0.1", port) is not None
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server side closes first: its end of the connection is in TIME_WAIT
        client.close()
        server.close()
        assert _port_in_use("127.0.0.1", port) is None
