"""ENGINE-BACKED: one ``nanovl serve --frontend-processes 2 --exact-mm-sizing ...`` process
tree, as an operator runs it, over real sockets. Two features share its one engine start:

``--exact-mm-sizing`` (a declared largest video: 8 frames of 320x240 at 2 fps; audio: 5 s;
chunked prefill on with a 512-token batch so the applied encoder budget differs from
vLLM's default), which the parent applies to the engine core it starts:

- GetBudget reports vLLM's default sizing (the whole context for video and audio) beside
  the applied one, read from the engine's worker;
- an item exactly at the declared maximum is served, and its encoder tokens are the
  applied per-item maximum (audio) or within it (video, whose frames are earlier than the
  worst-case timestamps);
- an item over it (one frame more, the same frames further apart in time, half a second
  more audio) is refused OUT_OF_RANGE before the engine, naming the setting, by each
  frontend.

``--frontend-processes 2`` (two gRPC server processes over one engine core): the requests
of many connections spread over both frontends (each one's /metrics counts its share),
every answer is whole, the admin port and health are served, and SIGTERM drains a call in
flight before the exit with status 0 (the module's last test).
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
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nanovl.cli.frontends import FrontendRole, _exit_status
from nanovl.client import Part
from nanovl.client.sampling import Sampling
from nanovl.client.sync import InferenceClient
from nanovl.modalities import modality_to_pb
from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import inference_pb2_grpc as pb_grpc
from nanovl.v1 import profiling_pb2 as ppb
from nanovl.v1 import profiling_pb2_grpc as ppb_grpc
from service.settings import ServerSettings

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 600
SETTING = "video=8x320x240@2,audio=5"
MAX_MODEL_LEN = 2048
BATCH_TOKENS = 512
RATE = 16_000


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# ------------------------------------------------------------------ pure logic


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


# ------------------------------------------------------------------ the process tree


@dataclass
class Served:
    proc: subprocess.Popen
    log: Path
    target: str
    admin: str
    metrics_port: int
    frontends: list[psutil.Process]
    tree: list[psutil.Process]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    port, admin, metrics_port = _free_ports(3)
    while metrics_port + 1 in (port, admin):
        (metrics_port,) = _free_ports(1)
    log = tmp_path_factory.mktemp("served") / "serve.log"
    cmd = [sys.executable, "-m", "nanovl.cli", "serve", "--frontend-processes", "2", "--no-warmup"]
    cmd += ["--port", str(port), "--admin-port", str(admin), "--metrics-port", str(metrics_port)]
    cmd += ["--exact-mm-sizing", SETTING, "--max-model-len", str(MAX_MODEL_LEN)]
    cmd += ["--limit-mm-per-prompt", '{"image": 1, "video": 1, "audio": 1}', "--max-num-seqs", "16"]
    cmd += ["--enable-chunked-prefill", "--max-num-batched-tokens", str(BATCH_TOKENS)]
    env = {**os.environ, "NANOVL_CACHE_DIR": os.environ.get("NANOVL_CACHE_DIR", str(REPO / ".cache"))}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env)
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
        yield Served(proc, log, f"127.0.0.1:{port}", f"127.0.0.1:{admin}", metrics_port, frontends, tree)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        for child in tree:
            if child.is_running():
                child.kill()


@pytest.fixture(scope="module")
def budget(served) -> ppb.Budget:
    with grpc.insecure_channel(served.admin) as channel:
        return ppb_grpc.ProfilingStub(channel).GetBudget(ppb.GetBudgetRequest(), timeout=120)


@pytest.fixture(scope="module")
def client(served):
    with InferenceClient(served.target) as c:
        yield c


def _video(num_frames: int, fps: float) -> Part:
    frames = np.random.default_rng(num_frames).integers(0, 255, (num_frames, 240, 320, 3), dtype=np.uint8)
    return Part.video_frames(frames, fps=fps, num_frames=num_frames)


def _audio(seconds: float) -> Part:
    wave = (np.random.default_rng(7).standard_normal(int(seconds * RATE)) * 0.1).astype(np.float32)
    return Part.pcm(wave, sample_rate=RATE)


GREEDY = Sampling(max_tokens=2, temperature=0.0)


@pytest.mark.engine
def test_get_budget_shows_vllm_default_beside_applied(budget):
    x = budget.exact_sizing
    assert x.setting == SETTING
    default, applied = x.vllm_default, x.applied
    # vLLM's own answer for this model: the whole context per video / audio item.
    assert default.max_tokens_per_item["video"] == MAX_MODEL_LEN
    assert default.max_tokens_per_item["audio"] == MAX_MODEL_LEN
    assert default.compute_budget_tokens == default.cache_size_tokens == MAX_MODEL_LEN
    items = {it.modality: it for it in x.items}
    video, audio = items[modality_to_pb("video")], items[modality_to_pb("audio")]
    assert (video.num_frames, video.width, video.height, video.last_frame_s) == (8, 320, 240, 3.5)
    assert audio.seconds == 5.0 and not video.derived_from_media_limits
    # The engine's worker applies the exact per-item maxima, and builds its budget from them.
    assert applied.max_tokens_per_item["video"] == video.applied_tokens == video.exact_tokens < MAX_MODEL_LEN
    assert applied.max_tokens_per_item["audio"] == audio.applied_tokens == audio.exact_tokens < MAX_MODEL_LEN
    assert applied.max_tokens_per_item["image"] == default.max_tokens_per_item["image"]
    largest = max(applied.max_tokens_per_item.values())
    assert applied.compute_budget_tokens == applied.cache_size_tokens == max(BATCH_TOKENS, largest)
    assert applied.cache_size_tokens < default.cache_size_tokens
    assert budget.encoder.cache_size_tokens == applied.cache_size_tokens  # the worker's own numbers
    assert applied.profile_items >= 1


@pytest.mark.engine
def test_items_at_the_declared_maximum_are_served(client, budget):
    applied = budget.exact_sizing.applied.max_tokens_per_item
    result = client.generate_text(["Describe ", _video(8, fps=2.0), " and ", _audio(5.0)], sampling=GREEDY)
    by_modality = result.usage.prompt_tokens_by_modality
    assert result.usage.completion_tokens >= 1
    assert 0 < by_modality.video <= applied["video"]
    assert 0 < by_modality.audio  # prompt tokens: the audio's embeddings plus its two wrappers


@pytest.mark.parametrize(
    "part, says",
    [
        (lambda: _video(9, fps=2.0), "9 frames"),  # one frame more than declared
        (lambda: _video(8, fps=0.1), "encoder tokens"),  # same frames, timestamps up to 70 s
        (lambda: _audio(5.5), "5.50 s"),
    ],
    ids=["more-frames", "later-timestamps", "longer-audio"],
)
@pytest.mark.engine
def test_items_over_the_declared_maximum_are_refused_naming_the_setting(served, part, says):
    # Connections of their own, so both frontends answer (the kernel spreads connections).
    for _ in range(4):
        with InferenceClient(served.target, options=[("grpc.use_local_subchannel_pool", 1)]) as client:
            with pytest.raises(Exception) as err:
                client.generate_text(["Describe ", part()], sampling=GREEDY)
        assert err.value.code == grpc.StatusCode.OUT_OF_RANGE, err.value
        assert "--exact-mm-sizing" in err.value.details and says in err.value.details, err.value.details


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
def test_two_frontends_share_the_port(served: Served) -> None:
    before = [_requests_total(served.metrics_port), _requests_total(served.metrics_port + 1)]

    async def load() -> list[pb.Final]:
        return await asyncio.gather(*(_generate(served.target, f"request {i}", 6) for i in range(24)))

    finals = asyncio.run(load())
    assert [f.usage.completion_tokens for f in finals] == [6] * 24
    assert len({f.request_id for f in finals}) == 24
    after = [_requests_total(served.metrics_port), _requests_total(served.metrics_port + 1)]
    per_frontend = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(per_frontend) == 24 and min(per_frontend) > 0, per_frontend

    with grpc.insecure_channel(served.target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="nanovl.v1.Inference"), timeout=10
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(served.admin) as channel:
        budget = ppb_grpc.ProfilingStub(channel).GetBudget(ppb.GetBudgetRequest(), timeout=60)
        assert budget.max_model_len == MAX_MODEL_LEN


@pytest.mark.engine
def test_sigterm_drains_both_frontends_and_exits_0(served: Served) -> None:
    """The module's last test: it stops the process tree."""

    async def drained() -> pb.Final:
        call = asyncio.create_task(_generate(served.target, "a long answer", 200))
        await asyncio.sleep(1.0)
        served.proc.send_signal(signal.SIGTERM)
        return await call

    final = asyncio.run(drained())
    assert final.usage.completion_tokens == 200
    assert served.proc.wait(120) == 0, served.log.read_text()[-4000:]
    assert "all frontends stopped" in served.log.read_text()
    assert not [p for p in served.frontends if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    # vLLM's shutdown stopped the engine within the bound (verify-10b D5), and no engine
    # process outlives the server (multiprocessing's resource tracker excepted: it unlinks
    # shared memory after the server is gone).
    assert "ran past its bound" not in served.log.read_text()
    engine = [p for p in served.tree if _running_engine(p)]
    _, left = psutil.wait_procs(engine, timeout=5)
    assert not [p for p in left if _running_engine(p)], [(p.pid, p.name()) for p in left]


def _running_engine(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline())
    except psutil.Error:
        return False
