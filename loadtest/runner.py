"""Driving the load: warm-up, closed-loop and open-loop levels, one or more client processes.

One process runs one asyncio event loop; every prompt is prepared before the timed phase
(:mod:`loadtest.workload`), so during a level the client only writes prepared messages
and timestamps the responses. ``client_processes > 1`` splits every level into equal
shares run by that many processes (each with its own loop and channel), synchronised at
each level's start; their records are merged (``perf_counter`` is system-wide on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import multiprocessing as mp
import os
import queue as queue_mod
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc
import numpy as np

from loadtest.arrivals import poisson_arrivals, worker_start_offsets
from loadtest.config import LoadLevel, LoadTestConfig
from loadtest.mix import kind_schedule
from loadtest.results import LevelResult, LoadTestResult, MediaPoolInfo, RequestRecord, ServerInfo
from loadtest.stats import level_result
from loadtest.workload import PreparedRequest, Workload, prepare_workload
from nanovl import event_loop
from nanovl.client import (
    AsyncGeneration,
    AsyncInferenceClient,
    Delta,
    Final,
    FinishReason,
    InferenceRpcError,
    ModelInfo,
    read_token_file,
)
from nanovl.errors import FailedPrecondition, InvalidArgument, NanovlError, Unavailable

__all__ = [
    "ProgressListener",
    "ShardLevel",
    "ShardPlan",
    "check_server",
    "plan_shard",
    "run_load_test",
    "run_load_test_async",
    "wait_for_server",
]

# Prompts prepared per kind for a duration-bound closed-loop level (how many requests it
# will send is unknown up front). Beyond that, prompts repeat (reported).
_DURATION_POOL = 256
_DURATION_BLOCK = 64  # kind-schedule block for duration-bound levels
_RATE_POOL_MARGIN = 1.25  # Poisson counts fluctuate around rate x duration


class ProgressListener(Protocol):
    """Receives what happens during a run (live display); every method is optional work."""

    def phase(self, text: str, total: int | None = None) -> None: ...
    def phase_advance(self) -> None: ...
    def level_started(self, level: LoadLevel, requests: int | None, duration_s: float | None) -> None: ...
    def request_finished(self, record: RequestRecord) -> None: ...
    def level_finished(self, result: LevelResult) -> None: ...


class _NoProgress:
    def phase(self, text: str, total: int | None = None) -> None:
        pass

    def phase_advance(self) -> None:
        pass

    def level_started(self, level: LoadLevel, requests: int | None, duration_s: float | None) -> None:
        pass

    def request_finished(self, record: RequestRecord) -> None:
        pass

    def level_finished(self, result: LevelResult) -> None:
        pass


# ------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class ShardLevel:
    """One client process's share of a level."""

    level: LoadLevel  # the whole level, as reported
    concurrency: int  # closed loop: this share's workers (0 for open loop)
    rate: float  # open loop: this share's arrival rate (0 for closed loop)
    kinds: tuple[str, ...] | None  # counted level: this share's requests; None: duration-bound
    first_index: int  # global request index of this share's first request
    index_stride: int  # global index of local request j: first_index + j * index_stride


@dataclass(frozen=True)
class ShardPlan:
    shard: int
    shards: int
    warmup: tuple[str, ...]
    levels: tuple[ShardLevel, ...]
    pool_sizes: tuple[tuple[str, int], ...]


def _split(total: int, shards: int, shard: int) -> int:
    return total // shards + (1 if shard < total % shards else 0)


