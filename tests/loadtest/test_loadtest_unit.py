"""Unit tests of the load tester: statistics, mixes, arrivals, planning, prompt
preparation, reports, plots and the CLI, plus whole runs against a small in-process fake
servicer (no engine). The real-server run is in test_loadtest_smoke.py."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import math
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest
import pytest_asyncio

from loadtest import LoadTestConfig, load_result, plot_compare, plot_run, run_load_test_async, write_reports
from loadtest.arrivals import poisson_arrivals, worker_start_offsets
from loadtest.config import AudioSpec, ImageSpec, LoadLevel, VideoSpec
from loadtest.mix import Mix, kind_schedule
from loadtest.report import compare_table, result_tables
from loadtest.results import LoadTestResult, RequestRecord
from loadtest.runner import plan_shard
from loadtest.stats import count_errors, group_stats, level_result, percentile, summarize
from loadtest.workload import prepare_workload
from nanovl.cli.loadtest import config_from_args, main, register
from nanovl.errors import InvalidArgument, NanovlError
from nanovl.media_specs import parse_dims as parse_size
from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import inference_pb2_grpc as pb_grpc

# ------------------------------------------------------------------ statistics


def test_percentiles_interpolate_between_order_statistics() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)  # halfway between 2 and 3
    values = [float(v) for v in range(1, 102)]  # 101 values: the q-th percentile is value q + 1
    for q in (50, 90, 99):
        assert percentile(values, q) == pytest.approx(q + 1)
    s = summarize(list(reversed(values)))
    assert (s.count, s.min, s.max, s.mean) == (101, 1.0, 101.0, pytest.approx(51.0))
    assert (s.p50, s.p90, s.p99) == (pytest.approx(51), pytest.approx(91), pytest.approx(100))
    empty = summarize([])
    assert empty.count == 0 and empty.p50 is None and empty.mean is None


def _record(
    index: int, kind: str, start: float, latency: float, ttft: float | None, tokens: int, **kw
) -> RequestRecord:
    defaults = dict(scheduled_s=start, prompt_tokens=10, deltas=tokens, itl_s=())
    defaults.update(kw)
    return RequestRecord(
        index=index, kind=kind, start_s=start, latency_s=latency, ttft_s=ttft, output_tokens=tokens, **defaults
    )


def test_tpot_follows_the_vllm_definition() -> None:
    r = _record(0, "text", 0.0, latency=1.0, ttft=0.2, tokens=5)
    assert r.tpot_s == pytest.approx((1.0 - 0.2) / 4)
    assert _record(0, "text", 0.0, 1.0, 0.2, tokens=1).tpot_s is None  # one token: nothing after the first
    failed = _record(0, "text", 0.0, 1.0, None, 0, error_code="UNAVAILABLE")
    assert failed.tpot_s is None and not failed.ok


def test_group_stats_rates_use_the_window_and_skip_failures() -> None:
    records = [
        _record(0, "text", 0.0, 2.0, 0.1, 10, itl_s=(0.1,) * 9),
        _record(1, "image", 0.5, 1.5, 0.3, 6, deltas=3, itl_s=(0.2,) * 4),
        _record(2, "image", 1.0, 0.5, None, 0, error_code="RESOURCE_EXHAUSTED", error_message="full"),
        _record(3, "image", 1.0, 0.6, None, 0, error_code="RESOURCE_EXHAUSTED", error_message="still full"),
        _record(4, "text", 1.2, 0.1, None, 0, error_code="INVALID_ARGUMENT", error_message="bad"),
    ]
    g = group_stats("all", records, window_s=4.0)
    assert (g.requests, g.succeeded, g.failed) == (5, 2, 3)
    assert g.output_tokens == 16 and g.output_tokens_per_s == pytest.approx(16 / 4.0)
    assert g.requests_per_s == pytest.approx(2 / 4.0)
    assert g.itl.count == 13 and g.ttft.count == 2 and g.e2e.count == 2
    assert g.tokens_per_delta == pytest.approx(16 / 13)
    assert [(e.code, e.count, e.first_message) for e in g.errors] == [
        ("RESOURCE_EXHAUSTED", 2, "full"),
        ("INVALID_ARGUMENT", 1, "bad"),
    ]
    assert count_errors(records[:2]) == ()


def test_level_result_makes_times_relative_and_splits_kinds() -> None:
    base = 1000.0  # absolute perf_counter values, as the runner records them
    records = [
        _record(1, "image", base + 0.5, 1.0, 0.2, 4),
        _record(0, "text", base, 0.7, 0.1, 4),
        _record(2, "audio", base + 0.6, 2.0, 0.1, 4, scheduled_s=base + 0.4),
    ]
    lv = level_result(LoadLevel("rate", 2.0), records, kinds=("text", "image", "video", "audio"), cpu_s=0.26)
    assert lv.window_s == pytest.approx(2.6)  # first send (base) to last end (base + 0.6 + 2.0)
    assert [r.index for r in lv.requests] == [0, 1, 2]
    assert lv.requests[0].start_s == 0.0
    assert [g.kind for g in lv.by_kind] == ["text", "image", "audio"]  # no video was sent
    assert sum(g.output_tokens_per_s for g in lv.by_kind) == pytest.approx(lv.overall.output_tokens_per_s)
    assert lv.client.cpu_util == pytest.approx(0.1)
    assert lv.client.send_lag_max_s == pytest.approx(0.2)


# ------------------------------------------------------------------ mixes and schedules


def test_mix_parsing_normalises_and_canonicalises() -> None:
    mix = Mix.parse("text=1, image=2,audio+image=1")
    assert mix.kinds == ("text", "image", "image+audio")
    assert [e.weight for e in mix.entries] == pytest.approx([0.25, 0.5, 0.25])
    assert mix.modalities == ("text", "image", "audio")
    assert Mix.parse("video").kinds == ("video",) and Mix.parse("video").entries[0].weight == 1.0
    assert Mix.parse(str(mix)) == mix  # str() round-trips
    assert Mix.parse("text=1,image=0").kinds == ("text",)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("txt=1", "unknown modality 'txt'"),
        ("text=1,text=2", "lists a kind twice"),
        ("image+image=1", "names a modality twice"),
        ("text+image=1", "combine only media"),
        ("text=-1", ">= 0"),
        ("text=abc", "must be a number"),
        ("text=0", "no kind with a positive weight"),
        ("", "no kind with a positive weight"),
    ],
)
def test_mix_parsing_errors_say_what_to_fix(spec: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Mix.parse(spec)


@pytest.mark.parametrize("n", [1, 7, 12, 100, 333])
def test_kind_schedule_matches_the_mix_for_any_count(n: int) -> None:
    mix = Mix.parse("text=0.2,image=0.4,video=0.2,audio=0.2")
    kinds = [k for k, _ in zip(kind_schedule(mix, np.random.default_rng(0), block=n), range(n), strict=False)]
    counts = Counter(kinds)
    for e in mix.entries:
        assert abs(counts[e.kind] - e.weight * n) < 1, (e.kind, counts)


def test_kind_schedule_is_seeded_and_shuffled() -> None:
    mix = Mix.parse("text=1,image=1,audio=1")

    def first(seed: int, n: int = 60) -> list[str]:
        it = kind_schedule(mix, np.random.default_rng(seed), block=30)
        return [next(it) for _ in range(n)]

    assert first(1) == first(1)
    assert first(1) != first(2)
    blocks = [Counter(first(3)[i : i + 30]) for i in (0, 30)]  # every block keeps the proportions
    assert all(set(b.values()) == {10} for b in blocks)


# ------------------------------------------------------------------ arrivals


def test_poisson_arrivals_have_exponential_gaps() -> None:
    rate, n = 50.0, 20_000
    t = poisson_arrivals(rate, np.random.default_rng(7), count=n)
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert t.shape == (n,) and np.all(gaps > 0)
    # Exponential(1/rate): mean 1/rate, coefficient of variation 1, P(gap > mean) = e^-1.
    # Bounds are ~4 standard errors, and the RNG is seeded, so this cannot flake.
    assert gaps.mean() == pytest.approx(1 / rate, rel=4 / math.sqrt(n))
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.04)
    assert np.mean(gaps > 1 / rate) == pytest.approx(math.exp(-1), abs=0.015)
    assert np.array_equal(t, poisson_arrivals(rate, np.random.default_rng(7), count=n))


def test_poisson_arrivals_for_a_duration_and_with_ramp_up() -> None:
    rate, duration = 40.0, 200.0
    t = poisson_arrivals(rate, np.random.default_rng(3), duration_s=duration)
    expected = rate * duration  # Poisson count: sd = sqrt(expected)
    assert abs(t.size - expected) < 4 * math.sqrt(expected)
    assert t.max() < duration and np.all(np.diff(t) > 0)

    ramp = 100.0
    r = poisson_arrivals(rate, np.random.default_rng(4), duration_s=duration, ramp_up_s=ramp)
    # The rate climbs linearly to `rate` over the ramp: rate*ramp/2 arrivals during it,
    # a quarter of those in its first half; then full rate.
    in_ramp, first_half = np.sum(r < ramp), np.sum(r < ramp / 2)
    for got, want in (
        (in_ramp, rate * ramp / 2),
        (first_half, rate * ramp / 8),
        (np.sum(r >= ramp), rate * (duration - ramp)),
    ):
        assert abs(got - want) < 4 * math.sqrt(want), (got, want)


def test_poisson_arrivals_validate_their_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidArgument):
        poisson_arrivals(0.0, rng, count=3)
    with pytest.raises(InvalidArgument):
        poisson_arrivals(1.0, rng, count=3, duration_s=1.0)


def test_worker_start_offsets_spread_over_the_ramp() -> None:
    assert worker_start_offsets(4, 0.0) == (0.0, 0.0, 0.0, 0.0)
    assert worker_start_offsets(4, 2.0) == (0.0, 0.5, 1.0, 1.5)


# ------------------------------------------------------------------ configuration and planning


def _config(**kw) -> LoadTestConfig:
    small = dict(
        target="127.0.0.1:1",
        image=ImageSpec(64, 48),
        video=VideoSpec(frames=3, width=64, height=32),
        audio=AudioSpec(seconds=0.2),
        prompt_words=4,
        max_tokens=4,
    )
    small.update(kw)
    return LoadTestConfig(**small)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(target="localhost"), "HOST:PORT"),
        (dict(target="a:1,b"), "HOST:PORT"),
        (dict(target="a:1, a:1"), "twice"),
        (dict(concurrency=(0,)), "concurrency"),
        (dict(requests=4, duration_s=1.0), "not both"),
        (dict(rates=(-1.0,)), "rate"),
        (dict(video=VideoSpec(width=100)), "multiple of 16"),
        (dict(video=VideoSpec(frames=4, sample_frames=5)), "sample frames"),
        (dict(concurrency=(1, 8), client_processes=2), "client processes"),
        (dict(connections=0), "connections must be >= 1"),
        (dict(connections=257), "connections must be <= 256"),
    ],
)
def test_config_rejects_what_cannot_run(kw: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        _config(**kw)


def test_default_levels_and_request_counts() -> None:
    cfg = _config()
    assert cfg.levels == (LoadLevel("concurrency", 1),)
    cfg = _config(concurrency=(1, 64), rates=(0.5, 3.0))
    assert [lv.label for lv in cfg.levels] == ["c=1", "c=64", "rate=0.5/s", "rate=3/s"]
    assert [cfg.requests_for(lv) for lv in cfg.levels] == [32, 256, 32, 90]
    assert _config(requests=5).requests_for(cfg.levels[1]) == 5
    assert _config(duration_s=3.0).requests_for(cfg.levels[1]) is None
    assert _config().warmup_count == 4 and _config(warmup_requests=0).warmup_count == 0


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_shards_split_levels_and_follow_the_mix(shards: int) -> None:
    cfg = _config(concurrency=(3, 6), rates=(3.0,), requests=25, media_pool=None)
    plans = [plan_shard(cfg, s, shards) for s in range(shards)]
    for i, level in enumerate(cfg.levels):
        parts = [p.levels[i] for p in plans]
        if level.mode == "concurrency":
            assert sum(sl.concurrency for sl in parts) == level.value
        else:
            assert sum(sl.rate for sl in parts) == pytest.approx(level.value)
        kinds = [k for sl in parts for k in sl.kinds]
        assert len(kinds) == 25
        counts = Counter(kinds)
        assert all(abs(counts[e.kind] - 25 * e.weight) < 1 for e in cfg.mix.entries)
        # Global request indices are unique across shards.
        indices = [sl.first_index + j * sl.index_stride for sl in parts for j in range(len(sl.kinds))]
        assert sorted(indices) == list(range(25))
    assert [len(p.warmup) for p in plans] == [4] + [0] * (shards - 1)
    # Counted levels: one distinct prompt per request sent (nothing repeats).
    for p in plans:
        sent = Counter(k for sl in p.levels for k in sl.kinds) + Counter(p.warmup)
        assert dict(p.pool_sizes) == dict(sent)


def test_media_pool_caps_pool_sizes() -> None:
    plan = plan_shard(_config(concurrency=(4,), requests=40, media_pool=3))
    assert all(size <= 3 for _, size in plan.pool_sizes)
    plan = plan_shard(_config(concurrency=(4,), duration_s=5.0))
    assert all(size > 0 for _, size in plan.pool_sizes)  # duration-bound: sized by default


def test_cli_arguments_build_the_config() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        "loadtest --target h:1 --concurrency 1,8 --rate 0.5 --requests 10 --mix image=1,audio=3 "
        "--image-size 320x200 --video-size 4x64x32 --audio-seconds 1.5 --chunked --no-ignore-eos --seed 3".split()
    )
    cfg = config_from_args(args)
    assert cfg.concurrency == (1, 8) and cfg.rates == (0.5,) and cfg.requests == 10
    assert cfg.mix.kinds == ("image", "audio") and (cfg.image.width, cfg.image.height) == (320, 200)
    assert (cfg.video.frames, cfg.video.width, cfg.video.height) == (4, 64, 32)
    assert cfg.chunked and not cfg.ignore_eos and cfg.seed == 3 and cfg.audio.seconds == 1.5
    # The command line it reports parses back to the same configuration.
    again = config_from_args(parser.parse_args(["loadtest", *cfg.command_line().split()]))
    assert again == cfg
    with pytest.raises(InvalidArgument, match="positive integers"):
        parse_size("64x", 2, "--image-size")
    with pytest.raises(InvalidArgument, match="--target"):
        config_from_args(parser.parse_args(["loadtest"]))


# ------------------------------------------------------------------ prompt preparation


def _payload_digest(req: pb.GenerateRequest) -> list[str]:
    out = []
    for part in req.parts:
        kind = part.WhichOneof("kind")
        if kind == "image":
            out.append(hashlib.sha256(part.image.data).hexdigest())
        elif kind == "video":
            out.append(hashlib.sha256(part.video.encoded or part.video.raw_frames.rgb24).hexdigest())
        elif kind == "audio":
            out.append(hashlib.sha256(part.audio.encoded or part.audio.pcm.data).hexdigest())
    return out


def test_prepared_prompts_are_all_different() -> None:
    cfg = _config(mix=Mix.parse("text=1,image=1,video=1,audio=1,image+audio=1"))
    wl = prepare_workload(cfg, [(k, 3) for k in cfg.mix.kinds])
    items = [wl.take(k) for k in cfg.mix.kinds for _ in range(3)]
    serialized = {it.request.SerializeToString() for it in items}
    assert len(serialized) == len(items)
    media = [d for it in items for d in _payload_digest(it.request)]
    assert len(media) == 3 * 5 and len(set(media)) == len(media)  # no media payload repeats
    combo = next(it for it in items if it.kind == "image+audio").request
    assert [p.WhichOneof("kind") for p in combo.parts] == ["image", "audio", "text"]
    assert all(it.request.sampling.max_tokens == 4 and it.request.sampling.ignore_eos for it in items)
    video = next(it for it in items if it.kind == "video").request.parts[0].video
    assert video.num_frames == 3 and video.encoded[4:8] == b"ftyp"  # an MP4 container
    info = {p.kind: p for p in wl.pool_info()}
    assert info["image"].unique == 3 and info["image"].sent == 3
    wl.take("image")  # the pool is used up: prompts repeat, and that is reported
    assert {p.kind: p for p in wl.pool_info()}["image"].sent == 4


def test_prepared_prompts_are_deterministic_per_seed_and_shard() -> None:
    cfg = _config(mix=Mix.parse("image=1"))

    def digest(seed: int, shard: int) -> str:
        wl = prepare_workload(replace(cfg, seed=seed), [("image", 1)], seed_key=(shard,))
        return hashlib.sha256(wl.take("image").request.SerializeToString()).hexdigest()

    assert digest(0, 0) == digest(0, 0)
    assert len({digest(0, 0), digest(1, 0), digest(0, 1)}) == 3


def test_raw_formats_chat_and_chunked_upload() -> None:
    cfg = _config(
        mix=Mix.parse("video=1,audio=1"),
        video=VideoSpec(frames=3, width=64, height=32, format="raw", sample_frames=2),
        audio=AudioSpec(seconds=0.25, format="pcm"),
        chunked=True,
        chunk_size=1000,
        chat=True,
    )
    wl = prepare_workload(cfg, [("video", 1), ("audio", 1)])
    video, audio = wl.take("video"), wl.take("audio")
    assert video.request is None and video.chunks is not None
    header = video.chunks[0].header
    declared = header.messages[0].parts[0]
    assert header.messages[0].role == "user"
    assert declared.part.video.raw_frames.num_frames == 3 and declared.part.video.num_frames == 2
    assert declared.size_bytes == 3 * 64 * 32 * 3 == video.media_bytes
    payload = b"".join(c.media.data for c in video.chunks if c.WhichOneof("kind") == "media")
    assert len(payload) == declared.size_bytes
    assert max(len(c.media.data) for c in video.chunks[1:-1]) <= 1000
    assert video.chunks[-1].WhichOneof("kind") == "end"
    assert audio.chunks[0].header.messages[0].parts[0].part.audio.pcm.sample_rate == 16000
    assert audio.media_bytes == 0.25 * 16000 * 2


def test_media_directory(tmp_path: Path) -> None:
    from loadtest.media import encode_wav, waveform

    (tmp_path / "a.wav").write_bytes(encode_wav(waveform(0.1, 16000), 16000))
    (tmp_path / "notes.txt").write_text("ignored")
    cfg = _config(mix=Mix.parse("audio=1"), media_dir=str(tmp_path))
    wl = prepare_workload(cfg, [("audio", 2)])
    assert wl.take("audio").request.parts[0].audio.format == "wav"
    with pytest.raises(InvalidArgument, match="no image files"):
        prepare_workload(replace(cfg, mix=Mix.parse("image=1")), [("image", 1)])


# ------------------------------------------------------------------ runs against a fake server


@dataclass
class FakeBehaviour:
    tokens_per_delta: int = 2
    fail_kinds: set[str] = field(default_factory=set)  # requests carrying these media fail
    max_message_bytes: int = 4 * 1024 * 1024
    video_enabled: bool = True
    seen: Counter = field(default_factory=Counter)
    peers: Counter = field(default_factory=Counter)  # (kind, client address): one per TCP connection


class FakeInference(pb_grpc.InferenceServicer):
    """Streams `max_tokens` tokens in Deltas of `tokens_per_delta` (the first Delta has one
    token), or fails requests with media in `fail_kinds`."""

    def __init__(self, behaviour: FakeBehaviour) -> None:
        self.b = behaviour

    async def _respond(self, req: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> AsyncIterator:
        parts = list(req.parts) or [p for m in req.messages for p in m.parts]
        kinds = "+".join(p.WhichOneof("kind") for p in parts if p.WhichOneof("kind") != "text") or "text"
        self.b.seen[kinds] += 1
        self.b.peers[kinds, context.peer()] += 1
        if any(k in self.b.fail_kinds for k in kinds.split("+")):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"fake: no {kinds} today")
        n = req.sampling.max_tokens or 16
        yield pb.GenerateResponse(started=pb.Started(request_id="r"))
        await asyncio.sleep(0.002)
        yield pb.GenerateResponse(delta=pb.Delta(text="a", token_ids=[1]))
        sent = 1
        while sent < n:
            k = min(self.b.tokens_per_delta, n - sent)
            await asyncio.sleep(0.001)
            yield pb.GenerateResponse(delta=pb.Delta(text="b" * k, token_ids=[2] * k))
            sent += k
        yield pb.GenerateResponse(
            final=pb.Final(
                finish_reason=pb.FINISH_REASON_LENGTH,
                usage=pb.Usage(prompt_tokens=7, completion_tokens=sent),
                timings=pb.Timings(ttft_s=0.001, queue_s=0.0005),
            )
        )

    async def Generate(self, request, context):
        async for r in self._respond(request, context):
            yield r

    async def StreamGenerate(self, request_iterator, context):
        header, payloads = None, 0
        async for chunk in request_iterator:
            kind = chunk.WhichOneof("kind")
            if kind == "header":
                header = chunk.header
            elif kind == "media":
                payloads += len(chunk.media.data)
        req = pb.GenerateRequest(sampling=header.sampling)
        for m in header.messages:
            req.messages.add(role=m.role).parts.extend(d.part for d in m.parts)
        req.parts.extend(d.part for d in header.parts)
        async for r in self._respond(req, context):
            yield r

    async def GetModelInfo(self, request, context):
        mods = [
            pb.ModalityInfo(modality=pb.MODALITY_TEXT, enabled=True),
            pb.ModalityInfo(modality=pb.MODALITY_IMAGE, enabled=True),
            pb.ModalityInfo(modality=pb.MODALITY_VIDEO, enabled=self.b.video_enabled, max_num_frames=8),
            pb.ModalityInfo(modality=pb.MODALITY_AUDIO, enabled=True),
        ]
        return pb.ModelInfo(
            model_name="fake",
            max_model_len=2048,
            max_num_seqs=16,
            modalities=mods,
            max_message_bytes=self.b.max_message_bytes,
            max_request_bytes=64 << 20,
        )


async def _fake_server() -> AsyncIterator[tuple[str, FakeBehaviour]]:
    behaviour = FakeBehaviour()
    server = grpc.aio.server()
    pb_grpc.add_InferenceServicer_to_server(FakeInference(behaviour), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", behaviour
    await server.stop(None)


fake = pytest_asyncio.fixture(scope="module", name="fake")(_fake_server)
# A second fake server, for runs over several targets.
fake_b = pytest_asyncio.fixture(scope="module", name="fake_b")(_fake_server)


@pytest.fixture
def behaviour(fake: tuple[str, FakeBehaviour]) -> FakeBehaviour:
    b = fake[1]
    b.tokens_per_delta, b.fail_kinds, b.video_enabled, b.max_message_bytes = 2, set(), True, 4 * 1024 * 1024
    b.seen.clear()
    return b


class Recorder:
    """A ProgressListener that remembers what it was told."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.records = 0

    def phase(self, text: str, total: int | None = None) -> None:
        self.events.append("phase")

    def phase_advance(self) -> None:
        pass

    def level_started(self, level, requests, duration_s) -> None:
        self.events.append(f"start {level.label} {requests}")

    def request_finished(self, record) -> None:
        self.records += 1

    def level_finished(self, result) -> None:
        self.events.append(f"end {result.level.label}")


