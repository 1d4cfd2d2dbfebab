"""The benchmark's issue-16 logic without an engine: adaptive passes, the new targets and
why they were missed, the before/after table, the py-spy owner split, the chunked-upload
case's video and summary, the Rust frontend side's detection and wire messages, side
variants, ports and the CPU split by process."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from bench.baseline import load_baseline
from bench.config import BenchConfig, PassPolicy, UploadSpec, parse_variant
from bench.cpu import CpuUsage, is_engine_process
from bench.passes import is_settled, run_schedule, spread
from bench.plan import Point
from bench.profile import (
    GRPC,
    LOOP,
    NANOVL,
    OTHER,
    OWNERS,
    PROTOBUF,
    TRACING,
    VLLM_DETOK,
    frame_owner,
    split_speedscope,
)
from bench.report import render_markdown
from bench.results import (
    BenchResult,
    PointResult,
    ProfileEntry,
    ProfileSummary,
    SideRun,
    UploadResult,
    UploadSample,
    write_json,
)
from bench.servers import PortPool, missing_flags, server_launch
from bench.sides import PointOutcome
from bench.targets import FRONTEND_CPU, UPLOAD, VS_PEERS_THROUGHPUT, VS_PEERS_TTFT, check_targets
from bench.upload import upload_summary
from bench.why import why_missed
from nanovl.errors import InvalidArgument
from tests.bench.builders import bench_result, level

# --------------------------------------------------------------------------- helpers


_level = level


def _cpu(frontend_ms_per_token: float) -> CpuUsage:
    # 40 output tokens per point (see _level).
    return CpuUsage(
        window_s=1.0, frontend_s=frontend_ms_per_token * 40 / 1000, engine_s=0.5, client_s=0.05, other_s=0.0
    )


def _run(side: str, figures: dict[int, tuple], workload: str = "text") -> SideRun:
    """figures: c -> (tok/s, ttft_s, frontend ms/token[, other passes' tok/s...])."""
    points = []
    for c, (tps, ttft, ms, *others) in figures.items():
        points.append(PointResult(side, workload, c, _level(c, tps, ttft), cpu=_cpu(ms), pass_index=0))
        for k, other in enumerate(others, start=1):
            points.append(
                PointResult(side, workload, c, _level(c, other, ttft), cpu=_cpu(ms), pass_index=k, chosen=False)
            )
    return SideRun(side, f"python -m {side}", 1.0, tuple(points))


_result = bench_result


TEXT = BenchConfig(
    sides=("inprocess", "nanovl", "vllm-http", "vllm-grpc", "vllm-rust"),
    workloads=("text",),
    levels=((1, 4), (8, 4)),
    upload=replace(UploadSpec(), enabled=False),
)


# --------------------------------------------------------------------------- passes


def _fake_points(levels: tuple[int, ...], max_passes: int) -> list[Point]:
    class _Cfg:
        mix = type("M", (), {"kinds": ("text",)})()

    points = [Point("text", 4, _Cfg(), (), (), warmup_only=True)]  # type: ignore[arg-type]
    points += [Point("text", c, _Cfg(), (), (), pass_index=k) for k in range(max_passes) for c in levels]  # type: ignore[arg-type]
    return points


def _schedule(rates: dict[int, list[float]], policy: PassPolicy, step_s: float = 1.0) -> list[tuple[int, int]]:
    """Run the scheduler against fixed throughputs per level and pass; (c, pass) measured."""
    now = [0.0]
    measured: list[tuple[int, int]] = []

    async def measure(p: Point) -> PointOutcome:
        now[0] += step_s
        if p.warmup_only:
            return PointOutcome(p.workload, p.concurrency, None, warmup_only=True)
        measured.append((p.concurrency, p.pass_index))
        tps = rates[p.concurrency][p.pass_index]
        return PointOutcome(p.workload, p.concurrency, _level(p.concurrency, tps, 0.1), pass_index=p.pass_index)  # type: ignore[arg-type]

    points = _fake_points(tuple(rates), policy.max_passes)
    asyncio.run(run_schedule(points, measure, policy, clock=lambda: now[0]))
    return measured


def test_extra_passes_go_only_to_points_whose_two_fastest_passes_disagree() -> None:
    policy = PassPolicy(min_passes=2, max_passes=4, agree_within=0.10, extra_budget_s=1000)
    measured = _schedule({1: [100, 98, 50, 50], 8: [100, 60, 99, 10]}, policy)
    # Interleaved first passes, then c=8 alone until its two fastest agree (100 and 99).
    assert measured == [(1, 0), (8, 0), (1, 1), (8, 1), (8, 2)]


def test_extra_passes_stop_at_max_passes_and_at_the_budget() -> None:
    noisy = {1: [100, 50, 40, 30], 8: [100, 50, 40, 30]}
    assert len(_schedule(noisy, PassPolicy(2, 3, 0.10, 1000))) == 6  # capped at 3 passes each
    # Budget of 1.5 s at 1 s per pass: one extra round (2 passes) starts, then no more.
    assert len(_schedule(noisy, PassPolicy(2, 4, 0.10, 1.5))) == 6


def test_spread_and_settled() -> None:
    assert spread([100.0]) is None
    assert spread([90.0, 100.0, 50.0]) == pytest.approx(0.10)
    ok = [PointOutcome("text", 1, _level(1, r, 0.1)) for r in (100.0, 95.0)]  # type: ignore[arg-type]
    assert is_settled(ok, PassPolicy(2, 4, 0.10))
    assert not is_settled(ok[:1], PassPolicy(2, 4, 0.10))
    assert is_settled(ok[:1], PassPolicy(1, 1))


# --------------------------------------------------------------------------- targets and why


def _text_result(**kw: object) -> BenchResult:
    runs = [
        _run("inprocess", {1: (100.0, 0.020, 0.5), 8: (700.0, 0.050, 0.15)}),
        # nanovl: ahead of every peer at c=1; behind HTTP at c=8 (passes overlap), TTFT worse at c=8
        _run("nanovl", {1: (105.0, 0.021, 0.40), 8: (600.0, 0.090, 0.40, 590.0)}),
        _run("vllm-http", {1: (95.0, 0.025, 0.45), 8: (640.0, 0.080, 0.30, 500.0)}),
        _run("vllm-grpc", {1: (100.0, 0.023, 0.42), 8: (580.0, 0.060, 0.20)}),
        SideRun("vllm-rust", "", None, (), skipped="vLLM's Rust frontend is not installed: vllm-rs missing"),
    ]
    return _result(TEXT, runs, **kw)


def test_new_targets_compare_nanovl_with_every_peer_that_ran() -> None:
    checks = {(c.target, c.concurrency): c for c in check_targets(_text_result()) if not c.earlier}
    assert checks[(VS_PEERS_THROUGHPUT, 1)].met is True
    assert checks[(VS_PEERS_THROUGHPUT, 1)].measured == "1.11× (c), 1.05× (d)"  # the skipped (e) is left out
    assert checks[(VS_PEERS_THROUGHPUT, 8)].met is False
    assert checks[(VS_PEERS_TTFT, 1)].met is True
    assert checks[(VS_PEERS_TTFT, 8)].met is False
    assert checks[(FRONTEND_CPU, 1)].met is True
    assert checks[(FRONTEND_CPU, 8)].met is False
    assert checks[(FRONTEND_CPU, 8)].measured == "(b) 0.400 · (c) 0.300 · (d) 0.200 ms"


def test_no_peer_means_not_measured_not_met() -> None:
    result = _text_result()
    result = replace(result, sides=tuple(r for r in result.sides if r.side in ("inprocess", "nanovl")))
    new = [c for c in check_targets(result) if c.target in (VS_PEERS_THROUGHPUT, FRONTEND_CPU)]
    assert new and all(c.met is None for c in new)


def test_why_gives_the_measured_reason_for_each_miss() -> None:
    result = _text_result()
    text = "\n".join(why_missed(result, check_targets(result)))
    # c=8: HTTP's passes 500-640 overlap nanovl's 590-600; nanovl's frontend +0.1 ms/token.
    assert "within noise: nanovl's passes 590–600 tok/s overlap (c)'s 500–640" in text
    assert "nanovl's frontend used +0.100 ms CPU per token more" in text
    assert "**TTFT at text c=8**: nanovl 90.0 ms vs (d) 60.0 ms (+30.0 ms)" in text
    assert "| text | 8 | 0.400 | (d) 0.200 | +0.200 |" in text


def test_upload_target_and_summary() -> None:
    spec = UploadSpec(repeats=2)

    def sample(variant: str, i: int, client: float, server: float) -> UploadSample:
        upload = 0.05 if variant == "stream" else 0.0
        return UploadSample(variant, i, 21_000_000, client, server, upload, 0.3, 0.1, 0.2, 600)

    up = UploadResult(
        spec,
        250,
        10.4,
        (
            sample("stream", 0, 1.10, 1.00),
            sample("unary", 0, 1.06, 1.00),
            sample("stream", 1, 1.26, 1.20),
            sample("unary", 1, 1.25, 1.00),
        ),
        server_limits=(64 << 20, 512 << 20),
    )
    s = upload_summary(up)
    assert s.stream_client_ttft == pytest.approx(1.18)
    assert s.unary_server_ttft == pytest.approx(1.00)
    assert s.added == pytest.approx(0.18)
    assert s.before_end == pytest.approx(0.08)  # client − server TTFT of the streams: 0.10 and 0.06
    result = _text_result(upload=up)
    check = next(c for c in check_targets(result) if c.target == UPLOAD)
    assert check.met is True and check.measured.startswith("+18%")
    up_bad = replace(up, samples=tuple(replace(x, client_ttft_s=x.client_ttft_s * 1.5) for x in up.samples))
    bad = _text_result(upload=up_bad)
    checks = check_targets(bad)
    assert next(c for c in checks if c.target == UPLOAD).met is False
    assert "**Chunked upload** (+77%)" in "\n".join(why_missed(bad, checks))


# --------------------------------------------------------------------------- report


def test_report_renders_every_issue16_section(tmp_path: Path) -> None:
    split = tuple(ProfileEntry(o, 100.0 / len(OWNERS)) for o in OWNERS)
    prof = ProfileSummary(
        "text",
        8,
        12.3,
        str(tmp_path / "p.json"),
        (),
        (ProfileEntry("send (grpc)", 9.5),),
        native=True,
        split=split,
        frontend_ms_per_token=0.5,
    )
    result = _text_result(profiles=(prof,))
    text = render_markdown(result, [], tmp_path / "benchmarks.md", client_cpu=1)
    assert "| text | 8 | **missed**: 0.94× (c), 1.03× (d) |" in text
    # Every side's frontend CPU per token, the lowest frontend in bold, (a) never bold.
    assert "| text | 8 | 0.150 | 0.400 | 0.300 | **0.200** |" in text
    assert "## Sides not run" in text and "(e) vLLM Rust frontend gRPC: vLLM's Rust frontend is not installed" in text
    assert "### Where nanovl's frontend time goes (py-spy --native)" in text
    # Shares × the measured frontend ms/token at text c=8 (0.40).
    assert f"| {GRPC} | 10.0 · 0.040 |" in text
    assert "### Why targets were missed" in text


def test_before_after_reads_a_saved_results_json(tmp_path: Path) -> None:
    before = _text_result()
    path = write_json(before, tmp_path / "results.json")
    baseline = load_baseline(path)
    assert baseline.point("nanovl", "text", 8).frontend_ms_per_token == pytest.approx(0.40)  # type: ignore[union-attr]
    # After a cut: nanovl 0.40 -> 0.30 ms/token at c=8; the control (HTTP) unchanged.
    after = _text_result(baseline=baseline)
    runs = [
        _run("nanovl", {1: (105.0, 0.021, 0.40), 8: (600.0, 0.090, 0.30)}) if r.side == "nanovl" else r
        for r in after.sides
    ]
    text = render_markdown(replace(after, sides=tuple(runs)), [], tmp_path / "b.md", client_cpu=1)
    assert "## Before / after: nanovl's frontend CPU per output token" in text
    assert "| text | 8 | 0.400 | 0.300 | -25% | 600.0 | 600.0 | 0.300 → 0.300 (+0%) |" in text


def test_baseline_refuses_a_file_that_is_not_results(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(InvalidArgument, match="not a readable bench results.json"):
        load_baseline(bad)
    with pytest.raises(InvalidArgument):
        load_baseline(tmp_path / "missing.json")


# --------------------------------------------------------------------------- py-spy split


def test_frame_owners() -> None:
    site = "/v/lib/python3.11/site-packages"
    repo = str(Path(__file__).resolve().parents[2])
    assert frame_owner("grpc_call_start_batch", "src/core/lib/surface/call.cc") == GRPC
    assert frame_owner("__pyx_f_4grpc_7_cython_6cygrpc_x", f"{site}/grpc/_cython/cygrpc.cpython-311.so") == GRPC
    assert frame_owner("write", f"{site}/grpc/aio/_call.py") == GRPC
    assert frame_owner("SerializeToString", f"{site}/google/protobuf/message.py") == PROTOBUF
    assert frame_owner("upb_Encode", "/x/_message.so") == PROTOBUF
    assert frame_owner("update", f"{site}/vllm/v1/engine/detokenizer.py") == VLLM_DETOK
    assert frame_owner("uv__io_poll", f"{site}/uvloop/loop.cpython-311.so") == LOOP
    assert frame_owner("_run_once", "/usr/lib/python3.11/asyncio/base_events.py") == LOOP
    assert frame_owner("start_span", f"{site}/opentelemetry/sdk/trace/__init__.py") == TRACING
    assert frame_owner("generate", f"{repo}/service/inference_servicer.py") == NANOVL
    assert frame_owner("observe", f"{repo}/profiling/telemetry/metrics.py") != NANOVL
    # Other libraries and the interpreter count for their caller.
    assert frame_owner("decode_batch", f"{site}/tokenizers/__init__.py") is None
    assert frame_owner("memcpy", "/usr/lib/x86_64-linux-gnu/libc.so.6") is None


def test_split_gives_each_sample_to_its_innermost_owned_frame(tmp_path: Path) -> None:
    site = "/v/lib/python3.11/site-packages"
    frames = [
        {"name": "run", "file": f"{site}/uvloop/__init__.py"},  # 0 loop
        {"name": "update", "file": f"{site}/vllm/v1/engine/detokenizer.py"},  # 1 detok
        {"name": "decode", "file": f"{site}/tokenizers/__init__.py"},  # 2 transparent
        {"name": "SerializeToString", "file": f"{site}/google/protobuf/message.py"},  # 3 protobuf
        {"name": "memcpy", "file": "/usr/lib/libc.so.6"},  # 4 transparent
        {"name": "thread_run", "file": "/usr/lib/python3.11/threading.py"},  # 5 transparent
    ]
    doc = {
        "shared": {"frames": frames},
        "profiles": [
            {
                "samples": [[0, 1, 2], [0, 3, 4], [0], [5, 4]],
                "weights": [0.01, 0.01, 0.01, 0.01],
            }
        ],
    }
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    shares = {e.name: e.percent for e in split_speedscope(path)}
    assert list(shares) == list(OWNERS)
    assert (shares[VLLM_DETOK], shares[PROTOBUF], shares[LOOP], shares[OTHER]) == (25.0, 25.0, 25.0, 25.0)
    assert sum(shares.values()) == pytest.approx(100.0)


# --------------------------------------------------------------------------- sides, ports, CPU


def test_rust_frontend_is_detected_from_its_binary(tmp_path: Path) -> None:
    from bench.sides.vllm_rust import rust_frontend_binary

    path, why = rust_frontend_binary(tmp_path, {})
    assert path is None and "vllm-rs" in why and "GPU `vllm` wheels" in why  # type: ignore[operator]
    binary = tmp_path / "vllm-rs"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert rust_frontend_binary(tmp_path, {}) == (str(binary), None)
    other = tmp_path / "elsewhere"
    assert rust_frontend_binary(tmp_path, {"VLLM_RUST_FRONTEND_PATH": str(other)})[0] is None
    assert rust_frontend_binary(tmp_path, {"VLLM_RUST_FRONTEND_PATH": str(binary)})[0] == str(binary)


def test_rust_frontend_request_carries_token_ids_and_an_explicit_zero_temperature() -> None:
    from bench.sides.vllm_rust import generate_request, message_classes
    from nanovl.client import Message, Part, Prompt, Sampling, build_generate_request

    req = build_generate_request(
        Prompt(messages=(Message.user(Part.text("hi")),)),
        sampling=Sampling(max_tokens=7, temperature=0.0, ignore_eos=True),
    )
    msg = generate_request(req, [5, 6, 7], "r1")
    wire = msg.SerializeToString()
    assert b"\x2d\x00\x00\x00\x00" in wire  # field 5 (temperature), fixed32 0.0: present
    assert b"\x22\x05\x0a\x03\x05\x06\x07" in wire or b"\x22\x06\x08\x05\x08\x06\x08\x07" in wire  # field 4 token ids
    _, response_cls = message_classes()
    resp = response_cls.FromString(b"\x12\x06\x18\x02\x22\x02\x09\x0a")  # outputs{num_tokens: 2, token_ids: [9, 10]}
    assert list(resp.outputs.token_ids) == [9, 10] and resp.outputs.num_tokens == 2


def test_side_variants_and_their_flags() -> None:
    v = parse_variant("x4=--frontend-processes 4", 1)
    assert (v.id, v.kind, v.extra_flags) == ("nanovl-x4", "nanovl", ("--frontend-processes", "4"))
    with pytest.raises(InvalidArgument):
        parse_variant("nope")
    with pytest.raises(InvalidArgument):
        parse_variant("x=4")
    # 16 channels per frontend process (the kernel deals connections to them, not calls).
    assert v.connections == 64 and parse_variant("x=--frontend-processes=2").connections == 32
    assert parse_variant("y=--max-num-seqs 8").connections == 1
    config = BenchConfig(sides=("nanovl", "nanovl-x4"), variants=(v,))
    assert config.spec("nanovl-x2").connections == 32 and config.spec("nanovl").connections == 1
    assert config.label("nanovl-x4").endswith("--frontend-processes 4")
    assert config.workloads_for("vllm-rust") == ("text",) and config.workloads_for("nanovl-x4") == config.workloads
    with pytest.raises(InvalidArgument):
        BenchConfig(sides=("nanovl", "nanovl-x9"))
    help_text = "  --port PORT   gRPC port\n  --metrics-port METRICS_PORT\n  --no-warmup  skip"
    assert missing_flags(help_text, ["--frontend-processes", "2", "--port=5", "--no-warmup"]) == [
        "--frontend-processes"
    ]


def test_ports_come_from_the_range_and_skip_busy_ones() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        low = s.getsockname()[1]
        pool = PortPool(low, low + 1)
        assert pool.take() == low + 1  # low is taken
    assert PortPool.parse("50150-50169") == PortPool(50150, 50169)
    assert PortPool.parse(None).take() > 0
    with pytest.raises(ValueError):
        PortPool.parse("50169-50150")


def test_server_launch_per_side() -> None:
    config = BenchConfig()
    ports, metrics = PortPool(), PortPool()
    nano = server_launch(
        config.spec("nanovl-x2"), checkpoint="/c", engine=config.engine, ports=ports, metrics_ports=metrics
    )
    assert nano.argv[:3] == ["-m", "nanovl.cli", "serve"] and "--metrics-port" in nano.argv
    assert nano.argv[-2:] == ["--frontend-processes", "2"]
    rust = server_launch(
        config.spec("vllm-rust"), checkpoint="/c", engine=config.engine, ports=ports, metrics_ports=metrics
    )
    assert rust.env == {"VLLM_USE_RUST_FRONTEND": "1"} and "--grpc-port" in rust.argv
    http_port = rust.argv[rust.argv.index("--port") + 1]
    assert rust.http_url == f"http://127.0.0.1:{http_port}" and rust.target.endswith(
        rust.argv[rust.argv.index("--grpc-port") + 1]
    )


def test_engine_processes_are_told_apart_by_vllm_process_titles() -> None:
    titles = {
        1: "python -m nanovl.cli serve",
        2: "VLLM::EngineCore",
        3: "VLLM::Worker_TP0",
        4: "python -c from multiprocessing.resource_tracker import main",
        5: "/venv/vllm/vllm-rs frontend --listen-fd 3",
        6: "python -c spawn_main",  # a child of the engine core: engine
    }
    parents = {2: 1, 3: 2, 4: 1, 5: 1, 6: 2}
    engine = {pid for pid in titles if pid != 1 and is_engine_process(pid, titles, parents)}
    assert engine == {2, 3, 6}


# --------------------------------------------------------------------------- the upload video


def test_grain_video_is_deterministic_sized_and_what_nanovl_decodes() -> None:
    from bench.upload import grain_video
    from service.media import decode_video

    spec = replace(UploadSpec(), target_bytes=60_000, width=128, height=96, fps=12, gop=12, grain=7)
    a, b = grain_video(spec, 3), grain_video(spec, 3)
    assert a.data == b.data and len(a.data) >= spec.target_bytes
    assert grain_video(spec, 4).data != a.data
    decoded = decode_video(a.data, num_frames=4)
    assert decoded.frames.shape == (4, 96, 128, 3)
    assert a.seconds == pytest.approx(a.frames / 12)


def test_waiting_threads_are_left_out_of_the_profile() -> None:
    from bench.profile import is_waiting

    libc, py = "/usr/lib/x86_64-linux-gnu/libc.so.6", "/x/threading.py"
    # An unsymbolised futex wrapper under a Python lock acquire: waiting.
    assert is_waiting(
        ["0x7f01", "0x7f02", "PyThread_acquire_lock_timed", "wait"], [libc, libc, "/lib/libpython3.11.so", py]
    )
    assert is_waiting(["epoll_wait", "0x7f03"], [libc, "/site-packages/grpc/_cython/cygrpc.so"])
    # Sending is work; so is Python code, whatever it calls further out.
    assert not is_waiting(["sendmsg", "0x7f03"], [libc, "/site-packages/grpc/_cython/cygrpc.so"])
    assert not is_waiting(["update", "pthread_cond_wait"], ["/v/detokenizer.py", libc])


def test_metrics_work_is_told_apart_from_vllms_own_and_from_tracing(tmp_path: Path) -> None:
    from bench.profile import METRICS, VLLM_OUTPUT

    site = "/v/lib/python3.11/site-packages"
    frames = [
        {"name": "record", "file": f"{site}/vllm/v1/metrics/loggers.py"},  # 0 vLLM's stat logger
        {"name": "Counter.inc", "file": f"{site}/prometheus_client/metrics.py"},  # 1 counts for its caller
        {"name": "add", "file": f"{site}/opentelemetry/sdk/metrics/_internal/instrument.py"},  # 2 metrics SDK
        {"name": "should_sample", "file": f"{site}/opentelemetry/sdk/metrics/_internal/exemplar/f.py"},  # 3
        {"name": "get_current_span", "file": f"{site}/opentelemetry/trace/propagation/__init__.py"},  # 4 trace API
        {"name": "_now", "file": f"{site}/vllm/envs.py"},  # 5 counts for its caller
    ]
    doc = {
        "shared": {"frames": frames},
        # vLLM's Prometheus counter; an exemplar filter reading the span; vllm.envs under the stat logger.
        "profiles": [{"samples": [[0, 1], [2, 3, 4], [0, 5]], "weights": [0.01, 0.01, 0.01]}],
    }
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    shares = {e.name: e.percent for e in split_speedscope(path)}
    assert shares[VLLM_OUTPUT] == pytest.approx(66.7) and shares[METRICS] == pytest.approx(33.3)
    assert shares[TRACING] == 0.0
