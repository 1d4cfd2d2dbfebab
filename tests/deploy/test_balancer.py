"""A fleet: two `nanovl serve` replicas behind HAProxy (``deploy/haproxy/haproxy.cfg`` as
shipped), driven by the real ``nanovl loadtest`` CLI with mixed text/image/audio traffic over
h2c. replica1 is also the operator's full process tree, ``nanovl serve --frontend-processes 2
--exact-mm-sizing ... --admin-port``; replica2 a plain one of the `dynamic` tiny variant, and
the spare of the `no-audio` one (the V2 variants no other module serves, issue 14's matrix).

- ``nanovl loadtest --target A,B`` straight at both replicas: the load is spread, and the
  report has per-target figures (this run also warms both replicas up);
- replica1's process tree, straight at it:

  - ``--exact-mm-sizing`` (a declared largest video: 8 frames of 320x240 at 2 fps; audio:
    5 s; chunked prefill on with a 512-token batch so the applied encoder budget differs from
    vLLM's default), which the parent applies to the engine core it starts: GetBudget
    reports vLLM's default sizing (the whole context for video and audio) beside the applied
    one, read from the engine's worker; an item exactly at the declared maximum is served
    within the applied per-item maximum; an item over it (one frame more, the same frames
    further apart in time, half a second more audio) is refused OUT_OF_RANGE before the
    engine, naming the setting, by each frontend;
  - ``--frontend-processes 2`` (two gRPC server processes over one engine core): the
    requests of many connections spread over both frontends (each one's /metrics counts its
    share), every answer is whole, health is served on both ports;

- replica2 and the spare, straight at each: an image, a video and (where the checkpoint has a
  sound encoder) audio in one prompt through Generate and StreamGenerate: the same items reach
  the model, the same greedy answer, the token counts nanovl's accounting computes;
- (a) SIGTERM replica1 mid-run: readiness turns 503 at once (HAProxy's ``/ready`` check
  takes it out of rotation within ``inter`` x ``fall``), it keeps accepting calls for
  ``--drain-readiness-grace-s`` and both frontends finish those in flight: zero failed
  calls, exit 0, every frontend gone;
- (b) replica1 replaced by the spare started with the others (a balancer of the same
  configuration over the new pair, as a Deployment replaces a pod; text and image traffic, which
  both serve), then kill -9 of replica2 mid-run: only calls in flight on it fail (those it
  had begun answering; HAProxy retries the others elsewhere), with UNAVAILABLE (a stream
  HAProxy cut when its upstream died carries no status; nanovl's client reports it as UNAVAILABLE, see
  ``nanovl.client._base._cut_stream_status``), and every call sent after them succeeds
  (HAProxy retries a call whose connection to the dead replica failed on the other one).
  Only the server process is killed, as a supervisor's kill -9 does: its engine core and
  workers stop by themselves and their shared memory goes with them;
- (c) SIGUSR1 (Kubernetes' preStop hook): readiness 503 while the replica still serves
  direct calls, the balancer takes it out; then its engine dies under a call: the call
  fails UNAVAILABLE at once and the server exits with status 4 (a supervisor restarts it),
  its processes gone.

Engine starts are CI's largest cost: this one module holds every check that needs a
process tree of its own (three replicas started side by side), each replica's
vLLM worker on its own core. HAProxy comes from `make setup` (Debian's package).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest

from loadtest.report import load_result
from loadtest.results import LoadTestResult, RequestRecord
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
HAPROXY_CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.access(p, os.X_OK)), None)

# Two engines starting side by side on a machine also running the session's: minutes when
# the machine is busy (each process imports torch and vLLM), well under one when it is not.
START_TIMEOUT_S = 900
pytestmark = [
    pytest.mark.engine,  # starts engines of its own
    pytest.mark.timeout(START_TIMEOUT_S + 300),  # the module's replicas start in the first test's setup
    pytest.mark.skipif(
        HAPROXY is None,
        reason="haproxy is not installed: `make setup` installs Debian's package (it needs root and apt-get)",
    ),
]

CONCURRENCY = 4  # calls the load tester keeps in flight through the balancer
# How long after a replica's kill HAProxy may still open a stream on its broken connection.
BROKEN_CONNECTION_S = 1.0

SERVE_MAX_MODEL_LEN = 1024


def serve_args(variant: str, limits: str) -> list[str]:
    """A plain replica's flags: the embedded tiny ``variant``, ``limits`` as
    ``--limit-mm-per-prompt``."""
    return [
        "--tiny-variant",
        variant,
        "--no-warmup",  # the first load test warms both replicas up
        "--max-model-len",
        str(SERVE_MAX_MODEL_LEN),
        "--max-num-seqs",
        "8",
        "--limit-mm-per-prompt",
        limits,
        "--served-model-name",
        "nanovl-tiny",
        "--max-uploads-per-peer",  # as deploy/haproxy/haproxy.cfg says: every client is HAProxy
        "0",
    ]


# The replicas serve the V2 variants the V3 module does not (issue 14's matrix, engines shared):
# replica1 `full`, replica2 `dynamic` (dynamic-resolution images), the spare `no-audio`.
REPLICA2_VARIANT, SPARE_VARIANT = "dynamic", "no-audio"
# replica1's: --exact-mm-sizing with a declared largest video (8 frames of 320x240 at 2 fps)
# and audio (5 s); chunked prefill on with a 512-token batch, so that the applied encoder
# budget differs from vLLM's default.
EXACT_SETTING = "video=8x320x240@2,audio=5"
EXACT_MAX_MODEL_LEN = 2048
EXACT_BATCH_TOKENS = 512
EXACT_SERVE_ARGS = [
    "--no-warmup",
    "--exact-mm-sizing",
    EXACT_SETTING,
    "--max-model-len",
    str(EXACT_MAX_MODEL_LEN),
    "--limit-mm-per-prompt",
    '{"image": 1, "video": 1, "audio": 1}',
    "--max-num-seqs",
    "16",
    "--enable-chunked-prefill",
    "--max-num-batched-tokens",
    str(EXACT_BATCH_TOKENS),
    "--served-model-name",
    "nanovl-tiny",
    "--max-uploads-per-peer",
    "0",
]
LOAD_ARGS = [
    "--mix",
    "text=0.5,image=0.3,audio=0.2",
    "--image-size",
    "224x224",
    "--audio-seconds",
    "1",
    "--prompt-words",
    "8",
    "--max-tokens",
    "24",
    "--no-progress",
    "--no-plots",
]


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def _wait_for(what: str, check: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval_s)


@dataclass
class Replica:
    """One `nanovl serve` process (a pod, a container) on its own ports."""

    name: str
    cpu: int
    log_dir: Path
    args: list[str]
    frontends: int = 1  # --frontend-processes: frontend i serves /metrics on metrics_port + i
    admin_port: int | None = None
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=lambda: free_port(consecutive=2))
    proc: subprocess.Popen | None = None
    children: list[psutil.Process] = field(default_factory=list)
    shm: set[str] = field(default_factory=set)  # /dev/shm files its processes map

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.log_dir / f"{self.name}-{self.port}.log").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nanovl.cli", "serve", "--port", str(self.port)]
            + ["--metrics-port", str(self.metrics_port), *self.args]
            + (["--admin-port", str(self.admin_port)] if self.admin_port else [])
            + (["--frontend-processes", str(self.frontends)] if self.frontends > 1 else []),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "VLLM_CPU_OMP_THREADS_BIND": str(self.cpu)},
        )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while any(_http_get(f"http://127.0.0.1:{port}/ready")[0] != 200 for port in self.metrics_ports):
            assert self.proc.poll() is None, f"{self.name} exited {self.proc.returncode}: {self.log_tail()}"
            assert time.monotonic() < deadline, f"{self.name} did not become ready: {self.log_tail()}"
            time.sleep(0.5)
        server = psutil.Process(self.proc.pid)
        self.children = server.children(recursive=True)
        self.shm = {m.path for p in [server, *self.children] for m in _maps(p) if m.path.startswith("/dev/shm/")}

    @property
    def admin_target(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    @property
    def metrics_ports(self) -> list[int]:
        return [self.metrics_port + i for i in range(self.frontends)]

    def engine_core(self) -> psutil.Process:
        return next(c for c in self.children if "EngineCore" in " ".join(c.cmdline()) + c.name())

    def log_tail(self) -> str:
        logs = sorted(self.log_dir.glob(f"{self.name}-*.log"))
        return logs[-1].read_text()[-3000:] if logs else ""

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a series over the samples matching ``labels`` (0 if absent), over every
        frontend."""
        return sum(self.metric_by_frontend(name, **labels))

    def metric_by_frontend(self, name: str, **labels: str) -> list[float]:
        from prometheus_client.parser import text_string_to_metric_families

        values = []
        for port in self.metrics_ports:
            status, text = _http_get(f"http://127.0.0.1:{port}/metrics")
            values.append(
                0.0
                if status != 200
                else sum(
                    s.value
                    for family in text_string_to_metric_families(text)
                    for s in family.samples
                    if s.name == name and labels.items() <= s.labels.items()
                )
            )
        return values

    def in_flight(self) -> float:
        return self.metric("nanovl_requests_in_flight", rpc="Generate")

    def served_ok(self) -> float:
        return self.metric("nanovl_requests_total", rpc="Generate", grpc_status="OK")

    def kill(self) -> None:
        """kill -9 of the whole replica (server and engine processes), as when its node dies."""
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(30)
        for child in self.children:
            with contextlib.suppress(psutil.Error):
                child.kill()