async def test_closed_and_open_loop_run(fake, behaviour: FakeBehaviour, tmp_path: Path) -> None:
    target, _ = fake
    behaviour.tokens_per_delta = 3
    cfg = _config(target=target, concurrency=(1, 3), rates=(40.0,), requests=9, max_tokens=7, ramp_up_s=0.01)
    progress = Recorder()
    result = await run_load_test_async(cfg, progress=progress)
    assert result.total_errors == 0 and result.server is not None and result.server.model_name == "fake"
    assert [lv.level.label for lv in result.levels] == ["c=1", "c=3", "rate=40/s"]
    assert progress.events[-6:] == [
        "start c=1 9",
        "end c=1",
        "start c=3 9",
        "end c=3",
        "start rate=40/s 9",
        "end rate=40/s",
    ]
    assert progress.records == 27
    assert result.warmup_requests == 4 and sum(behaviour.seen.values()) == 27 + 4
    for lv in result.levels:
        g = lv.overall
        assert g.succeeded == 9 and g.output_tokens == 9 * 7 and g.prompt_tokens == 9 * 7
        assert sorted(r.index for r in lv.requests) == list(range(9))
        # 7 tokens as 1 + 3 + 3: the first Delta's token has no ITL sample, each later Delta
        # gives one sample per token, all equal within a Delta.
        for r in lv.requests:
            assert r.deltas == 3 and len(r.itl_s) == 6
            assert r.itl_s[0] == r.itl_s[1] == r.itl_s[2] and r.itl_s[3] == r.itl_s[4] == r.itl_s[5]
            assert 0 < r.ttft_s < r.latency_s and r.server_ttft_s == pytest.approx(0.001)
        assert g.tokens_per_delta == pytest.approx(7 / 3)
        assert {k.kind for k in lv.by_kind} == set(cfg.mix.kinds)
    rate_level = result.levels[2]
    assert rate_level.client.send_lag_max_s is not None and all(r.scheduled_s >= 0 for r in rate_level.requests)
    assert {m.kind: m.sent for m in result.media} == {m.kind: m.unique for m in result.media}  # nothing repeated


