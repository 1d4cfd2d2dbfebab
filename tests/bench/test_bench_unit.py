"""The benchmark's own logic, without an engine: request conversion, planning, targets,
profile summary, report. (The benchmark itself is ``make bench``; it is not run here.)"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path

import pytest

from bench.config import BenchConfig, EngineSettings, PassPolicy
from bench.convert import openai_body, sampling_of
from bench.cpu import CpuUsage
from bench.plan import build_points
from bench.profile import summarize_speedscope
from bench.report import render_markdown
from bench.results import BenchResult, PointResult, SideRun
from bench.targets import check_targets
from nanovl.client import Message, Part, Prompt, Sampling, build_generate_request
from nanovl.errors import InvalidArgument
from tests.bench.builders import bench_result, level

SMALL = BenchConfig(
    workloads=("mixed",),
    levels=((1, 4), (2, 4)),
    image_size=(64, 48),
    video_frames=2,
    video_size=(64, 48),
    audio_seconds=0.2,
    prompt_words=4,
    passes=PassPolicy(min_passes=2, max_passes=2),
)


def _chat_request(*parts: Part, **sampling) -> object:
    return build_generate_request(Prompt(messages=(Message.user(*parts),)), sampling=Sampling(**sampling))


def test_openai_body_carries_the_same_media_bytes_and_sampling() -> None:
    image, video, audio = b"\xff\xd8jpeg-bytes", b"mp4-bytes", b"RIFFwav-bytes"
    req = _chat_request(
        Part.image(image, format="jpeg"),
        Part.video(video, format="mp4"),
        Part.audio(audio, format="wav"),
        Part.text("describe"),
        max_tokens=7,
        temperature=0.0,
        ignore_eos=True,
    )
    body = json.loads(openai_body(req, "m"))
    content = body["messages"][0]["content"]
    assert [c["type"] for c in content] == ["image_url", "video_url", "input_audio", "text"]
    assert content[0]["image_url"]["url"] == "data:image/jpeg;base64," + base64.b64encode(image).decode()
    assert base64.b64decode(content[1]["video_url"]["url"].split(",", 1)[1]) == video
    assert base64.b64decode(content[2]["input_audio"]["data"]) == audio
    assert content[3]["text"] == "describe"
    assert (body["max_tokens"], body["temperature"], body["ignore_eos"], body["stream"]) == (7, 0.0, True, True)
    assert body["return_token_ids"] is True


def test_sampling_options_the_other_sides_cannot_express_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        sampling_of(_chat_request(Part.text("x"), max_tokens=4, top_p=0.5))
    assert sampling_of(_chat_request(Part.text("x"), max_tokens=4)).temperature == 1.0


def test_points_are_planned_with_warmups_first_and_no_prompt_repeats() -> None:
    points = build_points(SMALL)
    # The warm-up, then every level once per pass, the passes interleaved.
    assert [(p.concurrency, p.warmup_only, p.pass_index) for p in points] == [
        (4, True, 0),
        (1, False, 0),
        (2, False, 0),
        (1, False, 1),
        (2, False, 1),
    ]
    measured = [p for p in points if not p.warmup_only]
    assert all(len(p.measured) == 4 for p in measured)
    # Equal shares of the four kinds in every measured point.
    assert all(sorted(r.kind for r in p.measured) == ["audio", "image", "text", "video"] for p in measured)
    everything = [r.request.SerializeToString() for p in points for r in (*p.warmup, *p.measured)]
    assert len(set(everything)) == len(everything)
    # Deterministic: the same config plans the same requests.
    again = [r.request.SerializeToString() for p in build_points(SMALL) for r in (*p.warmup, *p.measured)]
    assert again == everything
    # Over several channels (the --frontend-processes side) the load tester prepares and
    # takes the very same prompts: the warm-up count stays the one planned.
    from bench.plan import with_target
    from loadtest.runner import plan_shard
    from loadtest.workload import prepare_workload

    for p in measured[:2]:
        lt = with_target(p, "127.0.0.1:1", connections=8)
        assert lt.connections == 8 and lt.warmup_count == len(p.warmup)
        plan = plan_shard(lt)
        pool = prepare_workload(lt, plan.pool_sizes, seed_key=(plan.shard,))
        took = [pool.take(k) for k in plan.warmup] + [pool.take(k) for k in plan.levels[0].kinds]
        assert [r.request.SerializeToString() for r in took] == [
            r.request.SerializeToString() for r in (*p.warmup, *p.measured)
        ]


def test_the_fastest_error_free_pass_is_chosen_and_every_pass_is_reported(tmp_path: Path) -> None:
    from bench.run import _points
    from bench.sides import PointOutcome

    outcomes = [PointOutcome("image", 1, _level(1, tps, 0.1), pass_index=k) for k, tps in enumerate((80.0, 95.0))]
    outcomes.append(PointOutcome("image", 1, None, error="server died", pass_index=2))
    points = _points("nanovl", outcomes)
    assert [(p.pass_index, p.chosen) for p in points] == [(0, False), (1, True), (2, False)]
    config = BenchConfig(sides=("inprocess", "nanovl"), workloads=("image",), levels=((1, 4),), passes=PassPolicy(3, 3))
    result = _result({"inprocess": {1: (100.0, 0.100)}}, config)
    result = replace(result, sides=(*result.sides, SideRun("nanovl", "cmd", 1.0, points)))
    text = render_markdown(result, [], tmp_path / "benchmarks.md", client_cpu=1)
    assert "| 1 | (b) nanovl gRPC | 95.0 | 0.95× |" in text
    assert "| 80.0 / **95.0** / – (unsettled: the two fastest 16% apart) |" in text


def test_engine_flags_round_trip_through_vllms_parser() -> None:
    from bench.servers import inprocess_overrides
    from model.tiny import ensure_tiny_checkpoint

    overrides = inprocess_overrides(EngineSettings(max_model_len=1024, max_num_seqs=16), str(ensure_tiny_checkpoint()))
    assert overrides["max_model_len"] == 1024 and overrides["max_num_seqs"] == 16
    assert overrides["limit_mm_per_prompt"] == {"image": 1, "video": 1, "audio": 1}


def _level(concurrency: int, tokens_per_s: float, ttft_s: float) -> object:
    return level(concurrency, tokens_per_s, ttft_s, kind="image")


def _result(figures: dict[str, dict[int, tuple[float, float]]], config: BenchConfig) -> BenchResult:
    usage = CpuUsage(window_s=1.0, frontend_s=0.1, engine_s=1.5, client_s=0.05, other_s=0.2, busiest_frontend_s=0.1)
    sides = tuple(
        SideRun(
            side,
            "cmd",
            1.0,
            tuple(
                PointResult(side, w, c, _level(c, *figures[side][c]), cpu=usage)
                for w in config.workloads
                for c, _ in config.levels
            ),
        )  # type: ignore[arg-type]
        for side in figures
    )
    return bench_result(config, sides)


def test_targets_judge_throughput_ttft_and_the_http_comparison() -> None:
    config = BenchConfig(sides=("inprocess", "nanovl", "vllm-http"), workloads=("image",), levels=((1, 4), (8, 4)))
    result = _result(
        {
            "inprocess": {1: (100.0, 0.100), 8: (400.0, 0.200)},
            "nanovl": {1: (98.0, 0.1015), 8: (300.0, 0.250)},  # c=1 fine; c=8 at 0.75x
            "vllm-http": {1: (70.0, 0.140), 8: (200.0, 0.400)},  # nanovl 1.4x / 0.73x at c=1; 1.5x / 0.63x at c=8
        },
        config,
    )
    checks = {(c.target.split(" ")[0], c.concurrency): c.met for c in check_targets(result)}
    assert checks[("throughput", 1)] is True
    assert checks[("throughput", 8)] is False
    assert checks[("TTFT", 1)] is True  # +1.5 ms
    assert checks[("≥", 1)] is True and checks[("≥", 8)] is True


def test_report_shows_ratios_and_missed_targets(tmp_path: Path) -> None:
    config = BenchConfig(sides=("inprocess", "nanovl"), workloads=("image",), levels=((1, 4),))
    result = _result({"inprocess": {1: (100.0, 0.100)}, "nanovl": {1: (90.0, 0.110)}}, config)
    text = render_markdown(
        result, [tmp_path / "benchmarks" / "throughput.png"], tmp_path / "benchmarks.md", client_cpu=1
    )
    assert "| 1 | (b) nanovl gRPC | 90.0 | 0.90× |" in text
    assert "| image | 1 | not measured (n/a (no peer ran this point)) |" in text
    assert "| **missed**: 0.90× |" in text
    assert "+10.0 ms | **missed** |" in text
    assert "](benchmarks/throughput.png)" in text


def test_several_frontend_processes_are_set_beside_one(tmp_path: Path) -> None:
    config = BenchConfig(sides=("nanovl", "nanovl-x2"), workloads=("text",), levels=((8, 4),))
    result = _result({"nanovl": {8: (300.0, 0.100)}, "nanovl-x2": {8: (330.0, 0.100)}}, config)
    # Two processes over 32 connections: 0.08 s of frontend CPU in all (one: 0.1 s) for as
    # many tokens; the busiest of the two used 0.06 s of the 1 s window (one: 0.1 s).
    x2 = result.side("nanovl-x2")
    (p,) = x2.points
    p = replace(p, cpu=replace(p.cpu, frontend_s=0.08, frontend_processes=2, busiest_frontend_s=0.06))
    result = replace(result, sides=(result.sides[0], replace(x2, points=(p,), connections=32)))
    text = render_markdown(result, [], tmp_path / "benchmarks.md", client_cpu=1)
    section = text.split("## Several frontend processes")[1].split("\n## ")[0]
    rows = [line.strip("| ").split(" | ") for line in section.splitlines() if line.startswith("| text | 8 |")]
    ms = 1000 * 0.1 / p.stats.output_tokens
    # The ceiling: throughput over the busiest process's share of a core (300 / 0.1 for one;
    # 330 / 0.06 for two), the rate at which that process would reach a whole core.
    assert rows == [
        ["text", "8", "(b) nanovl gRPC", "1", "300.0", "1.00×", f"{ms:.3f}", "1.00×", "1", "0.10", "3000", "1.00×"],
        ["text", "8", "(b2) nanovl gRPC, 2 frontend processes", "32", "330.0", "1.10×", f"{0.8 * ms:.3f}", "0.80×"]
        + ["2", "0.06", "5500", "1.83×"],
    ]


def test_speedscope_summary_counts_packages_and_leaves(tmp_path: Path) -> None:
    site = "/v/lib/python3.11/site-packages"
    frames = [
        {"name": "run", "file": "/repo/service/server.py"},
        {"name": "send", "file": f"{site}/grpc/aio/_call.py"},
        {"name": "decode", "file": f"{site}/PIL/Image.py"},
    ]
    doc = {
        "shared": {"frames": frames},
        "profiles": [{"type": "sampled", "samples": [[0, 1], [0, 1], [0, 2], []], "weights": [0.01, 0.01, 0.01, 0.01]}],
    }
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    busy, packages, leaves = summarize_speedscope(path)
    assert busy == pytest.approx(0.03)
    assert dict((e.name, e.percent) for e in packages) == {"service": 100.0, "grpc": 66.7, "PIL": 33.3}
    assert leaves[0].name == "send (grpc)" and leaves[0].percent == 66.7


def test_quick_config_is_small() -> None:
    quick = BenchConfig.quick_config()
    assert quick.sides == ("inprocess", "nanovl") and quick.levels == ((1, 4), (4, 4)) and len(quick.workloads) == 1
    assert replace(quick, workloads=("text",)).workloads_for("vllm-grpc") == ("text",)
