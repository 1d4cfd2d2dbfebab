"""(a) ``AsyncLLM`` called in-process, no frontend: the limit for any frontend.

Runs as a child process of its own (``python -m bench.sides.inprocess IN OUT``: started
like the servers, with every CPU and its output in a log file; the points come in, and
the results go out, as pickles), with nanovl's ``Engine`` wrapper over ``AsyncLLM``, built from nanovl's
``default_engine_args`` with overrides that make its ``AsyncEngineArgs`` equal, field by
field, to what the servers parse from their flags, and warmed up exactly as ``nanovl
serve`` does. Media are decoded and the chat rendered before timing (with
nanovl's own code, so the engine gets the prompt the server would give it); the timed part
is vLLM's renderer (tokenizer + multimodal processor) and generation.
"""

from __future__ import annotations

import pickle
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.config import PassPolicy
from bench.convert import inprocess_prompt
from bench.loop import StreamClock, point_measurer
from bench.passes import run_schedule
from bench.plan import Point
from bench.sides import PointOutcome
from loadtest.results import RequestRecord
from nanovl import event_loop
from nanovl.errors import NanovlError

__all__ = ["InprocessJob", "InprocessRun", "main", "run_inprocess"]


@dataclass(frozen=True)
class InprocessRun:
    startup_s: float | None
    outcomes: tuple[PointOutcome, ...]
    error: str | None = None


@dataclass(frozen=True)
class _Prepared:
    kind: str
    prompt: Any  # AssembledPrompt, media decoded
    sampling: Any  # vllm.SamplingParams


@dataclass(frozen=True)
class InprocessJob:
    points: tuple[Point, ...]
    checkpoint: str
    engine_overrides: dict[str, Any]  # for default_engine_args (bench.servers.inprocess_overrides)
    passes: PassPolicy = PassPolicy()


def run_inprocess(job: InprocessJob) -> InprocessRun:
    """Start the engine, measure every point, stop (blocking)."""
    try:
        # The same event loop as `nanovl serve` and vLLM's servers (uvloop): the limit
        # for a frontend is measured with the best loop any of them uses.
        return event_loop.run(_run(job.points, job.checkpoint, job.engine_overrides, job.passes))
    except Exception as e:  # reported, not raised: the other sides still run
        return InprocessRun(None, (), f"{type(e).__name__}: {e}")


def main(argv: Sequence[str] | None = None) -> int:
    job_path, out_path = argv if argv is not None else sys.argv[1:3]
    with open(job_path, "rb") as f:
        job = pickle.load(f)
    run = run_inprocess(job)
    with open(out_path, "wb") as f:
        pickle.dump(run, f)
    return 0 if run.error is None else 1


async def _send(engine: Any, item: _Prepared, index: int) -> RequestRecord:
    clock = StreamClock()
    try:
        rendered = await engine.render(item.prompt)
        async for output in engine.generate(rendered, item.sampling, request_id=f"bench-{uuid.uuid4().hex}"):
            clock.tokens_arrived(len(output.outputs[0].token_ids))
    except NanovlError as e:
        return clock.record(index, item.kind, prompt_tokens=0, error=(e.code.name, str(e)))
    return clock.record(index, item.kind, prompt_tokens=rendered.num_prompt_tokens)


async def _run(points: Sequence[Point], checkpoint: str, overrides: dict[str, Any], passes: PassPolicy) -> InprocessRun:
    from model.prompt import ChatRenderer
    from service.engine import Engine, default_engine_args
    from service.sampling import to_sampling_params
    from service.settings import ServerSettings

    t0 = time.perf_counter()
    engine = await Engine.start(default_engine_args(checkpoint, **overrides), warmup=True)
    startup_s = time.perf_counter() - t0
    try:
        renderer = ChatRenderer(checkpoint)
        server = ServerSettings()
        vocab = engine.llm.vllm_config.model_config.get_vocab_size()

        def prepare(r: Any) -> _Prepared:
            prompt = inprocess_prompt(
                r.request,
                renderer,
                default_video_frames=server.default_video_frames,
                audio_sample_rate=engine.summary.audio_sample_rate,
                limits=server.media_limits,
            )
            sampling = to_sampling_params(
                r.request.sampling, default_max_tokens=server.default_max_tokens, vocab_size=vocab
            )
            return _Prepared(r.kind, prompt, sampling)

        async def send(item: _Prepared, index: int) -> RequestRecord:
            return await _send(engine, item, index)

        measure = point_measurer(send, prepare, server_pid=None)
        outcomes = await run_schedule(points, measure, passes, log=lambda m: print(f"inprocess: {m}", flush=True))
        return InprocessRun(startup_s, tuple(outcomes))
    finally:
        engine.shutdown()


if __name__ == "__main__":
    # Through the module's real name, so the pickled results unpickle as bench.sides.inprocess.*.
    from bench.sides import inprocess

    sys.exit(inprocess.main())