async def test_errors_are_counted_by_status_with_the_first_message(fake, behaviour: FakeBehaviour) -> None:
    target, _ = fake
    behaviour.fail_kinds = {"video"}
    cfg = _config(
        target=target,
        concurrency=(2,),
        requests=10,
        warmup_requests=0,
        mix=Mix.parse("text=1,video=1,image+audio=1"),
        chunked=True,
    )
    result = await run_load_test_async(cfg)
    lv = result.levels[0]
    videos = sum(r.kind == "video" for r in lv.requests)
    assert videos > 0 and lv.overall.failed == videos == result.total_errors
    (err,) = lv.overall.errors
    assert (err.code, err.count, err.first_message) == ("INVALID_ARGUMENT", videos, "fake: no video today")
    by_kind = {g.kind: g for g in lv.by_kind}
    assert by_kind["video"].failed == videos and by_kind["video"].ttft.count == 0
    assert by_kind["image+audio"].failed == 0 and behaviour.seen["image+audio"] > 0


async def test_a_failing_warm_up_stops_the_run(fake, behaviour: FakeBehaviour) -> None:
    behaviour.fail_kinds = {"audio"}
    with pytest.raises(NanovlError, match="warm-up request \\(audio\\) failed.*no audio today") as e:
        await run_load_test_async(_config(target=fake[0], requests=2))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_server_limits_are_checked_before_measuring(fake, behaviour: FakeBehaviour) -> None:
    behaviour.video_enabled = False
    with pytest.raises(NanovlError, match="video disabled"):
        await run_load_test_async(_config(target=fake[0], requests=2))
    behaviour.video_enabled = True
    with pytest.raises(InvalidArgument, match="at most 8 video frames"):
        await run_load_test_async(_config(target=fake[0], requests=2, video=VideoSpec(frames=9, width=64, height=32)))
    behaviour.max_message_bytes = 1000
    with pytest.raises(InvalidArgument, match="--chunked"):
        await run_load_test_async(_config(target=fake[0], requests=2, mix=Mix.parse("image=1")))
    assert sum(behaviour.seen.values()) == 0