def _maps(p: psutil.Process) -> list:
    try:
        return p.memory_maps(grouped=False)
    except psutil.Error:
        return []


def _gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """The processes still alive (zombies count as gone) after up to ``timeout_s``."""
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    return [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def _engine_left(procs: list[psutil.Process]) -> list[tuple[int, str]]:
    """Engine processes (all but multiprocessing's resource tracker, which unlinks shared
    memory after the server is gone) still running, given a moment to be reaped."""
    engine = [p for p in procs if _is_engine(p)]
    return [(p.pid, p.name()) for p in _gone(engine, timeout_s=5)]


def _is_engine(p: psutil.Process) -> bool:
    try:
        return "resource_tracker" not in " ".join(p.cmdline())
    except psutil.Error:
        return False  # already gone


@dataclass
class Balancer:
    proc: subprocess.Popen
    port: int
    stats_port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def server_states(self) -> dict[str, str]:
        status, text = _http_get(f"http://127.0.0.1:{self.stats_port}/;csv")
        if status != 200:
            return {}
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == "nanovl" and r["svname"].startswith("replica")}

    def wait_all_up(self) -> None:
        _wait_for(
            "HAProxy to see both replicas UP",
            lambda: set(self.server_states().values()) == {"UP"} and len(self.server_states()) == 2,
            60,
            0.2,
        )


