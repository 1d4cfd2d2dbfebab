"""The requests of every measured point, identical for every side.

nanovl's side is driven by the load tester itself (``loadtest.run_load_test``), so the
requests are the load tester's: for each (workload, concurrency) point this module builds
the point's ``LoadTestConfig`` and asks the load tester's own planner and workload builder
(``plan_shard`` + ``prepare_workload``) for the prompts it will send, in the order it will
send them (warm-up first, then the measured requests, request ``index`` i being the i-th).
The other sides convert those same ``GenerateRequest`` messages (:mod:`bench.convert`).
Every point has its own seed, so no prompt repeats anywhere in a side's run and no
server cache can serve one (vLLM keeps encoder outputs of finished requests for reuse, so
a repeated image would skip the vision encoder).

Each workload starts with an unmeasured warm-up point: the first requests with a new media
shape run much slower (operator set-up inside the engine), and one warm-up request per
level is not enough to absorb that.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench.config import WORKLOADS, BenchConfig
from loadtest.config import AudioSpec, ImageSpec, LoadTestConfig, VideoSpec
from loadtest.mix import Mix
from loadtest.runner import plan_shard
from loadtest.workload import PreparedRequest, prepare_workload

__all__ = [
    "PLACEHOLDER_TARGET",
    "WARMUP_CONCURRENCY",
    "Point",
    "build_points",
    "build_profile_points",
    "loadtest_config",
]

# The load tester's config needs a target; the prompts do not depend on it.
PLACEHOLDER_TARGET = "127.0.0.1:1"

# The warm-up point of each workload: this many requests in flight, this many per kind.
WARMUP_CONCURRENCY = 4
_WARMUP_PER_KIND = 4
_WARMUP_LEVEL = 99  # seed offset of the warm-up points
_PROFILE_SEED = 7919  # seed offset of the profiled (unmeasured) passes


@dataclass(frozen=True)
class Point:
    """One measured point: a workload at one concurrency."""

    workload: str
    concurrency: int
    config: LoadTestConfig  # what nanovl's side runs (with its real target)
    warmup: tuple[PreparedRequest, ...]  # sent one by one before the level, not measured
    measured: tuple[PreparedRequest, ...]  # request i has index i
    warmup_only: bool = False  # run, then discarded
    pass_index: int = 0  # which of BenchConfig.passes (fresh prompts each)

    @property
    def key(self) -> tuple[str, int]:
        return (self.workload, self.concurrency)


def loadtest_config(
    config: BenchConfig,
    workload: str,
    level_index: int,
    pass_index: int = 0,
    *,
    level: tuple[int, int] | None = None,
    seed_offset: int = 0,
) -> LoadTestConfig:
    """The point's load-test config; ``level_index`` ``_WARMUP_LEVEL`` is the warm-up point;
    ``level`` (concurrency, requests) overrides the config's level (profiled passes)."""
    mix = Mix.parse(WORKLOADS[workload].mix)
    if level is not None:
        concurrency, requests = level
    elif level_index == _WARMUP_LEVEL:
        concurrency, requests = WARMUP_CONCURRENCY, _WARMUP_PER_KIND * len(mix.entries)
    else:
        concurrency, requests = config.levels[level_index]
    w, h = config.image_size
    vw, vh = config.video_size
    return LoadTestConfig(
        target=PLACEHOLDER_TARGET,
        concurrency=(concurrency,),
        requests=requests,
        mix=mix,
        image=ImageSpec(w, h, "jpeg"),
        video=VideoSpec(frames=config.video_frames, width=vw, height=vh, fps=config.video_fps, format="mp4"),
        audio=AudioSpec(seconds=config.audio_seconds, format="wav"),
        content="smooth",
        prompt_words=config.prompt_words,
        # The checkpoint's chat template, the only prompt form all three frontends share.
        chat=True,
        max_tokens=config.max_tokens,
        ignore_eos=True,
        temperature=0.0,
        timeout_s=600.0,
        connect_timeout_s=120.0,
        # One seed per point and pass: prompts never repeat across points or passes.
        seed=config.seed + 1000 * list(WORKLOADS).index(workload) + level_index + 100_000 * pass_index + seed_offset,
        name=f"bench {workload} c={concurrency}" + (f" pass {pass_index + 1}" if pass_index else ""),
    )


def _point(config: BenchConfig, workload: str, level_index: int, pass_index: int = 0, **kw: object) -> Point:
    lt = loadtest_config(config, workload, level_index, pass_index, **kw)  # type: ignore[arg-type]
    plan = plan_shard(lt)
    (level,) = plan.levels
    assert level.kinds is not None  # counted levels only
    # Exactly what the load tester's single client process prepares and takes.
    pool = prepare_workload(lt, plan.pool_sizes, seed_key=(plan.shard,))
    warmup = tuple(pool.take(k) for k in plan.warmup)
    measured = tuple(pool.take(k) for k in level.kinds)
    return Point(
        workload,
        lt.concurrency[0],
        lt,
        warmup,
        measured,
        warmup_only=level_index == _WARMUP_LEVEL,
        pass_index=pass_index,
    )


def build_points(config: BenchConfig) -> tuple[Point, ...]:
    """Every point of the run, workload-major (the order each side runs them), each
    workload's warm-up point first, then its levels once per pass (c=1, 8, 32, c=1, 8, 32,
    ...: a pass's repeat comes minutes later, not straight after, so one burst of
    interference does not spoil both). Passes up to ``config.passes.max_passes`` are
    planned; the ones past ``min_passes`` run only where a point is unsettled
    (:mod:`bench.passes`)."""
    points = []
    for w in config.workloads:
        points.append(_point(config, w, _WARMUP_LEVEL))
        points += [_point(config, w, i, k) for k in range(config.passes.max_passes) for i in range(len(config.levels))]
    return tuple(points)


def build_profile_points(config: BenchConfig) -> tuple[Point, ...]:
    """The profiled passes (``config.profile_points`` among the run's workloads): fresh
    prompts, ``profile_requests_per_slot`` requests per unit of concurrency."""
    return tuple(
        _point(
            config,
            w,
            0,
            level=(c, c * config.profile_requests_per_slot),
            seed_offset=_PROFILE_SEED + c,
        )
        for w, c in config.profile_points
        if w in config.workloads
    )


def with_target(point: Point, target: str, connections: int = 1) -> LoadTestConfig:
    """The point's load test against ``target`` over ``connections`` channels, with the
    warm-up count it was planned with (the prompts are the ones every side gets)."""
    return replace(point.config, target=target, connections=connections, warmup_requests=point.config.warmup_count)