def plan_shard(config: LoadTestConfig, shard: int = 0, shards: int = 1) -> ShardPlan:
    """What client process ``shard`` of ``shards`` sends. Kinds are drawn for the whole
    level with the run's seed and dealt round-robin, so the shares together follow the mix
    exactly; only shard 0 warms up."""
    mix = config.mix
    levels: list[ShardLevel] = []
    need = dict.fromkeys(mix.kinds, 0)
    for i, level in enumerate(config.levels):
        rng = np.random.default_rng([config.seed, i])
        n = config.requests_for(level)
        concurrency = _split(int(level.value), shards, shard) if level.mode == "concurrency" else 0
        rate = level.value / shards if level.mode == "rate" else 0.0
        kinds: tuple[str, ...] | None = None
        if n is not None:
            schedule = kind_schedule(mix, rng, block=n)
            kinds = tuple(next(schedule) for _ in range(n))[shard::shards]
            for k in kinds:
                need[k] += 1
        else:
            assert config.duration_s is not None
            if level.mode == "rate":
                expected = rate * (config.duration_s + config.ramp_up_s) * _RATE_POOL_MARGIN
            else:
                expected = config.media_pool or _DURATION_POOL
            for e in mix.entries:
                need[e.kind] += math.ceil(expected * e.weight) + 1
        levels.append(ShardLevel(level, concurrency, rate, kinds, first_index=shard, index_stride=shards))
    warmup = tuple(mix.kinds[i % len(mix.kinds)] for i in range(config.warmup_count)) if shard == 0 else ()
    for k in warmup:
        need[k] += 1
    sizes = tuple((k, min(n, config.media_pool) if config.media_pool else n) for k, n in need.items() if n > 0)
    return ShardPlan(shard, shards, warmup, tuple(levels), sizes)


# ------------------------------------------------------------------------------ server