@dataclass
class Fleet:
    replicas: list[Replica]  # behind ``balancer``, in its server order (replica1, replica2)
    balancer: Balancer
    out: Path
    spare: Replica | None  # started with the others: replaces the replica a scenario stopped
    started: list[Replica] = field(default_factory=list)  # every replica and balancer, for teardown
    balancers: list[Balancer] = field(default_factory=list)

    def replace(self, stopped: Replica) -> None:
        """``stopped`` (a scenario ended it) replaced by the spare, as a Deployment replaces a
        pod: a balancer of the same configuration over the new pair takes over."""
        assert self.spare is not None and not stopped.running()
        self.replicas = [self.spare if r is stopped else r for r in self.replicas]
        self.spare = None
        self.balancer.proc.terminate()
        self.balancer.proc.wait(10)
        self.balancer = _start_balancer(self.replicas, self.out, "haproxy-2")
        self.balancers.append(self.balancer)
        self.balancer.wait_all_up()


def _start_balancer(replicas: list[Replica], out: Path, name: str) -> Balancer:
    """HAProxy with deploy/haproxy/haproxy.cfg as shipped, over ``replicas`` (its replica1
    and replica2)."""
    assert HAPROXY is not None
    lb_port, stats_port = free_port(), free_port()
    env = {**os.environ, "NANOVL_LB_BIND": f"127.0.0.1:{lb_port}", "NANOVL_LB_STATS": f"127.0.0.1:{stats_port}"}
    for i, r in enumerate(replicas, 1):
        env[f"NANOVL_REPLICA{i}"] = r.target
        env[f"NANOVL_REPLICA{i}_METRICS_PORT"] = str(r.metrics_port)
    proc = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(HAPROXY_CFG)],
        stdout=(out / f"{name}.log").open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    return Balancer(proc, lb_port, stats_port)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    out = tmp_path_factory.mktemp("balancer")
    cpus = os.cpu_count() or 1
    # replica1 is also the operator's full process tree: two frontends over one engine core,
    # with exact encoder sizing and the operator surface (the tests before the scenarios).
    # replica3, the spare, starts beside them rather than after the SIGTERM scenario:
    # engine starts are mostly one process importing at a time, so three side by side take
    # far less than two and then one.
    replicas = [
        Replica("replica1", 0, out, list(EXACT_SERVE_ARGS), frontends=2, admin_port=free_port()),
        Replica("replica2", 1 % cpus, out, serve_args(REPLICA2_VARIANT, '{"image": 1, "video": 1, "audio": 1}')),
    ]
    spare = Replica("replica3", 0, out, serve_args(SPARE_VARIANT, '{"image": 1, "video": 1, "audio": 0}'))
    fleet = None
    try:
        for r in (*replicas, spare):
            r.start()
        for r in (*replicas, spare):
            r.wait_ready()
        balancer = _start_balancer(replicas, out, "haproxy")
        fleet = Fleet(replicas, balancer, out, spare, started=[*replicas, spare], balancers=[balancer])
        balancer.wait_all_up()
        yield fleet
    finally:
        for lb in fleet.balancers if fleet is not None else ():
            if lb.proc.poll() is None:
                lb.proc.terminate()
                lb.proc.wait(10)
        for r in (*replicas, spare):
            r.kill()


