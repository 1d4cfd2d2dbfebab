"""``nanovl serve --frontend-processes``: the pure logic of the frontends' settings and exit
status. The process tree itself runs as replica1 of the fleet (tests/deploy/test_balancer.py),
which shares its engine start with the fleet's."""

from __future__ import annotations

from nanovl.cli.frontends import FrontendRole, _exit_status
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
