"""``nanovl serve --frontend-processes 2``: two gRPC server processes over one engine core.

One real ``nanovl serve`` process tree: the requests of many connections spread over both
frontends (each one's /metrics counts its share), every answer is whole, the admin port and
health are served, and SIGTERM drains a call in flight before the exit with status 0.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nanovl.cli.frontends import FrontendRole, _exit_status
from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import inference_pb2_grpc as pb_grpc
from nanovl.v1 import profiling_pb2, profiling_pb2_grpc
from service.settings import ServerSettings

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 600


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


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


def _requests_total(metrics_port: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return int(
        sum(float(v) for v in re.findall(r'^nanovl_requests_total\{[^}]*rpc="Generate"[^}]*\} (\S+)$', text, re.M))
    )


async def _generate(target: str, text: str, max_tokens: int) -> pb.Final:
    # A connection of its own (channels otherwise share one through gRPC's global subchannel
    # pool), which the kernel hands to one of the frontends.
    async with grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        final = None
        async for response in pb_grpc.InferenceStub(channel).Generate(
            pb.GenerateRequest(
                parts=[pb.ContentPart(text=text)],
                sampling=pb.SamplingOptions(max_tokens=max_tokens, ignore_eos=True, temperature=0.0),
            ),
            timeout=300,
        ):
            if response.HasField("final"):
                final = response.final
        assert final is not None
        return final


@pytest.mark.engine
def test_two_frontends_share_the_port_and_drain_together(tmp_path: Path) -> None:
    port, admin_port, metrics_port = _free_ports(3)
    while metrics_port + 1 in (port, admin_port):
        (metrics_port,) = _free_ports(1)
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanovl.cli", "serve", "--frontend-processes", "2", "--no-warmup"]
        + ["--port", str(port), "--admin-port", str(admin_port), "--metrics-port", str(metrics_port)]
        + ["--max-model-len", "1024", "--max-num-seqs", "16"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        env={**os.environ, "NANOVL_CACHE_DIR": os.environ.get("NANOVL_CACHE_DIR", str(REPO / ".cache"))},
    )
    target = f"127.0.0.1:{port}"
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "with 2 frontend processes" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(1)
        tree = psutil.Process(proc.pid).children(recursive=True)
        frontends = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        assert len(frontends) == 2, [c.cmdline() for c in psutil.Process(proc.pid).children()]

        async def load() -> list[pb.Final]:
            return await asyncio.gather(*(_generate(target, f"request {i}", 6) for i in range(24)))

        finals = asyncio.run(load())
        assert [f.usage.completion_tokens for f in finals] == [6] * 24
        assert len({f.request_id for f in finals}) == 24
        per_frontend = [_requests_total(metrics_port), _requests_total(metrics_port + 1)]
        assert sum(per_frontend) == 24 and min(per_frontend) > 0, per_frontend

        with grpc.insecure_channel(target) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="nanovl.v1.Inference"), timeout=10
            )
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(f"127.0.0.1:{admin_port}") as channel:
            budget = profiling_pb2_grpc.ProfilingStub(channel).GetBudget(profiling_pb2.GetBudgetRequest(), timeout=60)
            assert budget.max_model_len == 1024

        # SIGTERM with a call in flight: both frontends drain, the call finishes whole, exit 0.
        async def drained() -> pb.Final:
            call = asyncio.create_task(_generate(target, "a long answer", 200))
            await asyncio.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            return await call

        final = asyncio.run(drained())
        assert final.usage.completion_tokens == 200
        assert proc.wait(120) == 0, log.read_text()[-4000:]
        assert "all frontends stopped" in log.read_text()
        assert not [p for p in frontends if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        if proc.poll() is None:
            proc.kill()
        for child in tree:
            if child.is_running():
                child.kill()