def _start_loadtest(target: str, out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nanovl.cli", "loadtest", "--target", target, "--out", str(out), *LOAD_ARGS, *args],
        cwd=REPO,
        stdout=(out.parent / f"{out.name}.log").open("w"),
        stderr=subprocess.STDOUT,
    )


def _finish(loadtest: subprocess.Popen, out: Path) -> LoadTestResult:
    loadtest.wait(300)
    results = out / "results.json"
    assert results.exists(), (out.parent / f"{out.name}.log").read_text()[-3000:]
    return load_result(results)


def _down(balancer: Balancer, server: str) -> bool:
    return balancer.server_states().get(server, "").startswith("DOWN")


def _errors(records: list[RequestRecord]) -> list[tuple[str | None, str | None]]:
    return [(r.error_code, r.error_message) for r in records if not r.ok]


def test_loadtest_spreads_over_two_targets_and_reports_each(fleet: Fleet) -> None:
    a, b = fleet.replicas
    out = fleet.out / "spread"
    result = _finish(_start_loadtest(f"{a.target},{b.target}", out, "--concurrency", "2", "--requests", "12"), out)
    (level,) = result.levels
    assert level.overall.failed == 0, _errors(list(level.requests))
    assert [(t.target, t.stats.succeeded, t.stats.failed) for t in level.by_target] == [
        (a.target, 6, 0),
        (b.target, 6, 0),
    ]
    # Each replica served its share plus its warm-up (one request per kind), as its metrics say.
    assert a.served_ok() == b.served_ok() == 6 + 3