async def test_an_unreachable_target_is_reported() -> None:
    with pytest.raises(NanovlError, match="did not answer GetModelInfo") as e:
        await run_load_test_async(_config(target="127.0.0.1:9", connect_timeout_s=0.3))
    assert e.value.code == grpc.StatusCode.UNAVAILABLE


async def test_duration_levels(fake, behaviour: FakeBehaviour) -> None:
    cfg = _config(
        target=fake[0], concurrency=(2,), rates=(30.0,), duration_s=0.3, warmup_requests=0, mix=Mix.parse("text=1")
    )
    result = await run_load_test_async(cfg)
    assert result.total_errors == 0
    for lv in result.levels:
        assert lv.overall.succeeded > 0
        assert max(r.start_s for r in lv.requests) < 0.3 + 0.1  # nothing starts after the duration


async def test_client_processes_share_the_load(fake, behaviour: FakeBehaviour) -> None:
    cfg = _config(target=fake[0], concurrency=(2, 4), requests=8, client_processes=2, mix=Mix.parse("text=1,image=1"))
    result = await run_load_test_async(cfg)
    assert result.total_errors == 0 and result.warmup_requests == 2
    for lv in result.levels:
        assert lv.overall.succeeded == 8 and lv.client.processes == 2
        assert sorted(r.index for r in lv.requests) == list(range(8))
    assert sum(behaviour.seen.values()) == 2 * 8 + 2
    assert {m.kind: m.sent for m in result.media} == {"text": 9, "image": 9}


