"""``nanovl serve`` under a supervisor: real processes, real signals.

- kill -9 of the server: its engine core and workers stop by themselves and their
  shared memory goes with them (nothing for the supervisor to clean up);
- the engine dies: the in-flight call fails UNAVAILABLE at once and the server exits with
  status 4, so Kubernetes or systemd starts a fresh one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
import pytest

from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import inference_pb2_grpc as pb_grpc

pytestmark = pytest.mark.engine  # starts its own servers

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, tmp_path: Path) -> None:
        self.port = _free_port()
        self.log = tmp_path / f"serve-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nanovl.cli", "serve", "--port", str(self.port), "--metrics-port", "0"]
            + ["--no-warmup", "--max-model-len", "1024"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            env={**os.environ, "NANOVL_CACHE_DIR": os.environ.get("NANOVL_CACHE_DIR", str(REPO / ".cache"))},
        )
        self.target = f"127.0.0.1:{self.port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while "serving on" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(1)
        server = psutil.Process(self.proc.pid)
        self.children = server.children(recursive=True)
        self.engine_core = next(c for c in self.children if "EngineCore" in " ".join(c.cmdline()) + c.name())
        self.shm = {m.path for p in [server, *self.children] for m in _maps(p) if m.path.startswith("/dev/shm/")}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        for child in self.children:
            if child.is_running():
                child.kill()


def _maps(p: psutil.Process) -> list:
    try:
        return p.memory_maps(grouped=False)
    except psutil.Error:
        return []


def _gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    return [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def test_kill_9_of_the_server_leaves_no_engine_processes_or_shared_memory(tmp_path: Path) -> None:
    served = Served(tmp_path)
    try:
        assert served.children, "the engine runs in child processes"
        os.kill(served.proc.pid, signal.SIGKILL)
        served.proc.wait(10)
        alive = _gone(served.children, timeout_s=90)
        assert not alive, [(p.pid, p.name()) for p in alive]
        left = {path for path in served.shm if os.path.exists(path)}
        assert not left, left
    finally:
        served.stop()


def test_engine_death_fails_the_call_at_once_and_exits_4(tmp_path: Path) -> None:
    served = Served(tmp_path)
    try:
        with grpc.insecure_channel(served.target) as channel:
            call = pb_grpc.InferenceStub(channel).Generate(
                pb.GenerateRequest(
                    parts=[pb.ContentPart(text="go")], sampling=pb.SamplingOptions(max_tokens=900, ignore_eos=True)
                ),
                timeout=300,
            )
            assert next(call).HasField("started")
            next(call)  # generating
            served.engine_core.kill()
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                for _ in call:
                    pass
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            # What to do, and none of vLLM's pointers into the server's own log.
            assert "retry" in err.value.details() and "stack trace" not in err.value.details()
            assert time.monotonic() - t0 < 30
        assert served.proc.wait(60) == 4, served.log.read_text()[-3000:]
        assert not _gone(served.children, timeout_s=60)
    finally:
        served.stop()
