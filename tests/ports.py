"""Free TCP ports for test servers (the test suite, ``make fuzz``)."""

from __future__ import annotations

_HANDED_OUT: set[int] = set()


def _ephemeral_ports() -> range:
    try:
        low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def free_port(consecutive: int = 1) -> int:
    """A free TCP port on 127.0.0.1 (with ``consecutive`` - 1 free ports after it, e.g. for a
    server's per-frontend metrics ports), never the same one twice in a session, and outside
    the kernel's ephemeral range: a server stopped and started again on its port (the fleet
    tests) would otherwise find it taken by some outgoing connection's local end."""
    import random

    from bench.servers import port_free

    ephemeral = _ephemeral_ports()
    rng = random.Random()
    while True:
        port = rng.randrange(10000, 65536 - consecutive)
        ports = range(port, port + consecutive)
        if any(p in ephemeral or p in _HANDED_OUT or 50000 <= p < 51000 for p in ports):  # 50xxx: nanovl's defaults
            continue
        if all(port_free(p) for p in ports):
            _HANDED_OUT.update(ports)
            return port