@pytest.mark.parametrize("processes", [1, 2])
async def test_connections_are_distinct_tcp_connections_dealt_in_turn(
    fake, behaviour: FakeBehaviour, processes: int
) -> None:
    """--connections N: N channels per client process, each its own TCP connection (a
    server with --frontend-processes spreads connections, not calls); each is warmed with
    every kind, then the requests are dealt over them evenly."""
    behaviour.peers.clear()
    cfg = _config(
        target=fake[0],
        concurrency=(4,),
        requests=24,
        client_processes=processes,
        connections=3,
        mix=Mix.parse("text=1,image=1"),
    )
    assert cfg.warmup_count == 2 * 3 and "--connections 3" in cfg.command_line()
    result = await run_load_test_async(cfg)
    assert result.total_errors == 0 and result.warmup_requests == 6
    peers = Counter()
    for (_, peer), n in behaviour.peers.items():
        peers[peer] += n
    assert len(peers) == 3 * processes, peers  # distinct client ports: distinct connections
    assert sum(peers.values()) == 24 + 6
    # Shard 0 warms each of its 3 connections with text and image.
    warmed = [p for p in peers if behaviour.peers["text", p] and behaviour.peers["image", p]]
    assert len(warmed) >= 3
    # Evenly dealt: 24 measured requests over 3 x processes connections.
    per_connection = 24 // (3 * processes)
    assert all(per_connection <= n <= per_connection + 2 for n in peers.values()), peers