async def wait_for_server(client: AsyncInferenceClient, timeout_s: float) -> ModelInfo | None:
    """GetModelInfo, retried while the server is not up yet. None if the target does not
    implement it (not a nanovl server, but it may still serve Generate)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            return await client.get_model_info(timeout=max(0.1, min(5.0, left)))
        except InferenceRpcError as e:
            if e.code == grpc.StatusCode.UNIMPLEMENTED:
                return None
            retryable = e.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            if not retryable or time.monotonic() >= deadline:
                raise Unavailable(
                    f"the target did not answer GetModelInfo within {timeout_s:g} s ({e.code.name}: {e.details}); "
                    "check --target and that the server is up (or raise --connect-timeout)"
                ) from e
        await asyncio.sleep(0.5)


def check_server(config: LoadTestConfig, info: ModelInfo | None, workload: Workload | None = None) -> None:
    """Fail before measuring when the server cannot serve this workload at all."""
    if info is None:
        return
    for m in config.mix.modalities:
        mi = info.modality(m)
        if mi is not None and not mi.enabled:
            raise FailedPrecondition(f"the server has {m} disabled; remove {m} from --mix")
    for kind, parser, flag in (
        ("reasoning", info.reasoning_parser, "--reasoning-parser"),
        ("tools", info.tool_call_parser, "--enable-auto-tool-choice --tool-call-parser"),
    ):
        if kind in config.mix.chat_kinds and not parser:
            raise FailedPrecondition(
                f"the server has no {'reasoning' if kind == 'reasoning' else 'tool-call'} parser ({flag}); "
                f"remove {kind} from --mix"
            )
    video = info.modality("video")
    wanted = config.video.sample_frames or config.video.frames
    if (
        "video" in config.mix.modalities
        and not config.media_dir
        and video is not None
        and video.max_num_frames
        and wanted > video.max_num_frames
    ):
        raise InvalidArgument(
            f"the server samples at most {video.max_num_frames} video frames; "
            f"lower --video-size frames or set --video-sample-frames <= {video.max_num_frames}"
        )
    if workload is None:
        return
    if not config.chunked and info.max_message_bytes:
        largest = workload.largest_message_bytes()
        if largest > info.max_message_bytes:
            raise InvalidArgument(
                f"a prepared request is {largest:,} bytes, over the server's {info.max_message_bytes:,}-byte "
                "message limit; use --chunked (StreamGenerate) or smaller media"
            )
    if info.max_request_bytes:
        largest_media = workload.largest_media_bytes()
        if largest_media > info.max_request_bytes:
            raise InvalidArgument(
                f"a prompt carries {largest_media:,} media bytes, over the server's "
                f"{info.max_request_bytes:,}-byte request limit; use smaller media"
            )


def _server_info(info: ModelInfo | None) -> ServerInfo | None:
    if info is None:
        return None
    return ServerInfo(
        model_name=info.model_name,
        architecture=info.architecture,
        max_model_len=info.max_model_len,
        max_num_seqs=info.max_num_seqs,
        vllm_version=info.vllm_version,
        nanovl_version=info.nanovl_version,
    )


# ------------------------------------------------------------------------------ requests


_FAILED_FINISH = (FinishReason.ABORT, FinishReason.ERROR)


class _Targets:
    """The clients (channels) per target; request ``index`` of a level goes to target
    ``index mod n``, so the load is spread evenly whatever the number of client processes,
    and over that target's channels in turn."""

    def __init__(self, clients: Sequence[tuple[str, Sequence[AsyncInferenceClient]]]) -> None:
        self.clients = tuple((t, tuple(cs)) for t, cs in clients)
        self._turn = [itertools.count() for _ in self.clients]

    def pick(self, index: int, *, connection: int | None = None) -> tuple[str, AsyncInferenceClient]:
        """Target ``index mod n``; its channel ``connection`` (mod its count), else the next
        in turn."""
        i = index % len(self.clients)
        target, channels = self.clients[i]
        c = next(self._turn[i]) if connection is None else connection
        return target, channels[c % len(channels)]

    async def send(
        self, item: PreparedRequest, index: int, scheduled: float | None, timeout_s: float, *, route: int | None = None
    ) -> RequestRecord:
        """``_send`` to the target of ``index``; a warm-up's ``route`` r names target
        ``r mod n`` and its channel ``r // n``, so that every kind warms every channel."""
        if route is None:
            target, client = self.pick(index)
        else:
            target, client = self.pick(route, connection=route // len(self.clients))
        return await _send(client, item, index, scheduled, timeout_s, target=target)


async def _send(
    client: AsyncInferenceClient,
    item: PreparedRequest,
    index: int,
    scheduled: float | None,
    timeout_s: float,
    *,
    target: str = "",
) -> RequestRecord:
    """Send one prepared request and time its response stream (absolute perf_counter
    times; ``scheduled`` is the open loop's planned send time)."""
    first = last = None
    tokens = deltas = prompt_tokens = 0
    itl: list[float] = []
    final: Final | None = None
    code: str | None = None
    message: str | None = None
    start = time.perf_counter()
    try:
        if item.chunks is not None:
            call = client.stub.StreamGenerate(iter(item.chunks), timeout=timeout_s)
        else:
            call = client.stub.Generate(item.request, timeout=timeout_s)
        async with AsyncGeneration(call) as gen:
            async for event in gen:
                now = time.perf_counter()
                if type(event) is Delta:
                    k = len(event.token_ids)
                    if not k:
                        continue  # text-only delta: no token arrived
                    deltas += 1
                    tokens += k
                    if first is None:
                        first = now
                    else:
                        itl.extend([(now - last) / k] * k)  # type: ignore[operator]
                    last = now
                elif type(event) is Final:
                    final = event
        end = time.perf_counter()
        if final is None:
            code, message = "INTERNAL", "the stream ended without a Final message"
        elif final.finish_reason in _FAILED_FINISH:
            code, message = f"FINISH_{final.finish_reason.name}", f"Final.finish_reason = {final.finish_reason.value}"
        else:
            prompt_tokens = final.usage.prompt_tokens
            # Final.usage is authoritative (a Delta may omit ids in some server modes).
            tokens = final.usage.completion_tokens or tokens
    except InferenceRpcError as e:
        end = time.perf_counter()
        code, message = e.code.name, e.details
    except NanovlError as e:
        end = time.perf_counter()
        code, message = e.code.name, str(e)
    except Exception as e:  # a client-side bug must be counted, not end the run
        end = time.perf_counter()
        code, message = "UNKNOWN", f"client: {type(e).__name__}: {e}"
    ok = code is None
    return RequestRecord(
        index=index,
        kind=item.kind,
        start_s=start,
        scheduled_s=start if scheduled is None else scheduled,
        latency_s=end - start,
        ttft_s=first - start if first is not None and ok else None,
        output_tokens=tokens if ok else 0,
        prompt_tokens=prompt_tokens,
        deltas=deltas if ok else 0,
        error_code=code,
        error_message=message,
        server_ttft_s=final.timings.ttft_s if final is not None and ok else None,
        server_queue_s=final.timings.queue_s if final is not None and ok else None,
        server_decode_s=final.timings.decode_media_s if final is not None and ok else None,
        itl_s=tuple(itl) if ok else (),
        target=target,
    )


class _Events(Protocol):
    """What a shard reports (directly in one process, through a queue from children)."""

    def ready(self, shard: int, server: ServerInfo | None, pools: tuple[MediaPoolInfo, ...], warmup: int) -> None: ...
    def record(self, level_index: int, record: RequestRecord) -> None: ...
    def level_done(self, shard: int, level_index: int, cpu_s: float, pools: tuple[MediaPoolInfo, ...]) -> None: ...


async def _closed_loop(
    targets: _Targets,
    workload: Workload,
    sl: ShardLevel,
    config: LoadTestConfig,
    rng: np.random.Generator,
    on_record: Callable[[RequestRecord], None],
) -> None:
    kinds = iter(sl.kinds) if sl.kinds is not None else kind_schedule(config.mix, rng, _DURATION_BLOCK)
    counter = iter(range(1 << 62))
    t0 = time.perf_counter()
    deadline = None if config.duration_s is None else t0 + config.duration_s

    async def worker(delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        # The iterators are shared: each next() runs without awaiting, so workers never
        # take the same request.
        for kind in kinds:
            if deadline is not None and time.perf_counter() >= deadline:
                return
            index = sl.first_index + next(counter) * sl.index_stride
            on_record(await targets.send(workload.take(kind), index, None, config.timeout_s))

    await asyncio.gather(*(worker(d) for d in worker_start_offsets(sl.concurrency, config.ramp_up_s)))


async def _open_loop(
    targets: _Targets,
    workload: Workload,
    sl: ShardLevel,
    config: LoadTestConfig,
    rng: np.random.Generator,
    on_record: Callable[[RequestRecord], None],
) -> None:
    if sl.kinds is not None:
        if not sl.kinds:
            return
        arrivals = poisson_arrivals(sl.rate, rng, count=len(sl.kinds), ramp_up_s=config.ramp_up_s)
        kinds = iter(sl.kinds)
    else:
        arrivals = poisson_arrivals(sl.rate, rng, duration_s=config.duration_s, ramp_up_s=config.ramp_up_s)
        kinds = kind_schedule(config.mix, rng, _DURATION_BLOCK)
    tasks: list[asyncio.Task[None]] = []

    async def one(item: PreparedRequest, index: int, scheduled: float) -> None:
        on_record(await targets.send(item, index, scheduled, config.timeout_s))

    t0 = time.perf_counter()
    for j, (offset, kind) in enumerate(zip(arrivals, kinds, strict=False)):
        scheduled = t0 + float(offset)
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        item = workload.take(kind)
        tasks.append(asyncio.create_task(one(item, sl.first_index + j * sl.index_stride, scheduled)))
    await asyncio.gather(*tasks)


def client_token(config: LoadTestConfig) -> str | None:
    """The bearer token: from ``config.token_file``, else ``$NANOVL_TOKEN`` (read in each
    client process, so it is never pickled or written to a report)."""
    if config.token_file:
        return read_token_file(config.token_file)
    return os.environ.get("NANOVL_TOKEN", "").strip() or None


async def _run_shard(
    config: LoadTestConfig,
    plan: ShardPlan,
    events: _Events,
    *,
    sync: Callable[[], None] | None = None,
    progress: ProgressListener | None = None,
) -> None:
    """Everything one client process does: connect, prepare, warm up, run each level."""
    p = progress or _NoProgress()
    async with contextlib.AsyncExitStack() as stack:
        token = client_token(config)
        # Several channels to one target each hold their own connection only with a local
        # subchannel pool (gRPC shares one between identical channels otherwise).
        options = [("grpc.use_local_subchannel_pool", 1)] if config.connections > 1 else []
        clients = [
            (
                t,
                [
                    await stack.enter_async_context(
                        AsyncInferenceClient(t, tls=config.tls, token=token, options=options)
                    )
                    for _ in range(config.connections)
                ],
            )
            for t in config.targets
        ]
        targets = _Targets(clients)
        info = None
        for t, channels in clients:
            p.phase(f"connecting to {t}" + (f" ({len(channels)} connections)" if len(channels) > 1 else ""))
            for client in channels:
                info = await wait_for_server(client, config.connect_timeout_s)
            check_server(config, info)
        total = sum(n for _, n in plan.pool_sizes)
        p.phase(f"preparing {total} prompts", total)
        workload = await asyncio.to_thread(
            prepare_workload, config, plan.pool_sizes, seed_key=(plan.shard,), on_prepared=p.phase_advance
        )
        check_server(config, info, workload)
        if plan.warmup:
            p.phase(f"warming up ({len(plan.warmup)} requests, not measured)", len(plan.warmup))
        kinds_per_round = max(1, len(config.mix.kinds))
        for j, kind in enumerate(plan.warmup):
            # Every kind once on the first target, then on the next: each server warms every kind.
            rec = await targets.send(workload.take(kind), -1 - j, None, config.timeout_s, route=j // kinds_per_round)
            if not rec.ok:
                code = grpc.StatusCode[rec.error_code] if rec.error_code in grpc.StatusCode.__members__ else None
                raise NanovlError(
                    f"warm-up request ({kind}) failed on {rec.target}, nothing was measured: "
                    f"{rec.error_code}: {rec.error_message}",
                    code=code or grpc.StatusCode.UNKNOWN,
                )
            p.phase_advance()
        events.ready(plan.shard, _server_info(info), workload.pool_info(), len(plan.warmup))
        for i, sl in enumerate(plan.levels):
            if sync is not None:
                await asyncio.to_thread(sync)
            rng = np.random.default_rng([config.seed, i, plan.shard, 1])
            cpu0 = time.process_time()
            loop = _closed_loop if sl.level.mode == "concurrency" else _open_loop
            await loop(targets, workload, sl, config, rng, lambda r, i=i: events.record(i, r))
            events.level_done(plan.shard, i, time.process_time() - cpu0, workload.pool_info())


# ------------------------------------------------------------------------------ results


class _Aggregator:
    """Merges shard reports into level results and drives the progress display."""

    def __init__(self, config: LoadTestConfig, shards: int, progress: ProgressListener) -> None:
        self.config = config
        self.shards = shards
        self.progress = progress
        self.server: ServerInfo | None = None
        self.warmup = 0
        self._ready: set[int] = set()
        self._records: list[list[RequestRecord]] = [[] for _ in config.levels]
        self._done: list[dict[int, float]] = [{} for _ in config.levels]
        self._pools: dict[int, tuple[MediaPoolInfo, ...]] = {}
        self.levels: list[LevelResult] = []

    def _start_level(self, i: int) -> None:
        level = self.config.levels[i]
        self.progress.level_started(level, self.config.requests_for(level), self.config.duration_s)

    def ready(self, shard: int, server: ServerInfo | None, pools: tuple[MediaPoolInfo, ...], warmup: int) -> None:
        self._ready.add(shard)
        self.server = self.server or server
        self.warmup += warmup
        self._pools[shard] = pools
        if len(self._ready) == self.shards:
            self._start_level(0)

    def record(self, level_index: int, record: RequestRecord) -> None:
        self._records[level_index].append(record)
        self.progress.request_finished(record)

    def level_done(self, shard: int, level_index: int, cpu_s: float, pools: tuple[MediaPoolInfo, ...]) -> None:
        self._done[level_index][shard] = cpu_s
        self._pools[shard] = pools
        if len(self._done[level_index]) < self.shards:
            return
        result = level_result(
            self.config.levels[level_index],
            self._records[level_index],
            kinds=self.config.mix.kinds,
            cpu_s=sum(self._done[level_index].values()),
            processes=self.shards,
            targets=self.config.targets,
        )
        self._records[level_index] = []
        self.levels.append(result)
        self.progress.level_finished(result)
        if level_index + 1 < len(self.config.levels):
            self._start_level(level_index + 1)

    def media(self) -> tuple[MediaPoolInfo, ...]:
        merged: dict[str, list[MediaPoolInfo]] = {}
        for pools in self._pools.values():
            for p in pools:
                merged.setdefault(p.kind, []).append(p)
        out = []
        for kind, ps in merged.items():
            unique = sum(p.unique for p in ps)
            mean = sum(p.mean_media_bytes * p.unique for p in ps) / unique if unique else 0.0
            out.append(MediaPoolInfo(kind, unique, sum(p.sent for p in ps), mean))
        return tuple(out)

    def result(self, started_at: str) -> LoadTestResult:
        return LoadTestResult(
            name=self.config.name or _default_name(self.config),
            target=self.config.target,
            started_at=started_at,
            config=self.config,
            command_line=self.config.command_line(),
            server=self.server,
            client_host=socket.gethostname(),
            client_cpus=os.cpu_count() or 1,
            warmup_requests=self.warmup,
            media=self.media(),
            levels=tuple(self.levels),
        )


def _default_name(config: LoadTestConfig) -> str:
    return f"{config.target} {'stream' if config.chunked else 'unary'} {config.mix}"


# ------------------------------------------------------------------------------ processes


def _child_main(config: LoadTestConfig, shard: int, shards: int, barrier: Any, out: Any) -> None:
    """Entry point of client process ``shard`` (spawned): report everything through ``out``."""

    class QueueEvents:
        def ready(self, shard: int, server: ServerInfo | None, pools: tuple[MediaPoolInfo, ...], warmup: int) -> None:
            out.put(("ready", shard, server, pools, warmup))

        def record(self, level_index: int, record: RequestRecord) -> None:
            out.put(("record", level_index, record))

        def level_done(self, shard: int, level_index: int, cpu_s: float, pools: tuple[MediaPoolInfo, ...]) -> None:
            out.put(("level_done", shard, level_index, cpu_s, pools))

    try:
        plan = plan_shard(config, shard, shards)
        event_loop.run(_run_shard(config, plan, QueueEvents(), sync=barrier.wait))
        out.put(("finished", shard))
    except threading.BrokenBarrierError:
        out.put(("finished", shard))  # another process failed; the parent reports it
    except NanovlError as e:
        out.put(("error", shard, e.code.name, str(e)))
    except BaseException as e:  # noqa: BLE001 - everything must reach the parent
        out.put(("error", shard, "UNKNOWN", f"client process {shard}: {type(e).__name__}: {e}"))


async def _run_processes(config: LoadTestConfig, aggregator: _Aggregator, progress: ProgressListener) -> None:
    n = config.client_processes
    ctx = mp.get_context("spawn")  # fork after grpc started threads is unsafe
    barrier = ctx.Barrier(n)
    out = ctx.Queue()
    procs = [ctx.Process(target=_child_main, args=(config, s, n, barrier, out), daemon=True) for s in range(n)]
    progress.phase(f"starting {n} client processes (connect, prepare prompts, warm up)")
    for proc in procs:
        proc.start()
    finished = 0
    error: tuple[str, str] | None = None
    try:
        while finished < n:
            try:
                msg = await asyncio.to_thread(out.get, True, 0.5)
            except queue_mod.Empty:
                if any(not p.is_alive() and p.exitcode not in (0, None) for p in procs):
                    error = error or ("UNKNOWN", "a client process died without a report (out of memory?)")
                    barrier.abort()
                    break
                continue
            kind = msg[0]
            if kind == "ready":
                aggregator.ready(*msg[1:])
            elif kind == "record":
                aggregator.record(*msg[1:])
            elif kind == "level_done":
                aggregator.level_done(*msg[1:])
            elif kind == "finished":
                finished += 1
            elif kind == "error":
                error = error or (msg[2], msg[3])
                finished += 1
                barrier.abort()
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
    if error is not None:
        code = grpc.StatusCode[error[0]] if error[0] in grpc.StatusCode.__members__ else grpc.StatusCode.UNKNOWN
        raise NanovlError(error[1], code=code)


# ------------------------------------------------------------------------------ entry points


async def run_load_test_async(config: LoadTestConfig, *, progress: ProgressListener | None = None) -> LoadTestResult:
    """Run ``config`` and return its results (from within a running event loop)."""
    p = progress or _NoProgress()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    aggregator = _Aggregator(config, config.client_processes, p)
    if config.client_processes > 1:
        await _run_processes(config, aggregator, p)
    else:
        await _run_shard(config, plan_shard(config), aggregator, progress=p)
    return aggregator.result(started_at)


def run_load_test(config: LoadTestConfig, *, progress: ProgressListener | None = None) -> LoadTestResult:
    """Run ``config`` and return its results (blocking; starts its own event loop, uvloop
    where installed: a cheaper client leaves more of the machine to what it measures)."""
    return event_loop.run(run_load_test_async(config, progress=progress))