# ---------------------------------------------------------------- replica1's process tree
# `nanovl serve --frontend-processes 2 --exact-mm-sizing ...` as an operator runs it: checked
# straight at replica1 before the scenarios below stop it.


@pytest.fixture(scope="module")
def budget(fleet: Fleet):
    from nanovl.v1 import profiling_pb2 as ppb
    from nanovl.v1 import profiling_pb2_grpc as ppb_grpc

    a = fleet.replicas[0]
    with grpc.insecure_channel(a.admin_target) as channel:
        return ppb_grpc.ProfilingStub(channel).GetBudget(ppb.GetBudgetRequest(), timeout=120)


def _video(num_frames: int, fps: float):
    from nanovl.client import Part

    frames = np.random.default_rng(num_frames).integers(0, 255, (num_frames, 240, 320, 3), dtype=np.uint8)
    return Part.video_frames(frames, fps=fps, num_frames=num_frames)


def _audio(seconds: float):
    from nanovl.client import Part

    rate = 16_000
    wave = (np.random.default_rng(7).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)
    return Part.pcm(wave, sample_rate=rate)


def _greedy():
    from nanovl.client.sampling import Sampling

    return Sampling(max_tokens=2, temperature=0.0)


def test_get_budget_shows_vllm_default_beside_applied(budget) -> None:
    from nanovl.modalities import modality_to_pb

    x = budget.exact_sizing
    assert x.setting == EXACT_SETTING
    default, applied = x.vllm_default, x.applied
    # vLLM's own answer for this model: the whole context per video / audio item.
    assert default.max_tokens_per_item["video"] == EXACT_MAX_MODEL_LEN
    assert default.max_tokens_per_item["audio"] == EXACT_MAX_MODEL_LEN
    assert default.compute_budget_tokens == default.cache_size_tokens == EXACT_MAX_MODEL_LEN
    items = {it.modality: it for it in x.items}
    video, audio = items[modality_to_pb("video")], items[modality_to_pb("audio")]
    assert (video.num_frames, video.width, video.height, video.last_frame_s) == (8, 320, 240, 3.5)
    assert audio.seconds == 5.0 and not video.derived_from_media_limits
    # The engine's worker applies the exact per-item maxima, and builds its budget from them.
    assert applied.max_tokens_per_item["video"] == video.applied_tokens == video.exact_tokens < EXACT_MAX_MODEL_LEN
    assert applied.max_tokens_per_item["audio"] == audio.applied_tokens == audio.exact_tokens < EXACT_MAX_MODEL_LEN
    assert applied.max_tokens_per_item["image"] == default.max_tokens_per_item["image"]
    largest = max(applied.max_tokens_per_item.values())
    assert applied.compute_budget_tokens == applied.cache_size_tokens == max(EXACT_BATCH_TOKENS, largest)
    assert applied.cache_size_tokens < default.cache_size_tokens
    assert budget.encoder.cache_size_tokens == applied.cache_size_tokens  # the worker's own numbers
    assert applied.profile_items >= 1
    assert budget.max_model_len == EXACT_MAX_MODEL_LEN
    # The largest items it advertises are the declared ones, not what the context alone holds.
    largest = {mb.modality: mb for mb in budget.modalities}
    v, a = largest[modality_to_pb("video")], largest[modality_to_pb("audio")]
    assert v.largest_item.video.num_frames == 8 and v.nanovl_max_tokens_per_item <= video.applied_tokens
    assert a.largest_item.audio.seconds == 5.0 and a.nanovl_max_tokens_per_item == audio.applied_tokens


def test_items_at_the_declared_maximum_are_served(fleet: Fleet, budget) -> None:
    from nanovl.client.sync import InferenceClient

    applied = budget.exact_sizing.applied.max_tokens_per_item
    with InferenceClient(fleet.replicas[0].target) as client:
        result = client.generate_text(["Describe ", _video(8, fps=2.0), " and ", _audio(5.0)], sampling=_greedy())
    by_modality = result.usage.prompt_tokens_by_modality
    assert result.usage.completion_tokens >= 1
    assert 0 < by_modality.video <= applied["video"]
    assert 0 < by_modality.audio  # prompt tokens: the audio's embeddings plus its two wrappers