@pytest.mark.parametrize("processes", [1, 2])
async def test_several_targets_share_the_load_and_are_reported_apart(
    fake, fake_b, behaviour: FakeBehaviour, processes: int, tmp_path: Path
) -> None:
    (a, _), (b, seen_b) = fake, fake_b
    seen_b.seen.clear()
    cfg = _config(
        target=f"{a},{b}", concurrency=(2,), requests=10, client_processes=processes, mix=Mix.parse("text=1,image=1")
    )
    assert cfg.targets == (a, b) and cfg.warmup_count == 4  # every kind on every target
    result = await run_load_test_async(cfg)
    assert result.total_errors == 0 and result.warmup_requests == 4
    # Warm-up: each server got each kind once; then request i went to target i mod 2.
    assert sum(behaviour.seen.values()) == sum(seen_b.seen.values()) == 2 + 5
    assert min(behaviour.seen["text"], behaviour.seen["image"], seen_b.seen["text"], seen_b.seen["image"]) >= 1
    (level,) = result.levels
    assert {r.target for r in level.requests if r.index % 2 == 0} == {a}
    assert {r.target for r in level.requests if r.index % 2 == 1} == {b}
    assert [(t.target, t.stats.succeeded) for t in level.by_target] == [(a, 5), (b, 5)]
    assert sum(t.stats.requests_per_s for t in level.by_target) == pytest.approx(level.overall.requests_per_s)
    files = write_reports(result, tmp_path)
    with files.summary_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["kind"], r["target"], r["succeeded"]) for r in rows if r["target"]] == [("all", a, "5"), ("all", b, "5")]
    with files.requests_csv.open() as f:
        assert {r["target"] for r in csv.DictReader(f)} == {a, b}
    from rich.console import Console

    console = Console(record=True, width=250)
    for t in result_tables(result):
        console.print(t)
    text = console.export_text()
    assert "per level and target" in text and b in text


# ------------------------------------------------------------------ reports and plots


@pytest_asyncio.fixture(scope="module")
async def two_runs(fake) -> tuple[LoadTestResult, LoadTestResult]:
    base = _config(
        target=fake[0], concurrency=(1, 2), rates=(50.0,), requests=6, mix=Mix.parse("text=1,image=1,audio=1")
    )
    a = await run_load_test_async(replace(base, name="A"))
    b = await run_load_test_async(replace(base, name="B", chunked=True, concurrency=(2, 4)))
    return a, b


def test_reports_round_trip(two_runs, tmp_path: Path) -> None:
    a, _ = two_runs
    files = write_reports(a, tmp_path)
    loaded = load_result(files.json)
    # Everything survives except the per-token ITL samples (summarised, not stored).
    assert loaded == replace(
        a, levels=tuple(replace(lv, requests=tuple(replace(r, itl_s=()) for r in lv.requests)) for lv in a.levels)
    )
    assert json.loads(files.json.read_text())["schema_version"] == 1
    with files.summary_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(1 + len(lv.by_kind) for lv in a.levels)
    first = rows[0]
    assert (first["level"], first["kind"], int(first["succeeded"])) == ("c=1", "all", 6)
    assert float(first["output_tokens_per_s"]) == pytest.approx(a.levels[0].overall.output_tokens_per_s)
    with files.requests_csv.open() as f:
        reqs = list(csv.DictReader(f))
    assert len(reqs) == 3 * 6 and {r["error_code"] for r in reqs} == {""}


def test_loading_rejects_foreign_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"schema_version": 99}')
    with pytest.raises(InvalidArgument, match="schema version 99"):
        load_result(bad)
    bad.write_text("not json")
    with pytest.raises(InvalidArgument, match="not JSON"):
        load_result(bad)
    bad.write_text('{"schema_version": 1, "name": 3}')
    with pytest.raises(InvalidArgument, match="not a valid load-test result"):
        load_result(bad)


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_and_tables(two_runs, tmp_path: Path) -> None:
    a, b = two_runs
    files = plot_run(a, tmp_path / "a")
    names = sorted(p.name for p in files)
    assert names == [
        "concurrency_sweep.png",
        "latency_cdf_c1.png",
        "latency_cdf_c2.png",
        "latency_cdf_rate50.png",
        "rate_sweep.png",
    ]
    assert all(_is_png(p) and p.stat().st_size > 10_000 for p in files)
    overlay = plot_compare([a, b], tmp_path / "cmp")
    # Levels both runs measured: c=2 and rate=50.
    assert sorted(p.name for p in overlay) == [
        "compare_cdf_c2.png",
        "compare_cdf_rate50.png",
        "compare_sweep_concurrency.png",
        "compare_sweep_rate.png",
    ]
    assert all(_is_png(p) for p in overlay)
    from rich.console import Console

    console = Console(record=True, width=250)
    for t in result_tables(a):
        console.print(t)
    console.print(compare_table([a, b]))
    text = console.export_text()
    assert "per level (all kinds)" in text and "c=2" in text and "rate=50/s" in text
    assert "x)" in text  # B's figures at the shared levels carry ratios to A