@pytest.mark.parametrize(
    "part, says",
    [
        (lambda: _video(9, fps=2.0), "9 frames"),  # one frame more than declared
        (lambda: _video(8, fps=0.1), "encoder tokens"),  # same frames, timestamps up to 70 s
        (lambda: _audio(5.5), "5.5 s"),
    ],
    ids=["more-frames", "later-timestamps", "longer-audio"],
)
def test_items_over_the_declared_maximum_are_refused_naming_the_setting(fleet: Fleet, part, says) -> None:
    from nanovl.client.sync import InferenceClient

    # Connections of their own, so both frontends answer (the kernel spreads connections).
    for _ in range(4):
        with InferenceClient(fleet.replicas[0].target, options=[("grpc.use_local_subchannel_pool", 1)]) as client:
            with pytest.raises(Exception) as err:
                client.generate_text(["Describe ", part()], sampling=_greedy())
        assert err.value.code == grpc.StatusCode.OUT_OF_RANGE, err.value
        assert "--exact-mm-sizing" in err.value.details and says in err.value.details, err.value.details


async def _generate(target: str, text: str, max_tokens: int):
    from nanovl.v1 import inference_pb2 as pb
    from nanovl.v1 import inference_pb2_grpc as pb_grpc

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


def test_two_frontends_share_the_port(fleet: Fleet) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    a = fleet.replicas[0]
    before = a.metric_by_frontend("nanovl_requests_total", rpc="Generate")

    async def load() -> list:
        return await asyncio.gather(*(_generate(a.target, f"request {i}", 6) for i in range(24)))

    finals = asyncio.run(load())
    assert [f.usage.completion_tokens for f in finals] == [6] * 24
    assert len({f.request_id for f in finals}) == 24
    after = a.metric_by_frontend("nanovl_requests_total", rpc="Generate")
    per_frontend = [x - y for x, y in zip(after, before, strict=True)]
    assert sum(per_frontend) == 24 and min(per_frontend) > 0, per_frontend

    for target in (a.target, a.admin_target):  # health on both ports, from one servicer
        with grpc.insecure_channel(target) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="nanovl.v1.Inference"), timeout=10
            )
            assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_loadtest_connections_reach_both_frontends(fleet: Fleet) -> None:
    """`nanovl loadtest --connections 16` opens 16 TCP connections (one channel would reach
    one frontend process: the kernel deals connections, not calls); 16 requests, one per
    connection, miss a frontend with probability 2^-15."""
    a = fleet.replicas[0]
    before = a.metric_by_frontend("nanovl_requests_total", rpc="Generate")
    out = fleet.out / "connections"
    args = ("--concurrency", "4", "--requests", "16", "--connections", "16", "--mix", "text=1", "--warmup", "0")
    result = _finish(_start_loadtest(a.target, out, *args), out)
    (level,) = result.levels
    assert level.overall.succeeded == 16, _errors(list(level.requests))
    after = a.metric_by_frontend("nanovl_requests_total", rpc="Generate")
    per_frontend = [x - y for x, y in zip(after, before, strict=True)]
    assert sum(per_frontend) == 16 and min(per_frontend) > 0, per_frontend


# ---------------------------------------------------------------- the other V2 variants
# replica2 (`dynamic`) and the spare (`no-audio`), straight at each before the scenarios.


@pytest.mark.parametrize("which", ["replica2", "spare"])
async def test_every_modality_through_both_rpcs_on_the_other_v2_variants(fleet: Fleet, which: str) -> None:
    """Issue 14's matrix (tests/matrix.py) for V2 ``dynamic`` (replica2) and ``no-audio``
    (the spare): each modality its checkpoint has, through Generate and StreamGenerate,
    with the token counts nanovl's accounting computes; audio refused by ``no-audio``."""
    from model.tiny import ensure_tiny_checkpoint
    from nanovl.client import AsyncInferenceClient
    from tests.matrix import check_every_modality_through_both_rpcs

    replica = fleet.replicas[1] if which == "replica2" else fleet.spare
    assert replica is not None and replica.running()
    variant = REPLICA2_VARIANT if which == "replica2" else SPARE_VARIANT
    async with AsyncInferenceClient(replica.target, timeout=300) as client:
        await check_every_modality_through_both_rpcs(client, ensure_tiny_checkpoint(variant), SERVE_MAX_MODEL_LEN)


# ---------------------------------------------------------------- scenarios through HAProxy


def test_sigterm_mid_load_fails_no_call(fleet: Fleet) -> None:
    a, b = fleet.replicas
    out = fleet.out / "sigterm"
    before = a.served_ok()
    loadtest = _start_loadtest(fleet.balancer.target, out, "--concurrency", str(CONCURRENCY), "--duration", "9")
    _wait_for("calls in flight on replica1", lambda: a.in_flight() >= 1 and a.served_ok() >= before + 2, 120, 0.1)
    in_flight_at_sigterm = a.in_flight()
    assert a.proc is not None
    a.proc.send_signal(signal.SIGTERM)
    t_sigterm = time.monotonic()
    _wait_for("HAProxy to take replica1 out", lambda: _down(fleet.balancer, "replica1"), 30)
    detected_s = time.monotonic() - t_sigterm
    result = _finish(loadtest, out)
    frontends = [c for c in psutil.Process(a.proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
    assert len(frontends) == 2, [c.cmdline() for c in psutil.Process(a.proc.pid).children()]
    assert a.proc.wait(120) == 0, a.log_tail()  # drained: every call either frontend accepted finished
    assert "all frontends stopped" in a.log_tail()
    assert not _gone(frontends, timeout_s=10)
    # Within the exit bound, vLLM's own shutdown stopping the engine (verify-10b D5: the
    # bound fired and killed it), and no engine process outlives the server.
    assert "ran past its bound" not in a.log_tail(), a.log_tail()
    assert not _engine_left(a.children), a.log_tail()
    records = [r for lv in result.levels for r in lv.requests]
    failed = _errors(records)
    summary = {
        "scenario": "SIGTERM",
        "calls": len(records),
        "failed": len(failed),
        "in_flight_on_replica_at_signal": in_flight_at_sigterm,
        "balancer_detected_s": round(detected_s, 2),
    }
    (fleet.out / "sigterm.json").write_text(json.dumps(summary))
    print(summary)
    assert not failed, failed
    assert len(records) >= 8 and in_flight_at_sigterm >= 1


def test_kill_9_mid_load_fails_only_the_calls_in_flight_on_it(fleet: Fleet) -> None:
    if not fleet.replicas[0].running():  # the replica the previous scenario drained
        fleet.replace(fleet.replicas[0])
    a, b = fleet.replicas
    out = fleet.out / "kill9"
    before = b.served_ok()
    # The new pair's common modalities: the spare (no-audio) has no sound encoder.
    loadtest = _start_loadtest(
        fleet.balancer.target,
        out,
        *("--concurrency", str(CONCURRENCY), "--duration", "6", "--warmup", "0", "--mix", "text=0.6,image=0.4"),
    )
    _wait_for("calls in flight on replica2", lambda: b.in_flight() >= 2 and b.served_ok() >= before + 2, 120, 0.1)
    in_flight_at_kill = b.in_flight()
    assert b.proc is not None and b.children, "the engine runs in child processes"
    b.proc.kill()  # the server only: its engine processes must notice and stop by themselves
    b.proc.wait(30)
    result = _finish(loadtest, out)
    records = sorted((r for lv in result.levels for r in lv.requests), key=lambda r: r.start_s)
    failed = [r for r in records if not r.ok]
    summary = {
        "scenario": "kill -9",
        "calls": len(records),
        "failed": len(failed),
        "failed_codes": sorted({r.error_code for r in failed}),
        "in_flight_on_replica_at_kill": in_flight_at_kill,
    }
    (fleet.out / "kill9.json").write_text(json.dumps(summary))
    print(summary)
    # The kill hit calls in flight (waited for above). Those that had streamed a response fail
    # UNAVAILABLE; HAProxy retries on the other replica those that had not (its retry-on), so
    # on a slow machine none may fail at all.
    assert {r.error_code for r in failed} <= {"UNAVAILABLE"}, _errors(failed)
    assert len(failed) <= 2 * CONCURRENCY  # those in flight, and the next call of each
    if failed:
        # Only calls in flight at the kill: every failed call was sent before the first failure
        # ended, or in the moment HAProxy still had the broken connection (a stream it opens on
        # it is refused, RST_STREAM REFUSED_STREAM, as a worker whose call just failed sends
        # its next one)...
        first_failure = min(r.start_s + r.latency_s for r in failed)
        assert max(r.start_s for r in failed) <= first_failure + BROKEN_CONNECTION_S, _errors(failed)
        # ...and every call sent after that succeeded, on the other replica.
        later = [r for r in records if r.start_s > first_failure + BROKEN_CONNECTION_S]
        assert later and all(r.ok for r in later), _errors(later)
    assert _down(fleet.balancer, "replica2")
    # The killed server's engine core and workers stopped by themselves, their shared memory gone.
    alive = _gone(b.children, timeout_s=90)
    assert not alive, [(p.pid, p.name()) for p in alive]
    left = {path for path in b.shm if os.path.exists(path)}
    assert not left, left


def test_sigusr1_withdraws_readiness_then_engine_death_exits_4(fleet: Fleet) -> None:
    """Kubernetes' preStop path (deploy/k8s/deployment.yaml): SIGUSR1 turns readiness 503 while
    the replica still serves; the balancer takes it out. Then its engine dies under a call:
    the call fails UNAVAILABLE at once, the server exits 4, and no engine process is left."""
    import grpc

    from nanovl.v1 import inference_pb2 as pb
    from nanovl.v1 import inference_pb2_grpc as pb_grpc

    a = next(r for r in fleet.replicas if r.running())
    assert a.proc is not None
    a.proc.send_signal(signal.SIGUSR1)
    ready = f"http://127.0.0.1:{a.metrics_port}/ready"
    _wait_for("/ready to answer 503", lambda: _http_get(ready)[0] == 503, 10)
    assert _http_get(ready)[1].startswith("draining")
    assert _http_get(f"http://127.0.0.1:{a.metrics_port}/live") == (200, "live\n")
    name = f"replica{fleet.replicas.index(a) + 1}"
    _wait_for(f"HAProxy to take {name} out", lambda: _down(fleet.balancer, name), 30)
    long_call = pb.GenerateRequest(
        parts=[pb.ContentPart(text="go")], sampling=pb.SamplingOptions(max_tokens=900, ignore_eos=True)
    )
    with grpc.insecure_channel(a.target) as channel:
        call = pb_grpc.InferenceStub(channel).Generate(long_call, timeout=300)
        assert next(call).HasField("started")  # withdrawn from rotation, still serving
        next(call)  # generating
        a.engine_core().kill()
        with pytest.raises(grpc.RpcError) as err:
            for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        # What to do, and none of vLLM's pointers into the server's own log.
        assert "retry" in err.value.details() and "stack trace" not in err.value.details()
    assert a.proc.wait(120) == 4, a.log_tail()
    # The server killed and waited for what was left of its engine (verify-10b: a worker
    # re-parented away from the dead engine core outlived it by 10-20 s).
    assert not _engine_left(a.children), a.log_tail()
    alive = _gone(a.children, timeout_s=60)
    assert not alive, [(p.pid, p.name()) for p in alive]