def _lines_with_data(ax) -> dict[str, int]:
    """Legend label -> points, for every line drawn on ``ax``."""
    return {line.get_label(): len(line.get_xdata()) for line in ax.get_lines()}


def test_compare_sweeps_show_every_run_with_data(two_runs) -> None:
    # Every panel of each sweep has a line with points for every run that measured levels
    # of that mode, TTFT included (it used to be empty for concurrency, and to show only
    # the last run for rate), and no legend entry for a run without such levels.
    from loadtest.plots import compare_sweep_figure

    a, b = two_runs
    c = replace(a, name="C", levels=tuple(lv for lv in a.levels if lv.level.mode == "concurrency"))
    runs = [a, b, c]
    for mode in ("concurrency", "rate"):
        fig = compare_sweep_figure(runs, mode)
        assert fig is not None
        with_data = [r.name for r in runs if any(lv.level.mode == mode for lv in r.levels)]
        assert with_data == (["A", "B", "C"] if mode == "concurrency" else ["A", "B"])
        tok_ax, req_ax, ttft_ax = fig.axes
        for ax, suffixes in ((tok_ax, [""]), (req_ax, [""]), (ttft_ax, [" p50", " p99"])):
            lines = _lines_with_data(ax)
            for name in with_data:
                for suffix in suffixes:
                    assert lines.get(name + suffix, 0) > 0, (mode, ax.get_title(), name + suffix, lines)
            runs_drawn = {label.split(" ")[0] for label in lines if label != "offered"}
            assert runs_drawn == set(with_data), (mode, ax.get_title(), lines)
            legend = ax.get_legend()
            assert legend is not None
            assert {t.get_text() for t in legend.get_texts()} == set(lines)
            assert all(n > 0 for n in lines.values())
    assert compare_sweep_figure([c], "rate") is None


def test_compare_command(two_runs, tmp_path: Path) -> None:
    a, b = two_runs
    pa, pb = write_reports(a, tmp_path / "a").json, write_reports(b, tmp_path / "b").json
    assert main(["compare", str(pa), str(pb), "--out", str(tmp_path / "cmp")]) == 0
    with (tmp_path / "cmp" / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["A"] * 3 + ["B"] * 3
    assert (tmp_path / "cmp" / "compare_sweep_concurrency.png").exists()
    assert main(["compare", str(tmp_path / "missing.json")]) == 2


async def test_cli_run_writes_everything(fake, behaviour: FakeBehaviour, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [
        "--target",
        fake[0],
        "--concurrency",
        "2",
        "--requests",
        "4",
        "--mix",
        "text=1,image=1",
        "--image-size",
        "64x48",
        "--max-tokens",
        "3",
        "--no-progress",
        "--out",
        str(out),
    ]
    # The CLI runs its own event loop: give it a thread, as a user's shell would a process.
    assert await asyncio.to_thread(main, argv) == 0
    assert {p.name for p in out.iterdir()} >= {"results.json", "summary.csv", "requests.csv", "latency_cdf_c2.png"}
    behaviour.fail_kinds = {"image"}
    assert await asyncio.to_thread(main, [*argv, "--warmup", "0", "--out", str(tmp_path / "r2")]) == 1


# ------------------------------------------------------------------ reasoning and tool prompts


def test_reasoning_and_tools_kinds_are_chat_prompts_for_reasoning_models() -> None:
    from loadtest.runner import check_server
    from loadtest.workload import REASONING_BUDGET_TOKENS
    from nanovl.client.events import ModelInfo
    from nanovl.errors import FailedPrecondition

    mix = Mix.parse("text=1,reasoning=1,tools=2")
    assert mix.kinds == ("text", "reasoning", "tools") and mix.modalities == ("text",)
    assert mix.chat_kinds == ("reasoning", "tools")
    for spec in ("image+tools", "tools+reasoning"):
        with pytest.raises(InvalidArgument, match="unknown modality"):
            Mix.parse(spec)
    cfg = _config(mix=mix)
    wl = prepare_workload(cfg, [("reasoning", 1), ("tools", 1)])
    reasoning, tools = wl.take("reasoning").request, wl.take("tools").request
    assert reasoning.messages[0].role == "user" and not reasoning.tools
    assert (
        reasoning.chat_template.enable_thinking and reasoning.sampling.thinking_token_budget == REASONING_BUDGET_TOKENS
    )
    assert [t.name for t in tools.tools] == ["get_weather"] and json.loads(tools.tools[0].parameters)[
        "type"
    ] == "object"
    assert not tools.HasField("tool_choice")  # auto: the model decides
    # A server without the parsers is refused before anything is measured.
    bare = ModelInfo.from_proto(pb.ModelInfo(modalities=[pb.ModalityInfo(modality=pb.MODALITY_TEXT, enabled=True)]))
    with pytest.raises(FailedPrecondition, match=r"no reasoning parser \(--reasoning-parser\); remove reasoning"):
        check_server(cfg, bare)
    full = ModelInfo.from_proto(pb.ModelInfo(reasoning_parser="nemotron_v3", tool_call_parser="qwen3_coder"))
    check_server(cfg, full)
