"""The engine: vLLM's ``AsyncLLM`` built from vLLM's own typed ``AsyncEngineArgs``.

Responsibilities: CPU-safe defaults, start-up warm-up per enabled modality, rendering a
prompt into an engine input (vLLM's renderer: tokenization and multimodal processing
off the event loop), generation, abort, health and shutdown. It translates vLLM's
failures into ``NanovlError``s with actionable messages; it knows nothing of gRPC.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.item_maxima import ItemMaxima
from model.prompt import AssembledPrompt, video_item
from nanovl.errors import FailedPrecondition, InvalidArgument, NanovlError, OutOfRange, Unavailable
from nanovl.modalities import MODALITIES, Modality
from service.grammar_guard import GrammarGuard

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.outputs import RequestOutput
    from vllm.v1.engine.async_llm import AsyncLLM

    from model.token_accounting import ModelGeometry

log = logging.getLogger(__name__)

# Settings vLLM needs on CPU for this model (see docs/architecture.md): prefix caching
# switches Mamba to "align" mode, which the CPU chunk-scan kernel cannot serve; the
# model casts media features to bf16; eager mode starts ~2x faster.
CPU_ENGINE_DEFAULTS: Mapping[str, Any] = {
    "enable_prefix_caching": False,
    "dtype": "bfloat16",
    "enforce_eager": True,
    # When a partially prefilled request's sample is discarded, vLLM rewinds its seeded
    # generator with Generator.set_offset, which CPU generators do not support: one
    # request with a `seed` whose prompt gets chunked kills the engine. Without chunked
    # prefill no prompt is split, so seeded sampling is safe.
    "enable_chunked_prefill": False,
}


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


# nanovl's defaults for vLLM's torch profiler (``ProfilerConfig``), used only for fields
# the operator left unset. vLLM's front-end profiler records the server process for the
# whole session, unbounded by engine steps (vLLM warns it "may result in high overhead"
# with step limits), and nanovl's own spans cover the front end.
PROFILER_DEFAULTS: Mapping[str, Any] = {"ignore_frontend": True}
# On CPU every op runs on the CPU thread the profiler watches: vLLM's default
# torch_profiler_with_stack=True turns on torch's Python tracer, which records every Python
# call of the worker, between steps too (gigabytes within minutes, and an export that
# blocks the engine for minutes). Shapes, memory and FLOPs are off in vLLM already; kept
# explicit so a vLLM default change cannot grow the trace unnoticed.
CPU_PROFILER_DEFAULTS: Mapping[str, Any] = {
    "torch_profiler_with_stack": False,
    "torch_profiler_record_shapes": False,
    "torch_profiler_with_memory": False,
    "torch_profiler_with_flops": False,
}


def bounded_profiler_config(fields: Mapping[str, Any], *, cpu: bool) -> dict[str, Any]:
    """vLLM ``ProfilerConfig`` fields with nanovl's defaults filled in where ``fields``
    (what the operator set) has none; unchanged unless ``fields["profiler"] == "torch"``."""
    if fields.get("profiler") != "torch":
        return dict(fields)
    return {**PROFILER_DEFAULTS, **(CPU_PROFILER_DEFAULTS if cpu else {}), **fields}


def cpu_thread_binding(ncpu: int, workers: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` giving each of ``workers`` CPU workers its own contiguous
    cores: ``0-1`` for one worker on 2 cores, ``0|1`` for two, ``0-3|4-7`` for two on 8.

    vLLM's CPU backend wants one ``|``-separated core list per local worker: data-parallel
    ranks on this node x tensor x pipeline parallel size (``OMPProcessManager`` in
    ``vllm/utils/ompmultiprocessing.py``). Raises ``InvalidArgument`` with fewer cores than workers."""
    if workers > ncpu:
        raise InvalidArgument(
            f"on CPU every engine worker needs cores of its own: {workers} workers (data-parallel ranks on this "
            f"node x tensor x pipeline parallel size) but this machine has {ncpu} cores; use fewer ranks"
        )
    bounds = [round(i * ncpu / workers) for i in range(workers + 1)]
    groups = [(lo, hi - 1) for lo, hi in zip(bounds, bounds[1:], strict=False)]
    return "|".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in groups)


def apply_process_environment(cache_dir: Path, *, cpu_workers: int = 1) -> None:
    """Environment the engine's worker processes inherit. Only fills what the operator
    did not set; called once by the process entry point before the engine starts.
    ``cpu_workers``: the engine's workers on this machine (``cpu_thread_binding``)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    defaults = {
        "VLLM_CACHE_ROOT": str(cache_dir / "vllm"),
        "HF_HOME": str(cache_dir / "hf"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "inductor"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    if on_cpu():
        defaults.update(
            {
                "VLLM_CPU_KVCACHE_SPACE": "1",
                "VLLM_CPU_OMP_THREADS_BIND": cpu_thread_binding(os.cpu_count() or 1, cpu_workers),
                "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            }
        )
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def local_cpu_workers(engine_args: Any) -> int:
    """Engine workers this process starts on this machine: local data-parallel ranks x tensor
    x pipeline parallel size (vLLM's ``ParallelConfig.local_world_size`` per rank)."""
    local_ranks = engine_args.data_parallel_size_local or engine_args.data_parallel_size or 1
    return int(local_ranks) * int(engine_args.tensor_parallel_size or 1) * int(engine_args.pipeline_parallel_size or 1)


# The vLLM worker extension that carries nanovl's in-worker methods (weight check, live
# budget, dummy profile). A string, not an import: vLLM resolves it inside its worker
# processes, and this layer must not import the sizing layer above it
# (tests/core/test_layers.py checks that it resolves).
WORKER_EXTENSION_CLS = "profiling.worker_extension.NanovlWorkerExtension"


def default_engine_args(model: str, **overrides: Any) -> AsyncEngineArgs:
    """``AsyncEngineArgs`` with nanovl's defaults; every vLLM argument can be overridden.
    A ``profiler_config`` given as a mapping gets nanovl's profiler defaults
    (:func:`bounded_profiler_config`) for the fields it leaves out.
    The reasoning parser defaults to the checkpoint's (``model.output_format``): it also
    gives the engine the reasoning config ``thinking_token_budget`` needs."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    from model.output_format import output_format_of

    # Stats stay on: RequestOutput.metrics (queue time, TTFT) is None without them.
    kwargs: dict[str, Any] = {
        "model": model,
        "trust_remote_code": True,
        "worker_extension_cls": WORKER_EXTENSION_CLS,
        "reasoning_parser": output_format_of(model).reasoning_parser,
    }
    if on_cpu():
        kwargs.update(CPU_ENGINE_DEFAULTS)
    kwargs.update(overrides)
    if isinstance(kwargs.get("profiler_config"), Mapping):
        kwargs["profiler_config"] = bounded_profiler_config(kwargs["profiler_config"], cpu=on_cpu())
    return AsyncEngineArgs(**kwargs)


@dataclass(frozen=True)
class ModelSummary:
    """What the running engine serves: reported by GetModelInfo and used for validation."""

    model: str
    served_model_name: str
    max_model_len: int
    limits: Mapping[Modality, int]
    audio_sample_rate: int | None
    vllm_version: str
    # --exact-mm-sizing: the declared largest video/audio item (None: vLLM's own sizing),
    # and the encoder tokens per item vLLM's budget is built from, as applied.
    item_maxima: ItemMaxima | None = None
    max_tokens_per_item: Mapping[Modality, int] = field(default_factory=dict)
    # vLLM's reasoning parser (engine argument; "" = none): splits reasoning from answers
    # and gives thinking_token_budget its reasoning config.
    reasoning_parser: str = ""

    @property
    def enabled_modalities(self) -> tuple[Modality, ...]:
        return tuple(m for m in MODALITIES if self.limits.get(m, 0) > 0)

    def describe(self) -> str:
        """One line for the operator: what is served and its limits."""
        per_prompt = ", ".join(f"{m} {self.limits[m]}" for m in self.enabled_modalities)
        media = f"; media per prompt: {per_prompt}" if per_prompt else "; text only"
        return f"{self.served_model_name} (vLLM {self.vllm_version}, max_model_len {self.max_model_len}{media})"


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt after vLLM's renderer: token ids and where each media item landed."""

    engine_input: Any
    num_prompt_tokens: int
    tokens_by_modality: Mapping[str, int] = field(default_factory=dict)
    source: AssembledPrompt | None = None  # to render again (see Engine.generate)


def _summarize(llm: AsyncLLM) -> ModelSummary:
    import vllm

    from model.vllm_exact_sizing import declared_maxima, per_item_sizing

    model_config = llm.vllm_config.model_config
    mm_config = model_config.multimodal_config
    hf_config = model_config.hf_config
    sound = getattr(hf_config, "sound_config", None)
    limits: dict[Modality, int] = {}
    if mm_config is not None:
        for m in MODALITIES:
            if m == "audio" and sound is None:
                continue
            limits[m] = int(mm_config.get_limit_per_prompt(m))
    maxima = declared_maxima(hf_config)
    applied: dict[Modality, int] = {}
    if maxima is not None and mm_config is not None:
        enabled = {m: 1 for m, n in limits.items() if n > 0}
        sizing = per_item_sizing(model_config, enabled).applied
        applied = {m: int(sizing[m]) for m in MODALITIES if m in sizing}
    return ModelSummary(
        model=model_config.model,
        served_model_name=str(model_config.served_model_name or model_config.model),
        max_model_len=int(model_config.max_model_len),
        limits=limits,
        audio_sample_rate=int(sound.sampling_rate) if sound is not None else None,
        vllm_version=vllm.__version__,
        item_maxima=maxima,
        max_tokens_per_item=applied,
        reasoning_parser=llm.vllm_config.structured_outputs_config.reasoning_parser or "",
    )


def warmup_items(summary: ModelSummary) -> dict[Modality, Any]:
    """One synthetic item per enabled modality. The first large batch through each
    encoder is slow (seconds on CPU: allocations, kernel set-up, preprocessing helpers
    compiled on first use), so warm-up uses the worst-case image tiling (12 tiles +
    thumbnail) and a typical 8-frame video, keeping that cost off the first user."""
    rng = np.random.default_rng(0)
    items: dict[Modality, Any] = {}
    for m in summary.enabled_modalities:
        if m == "image":
            from PIL import Image

            items[m] = Image.fromarray(rng.integers(0, 255, (672, 896, 3), dtype=np.uint8))
        elif m == "video":
            frames = rng.integers(0, 255, (8, 224, 224, 3), dtype=np.uint8)
            items[m] = video_item(frames, fps=2.0, frames_indices=list(range(8)), total_num_frames=8)
        elif m == "audio":
            assert summary.audio_sample_rate is not None
            wave = (rng.standard_normal(summary.audio_sample_rate) * 0.1).astype(np.float32)
            items[m] = (wave, summary.audio_sample_rate)
    return items


# vLLM's InputProcessingContext.call_hf_processor wraps the processor's exception as
# ValueError(f"Failed to apply {processor} on data={data} with kwargs={kwargs}"): the data
# holds the decoded media, and its repr dumps pixel arrays into the client's message.
_FAILED_TO_APPLY = re.compile(r"^Failed to apply (\w+) on data=")


def _processor_message(exc: BaseException) -> str:
    """``exc``'s message for a client: vLLM's "Failed to apply X on data=..." becomes X and
    the processor's own error (its cause), without the dumped inputs."""
    message = str(exc).strip() or type(exc).__name__
    if (m := _FAILED_TO_APPLY.match(message)) is not None:
        cause = exc.__cause__
        why = (str(cause).strip() or type(cause).__name__) if cause is not None else "it raised an error"
        return f"{m.group(1)}: {why}"
    return message


class Engine:
    """One ``AsyncLLM`` and what the service needs from it."""

    def __init__(self, llm: AsyncLLM, summary: ModelSummary, engine_args: AsyncEngineArgs) -> None:
        self.llm = llm
        self.summary = summary
        self.engine_args = engine_args
        self._shut_down = False
        self._geometry: ModelGeometry | None = None
        self.grammar_guard: GrammarGuard | None = None

    @property
    def geometry(self) -> ModelGeometry:
        """Exact token accounting for the served model, over the front end's own processor."""
        if self._geometry is None:
            from model.token_accounting import ModelGeometry

            processor = self.llm.renderer.get_mm_processor().info.get_hf_processor()
            self._geometry = ModelGeometry.from_processor(processor, max_model_len=self.summary.max_model_len)
        return self._geometry

    @classmethod
    async def start(
        cls, engine_args: AsyncEngineArgs, *, warmup: bool = True, client_config: Mapping[str, Any] | None = None
    ) -> Engine:
        """Start vLLM's engine core and connect to it; or, with ``client_config`` (what vLLM's
        ``APIServerProcessManager`` hands each API-server process: the engine's ZMQ addresses,
        ``client_count`` and ``client_index``), connect to an engine core another process started,
        as one of several frontends (mirrors vLLM's ``build_async_engine_client_from_engine_args``)."""
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        from model import vllm_plugin

        # Before vLLM resolves the model class in this process (it caches the answer):
        # the class that applies --exact-mm-sizing (vLLM's own behaviour without it).
        vllm_plugin.register(eager=True)
        t0 = time.perf_counter()
        grammar_guard = None
        if client_config is None:
            # The structured-output checker imports vLLM in a process of its own: started
            # now, it is ready by the time the engine is (service.grammar_guard).
            try:
                grammar_guard = GrammarGuard(copy.deepcopy(engine_args))
                grammar_guard.start()
            except Exception as exc:  # noqa: BLE001 - args that cannot travel: start it from the config later
                log.info("structured-output checker: starting after the engine (%s)", exc)
                grammar_guard = None
            try:
                llm = AsyncLLM.from_engine_args(engine_args)
            except BaseException:
                if grammar_guard is not None:
                    grammar_guard.close()
                raise
        else:
            addresses = dict(client_config)
            count, index = addresses.pop("client_count"), addresses.pop("client_index")
            # vLLM picks its media-cache mode from these (no IPC cache across several frontends).
            engine_args._api_process_count, engine_args._api_process_rank = count, index
            llm = AsyncLLM.from_vllm_config(
                engine_args.create_engine_config(UsageContext.ENGINE_CONTEXT),
                enable_log_requests=engine_args.enable_log_requests,
                disable_log_stats=engine_args.disable_log_stats,
                client_addresses=addresses,
                client_count=count,
                client_index=index,
            )
        engine = cls(llm, _summarize(llm), engine_args)
        if grammar_guard is not None and GrammarGuard.applies(llm.vllm_config):
            engine.grammar_guard = grammar_guard
        elif grammar_guard is not None:
            grammar_guard.close()
        if engine.summary.item_maxima is not None:
            try:
                await engine._check_sizing_applied()
            except BaseException:
                engine.shutdown()
                raise
            per_item = ", ".join(f"{m} {n:,}" for m, n in engine.summary.max_tokens_per_item.items())
            log.info(
                "exact encoder sizing (--exact-mm-sizing %s): encoder tokens per item %s (vLLM's own: %s per video "
                "or audio item)",
                engine.summary.item_maxima.spec(),
                per_item,
                f"{engine.summary.max_model_len:,}",
            )
        # nanovl serve reports this phase itself (one line, with its progress).
        log.debug("engine started in %.1fs: %s", time.perf_counter() - t0, engine.summary)
        if warmup:
            await engine.warmup()
        return engine

    async def warmup(self, on_item: Callable[[str], None] | None = None) -> list[str]:
        """One short request per enabled modality (and text, with logprobs); logs each one's
        time and returns the names warmed up. ``on_item`` hears each name as it starts."""
        from vllm import SamplingParams

        from model.prompt import MediaPart, TextPart, assemble_raw

        params = SamplingParams(max_tokens=2, temperature=0.0)
        # The text request asks for logprobs: vLLM's sampler compiles its logprob-rank kernel
        # (torch.compile of vllm.v1.sample.ops.logprobs.batched_count_greater_than) the
        # first time a request does, seconds in which the engine steps no request
        # (verify-10e D2: another client's stream stalled 2.5 s). Compiled here, before
        # SERVING; its batch dimension is marked unbacked, so one compile serves every size.
        text_params = SamplingParams(max_tokens=2, temperature=0.0, logprobs=1, prompt_logprobs=1)
        jobs = [("text", assemble_raw([TextPart("warm up")]), text_params)]
        for m, item in warmup_items(self.summary).items():
            jobs.append((m, assemble_raw([MediaPart(m, item), TextPart("warm up")]), params))
        done: list[str] = []
        for name, prompt, job_params in jobs:
            if on_item is not None:
                on_item(name)
            t0 = time.perf_counter()
            try:
                async for _ in self.generate(prompt, job_params, request_id=f"warmup-{name}-{uuid.uuid4().hex[:8]}"):
                    pass
            except (InvalidArgument, OutOfRange) as exc:
                # e.g. a max_model_len too small for the worst-case image: serving still works.
                log.warning("warm-up %s skipped: %s", name, exc)
                continue
            log.info("warm-up %s: %.2f s", name, time.perf_counter() - t0)
            done.append(name)
        return done

    async def _check_sizing_applied(self) -> None:
        """--exact-mm-sizing takes effect in the engine's processes only where nanovl's
        model class is registered (its vLLM plugin, or the worker extension): refuse to
        serve with sizes the engine did not apply."""
        (worker, *_) = await self.llm.collective_rpc("nanovl_mm_max_tokens_per_item")
        expected = dict(self.summary.max_tokens_per_item)
        if {m: int(worker.get(m, 0)) for m in expected} != expected:
            raise FailedPrecondition(
                f"--exact-mm-sizing is not applied in the engine's worker (it sizes items as {worker}, nanovl "
                f"expects {expected}): install nanovl so vLLM loads its plugin (entry point "
                "vllm.general_plugins), or keep the worker extension profiling.worker_extension"
            )

    # ------------------------------------------------------------------ requests

    async def render(self, prompt: AssembledPrompt) -> RenderedPrompt:
        """Tokenize and run the multimodal processor (vLLM does it off the event loop).

        Images vLLM's processor cannot process are refused first (``InvalidArgument``), and
        a prompt whose counts vLLM's processor cache could change gets request-unique
        item identifiers (``model.processor_cache``)."""
        self._check_limits(prompt)
        source = prompt
        if prompt.multi_modal_data and prompt.multi_modal_uuids is None:
            from model.processor_cache import multi_modal_uuids

            uuids = multi_modal_uuids(self.geometry, prompt.multi_modal_data, nonce=uuid.uuid4().hex)
            if uuids is not None:
                prompt = dataclasses.replace(prompt, multi_modal_uuids={m: tuple(ids) for m, ids in uuids.items()})
        try:
            (engine_input,) = await self.llm.renderer.render_cmpl_async([prompt.to_vllm()])
        except NanovlError:
            raise
        except Exception as exc:  # vLLM raises plain ValueErrors for bad media
            raise self._translate_render_error(exc) from exc
        token_ids = engine_input.get("prompt_token_ids") or []
        by_modality: dict[str, int] = {}
        for modality, ranges in (engine_input.get("mm_placeholders") or {}).items():
            by_modality[modality] = sum(int(r.length) for r in ranges)
            self._check_item_tokens(modality, [int(r.get_num_embeds()) for r in ranges])
        by_modality["text"] = len(token_ids) - sum(by_modality.values())
        rendered = RenderedPrompt(engine_input, len(token_ids), by_modality, source=source)
        if rendered.num_prompt_tokens >= self.summary.max_model_len:
            detail = ", ".join(f"{k} {v}" for k, v in by_modality.items())
            raise OutOfRange(self._too_long_message(rendered.num_prompt_tokens, exact=True, detail=detail))
        return rendered

    def _too_long_message(self, tokens: int, *, exact: bool, detail: str = "") -> str:
        # vLLM keeps one position for the first output token: a prompt must be shorter
        # than max_model_len, not merely no longer.
        limit = self.summary.max_model_len
        over = tokens - limit + 1
        return (
            f"the prompt is {'' if exact else 'at least '}{tokens} tokens{f' ({detail})' if detail else ''}, "
            f"{'' if exact else 'at least '}{over} over this server's max_model_len of {limit} "
            f"(prompts may use at most {limit - 1} tokens); send fewer or smaller media items "
            "(fewer video frames, shorter audio, smaller images) or shorter text (the messages, and "
            "any tools or documents, which the chat template writes into the prompt)"
        )

    def _check_item_tokens(self, modality: str, embeds_per_item: list[int]) -> None:
        """--exact-mm-sizing: vLLM's encoder budget, encoder cache and start-up profile are
        sized for the declared largest item; a larger one is refused (vLLM itself would only
        refuse one larger than its whole encoder cache)."""
        maxima = self.summary.item_maxima
        limit = self.summary.max_tokens_per_item.get(modality)  # type: ignore[call-overload]
        if maxima is None or limit is None or modality == "image":
            return
        for n, tokens in enumerate(embeds_per_item, 1):
            if tokens > limit:
                declared = maxima.video if modality == "video" else maxima.audio
                raise OutOfRange(
                    f"{modality} item {n} takes {tokens:,} encoder tokens, more than the largest {modality} this "
                    f"server is sized for ({declared.describe() if declared else modality}: {limit:,} tokens, "
                    f"{maxima.setting(modality)}); send "
                    + ("fewer frames, or frames closer together in time" if modality == "video" else "shorter audio")
                )

    def _check_item_sizes(self, prompt: AssembledPrompt) -> None:
        """--exact-mm-sizing, before vLLM's processor runs: more frames or seconds than
        declared is refused at once (the exact token check after rendering covers the rest)."""
        maxima = self.summary.item_maxima
        if maxima is None:
            return
        if maxima.video is not None:
            for n, (frames, _meta) in enumerate(prompt.multi_modal_data.get("video", ()), 1):
                if len(frames) > maxima.video.num_frames:
                    raise OutOfRange(
                        f"video item {n} has {len(frames)} frames, more than the {maxima.video.num_frames} this server "
                        f"is sized for ({maxima.setting('video')}); send at most {maxima.video.num_frames} frames"
                    )
        if maxima.audio is not None:
            for n, (wave, rate) in enumerate(prompt.multi_modal_data.get("audio", ()), 1):
                seconds = len(wave) / float(rate)
                if seconds > maxima.audio.seconds + 1e-9:
                    raise OutOfRange(
                        f"audio item {n} is {seconds:.9g} s, longer than the {maxima.audio.seconds:g} s this server is "
                        f"sized for ({maxima.setting('audio')}); send shorter audio"
                    )

    def _check_limits(self, prompt: AssembledPrompt) -> None:
        if not self.summary.limits and prompt.multi_modal_data:
            raise InvalidArgument(f"this server's model ({self.summary.served_model_name}) accepts text only")
        for modality, count in prompt.item_counts.items():
            limit = self.summary.limits.get(modality)
            if limit is None:
                raise InvalidArgument(f"this model does not accept {modality} input")
            if count > limit:
                raise InvalidArgument(
                    f"{count} {modality} item(s) in one prompt, but this server allows at most {limit} "
                    f"(--limit-mm-per-prompt); send fewer {modality} items per request"
                )
        self._check_item_sizes(prompt)

    def _translate_render_error(self, exc: Exception) -> NanovlError:
        """vLLM's rejection of a request, by type: ``VLLMValidationError`` carries the
        offending parameter and value (``renderers/params.py``); the model's processor
        raises plain ``ValueError``/``TypeError`` for media it cannot process."""
        from vllm.exceptions import VLLMValidationError

        message = _processor_message(exc)
        if isinstance(exc, VLLMValidationError):
            if exc.parameter == "input_tokens" and isinstance(exc.value, int):
                # vLLM stops tokenizing just past the limit, so it knows a lower bound only.
                return OutOfRange(self._too_long_message(exc.value, exact=False))
            if exc.parameter == "input_text":
                return OutOfRange(
                    f"the prompt text is {exc.value} characters, more than this server's max_model_len of "
                    f"{self.summary.max_model_len} tokens can hold; send shorter text"
                )
            return InvalidArgument(f"vLLM rejected the request: {message}")
        return InvalidArgument(f"the model's processor rejected the input: {message}")

    async def generate(
        self,
        prompt: AssembledPrompt | RenderedPrompt,
        sampling_params: SamplingParams,
        *,
        request_id: str,
        trace_headers: Mapping[str, str] | None = None,
        reasoning: Callable[[list[int]], Mapping[str, Any]] | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream ``RequestOutput`` deltas. ``reasoning`` maps the prompt's token ids to
        the reasoning arguments of ``AsyncLLM.generate`` (``reasoning_ended``,
        ``reasoning_parser_kwargs``; see ``service.output_parsing``)."""
        from vllm.exceptions import VLLMValidationError
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        rendered = prompt if isinstance(prompt, RenderedPrompt) else await self.render(prompt)
        try:
            for attempt in range(2):
                produced = False
                extra = dict(reasoning(rendered.engine_input.get("prompt_token_ids") or [])) if reasoning else {}
                async for output in self.llm.generate(
                    rendered.engine_input,
                    sampling_params,
                    request_id if attempt == 0 else f"{request_id}-retry",
                    trace_headers=dict(trace_headers) if trace_headers else None,
                    **extra,
                ):
                    completion = output.outputs[0]
                    produced = produced or bool(completion.token_ids)
                    if (
                        output.finished
                        and not produced
                        and completion.finish_reason == "error"
                        and attempt == 0
                        and rendered.source is not None
                        and rendered.source.multi_modal_data
                    ):
                        # vLLM's front-end media cache can believe the engine holds an item it
                        # does not (e.g. after a rendered prompt was rejected and never sent);
                        # the engine then fails the request before any token, vLLM drops the
                        # stale entries, and the request must be retried with its data.
                        log.warning("request %s: engine media cache miss; retrying once", request_id)
                        rendered = await self.render(rendered.source)
                        break
                    yield output
                else:
                    return
        except EngineDeadError as exc:
            # vLLM's text points at its own log ("See stack trace (above)"): that is for
            # the operator's log, not for the client.
            log.error("request %s: the engine died: %s", request_id, exc)
            raise Unavailable(
                "the inference engine has stopped; the server is restarting, retry on another replica"
            ) from exc
        except EngineGenerateError as exc:
            raise NanovlError(f"generation failed: {str(exc) or type(exc).__name__}") from exc
        except (ValueError, VLLMValidationError) as exc:
            # vLLM validates sampling params and prompt length inside generate().
            raise self._translate_render_error(exc) from exc

    async def abort(self, request_id: str) -> None:
        # Also the id of generate()'s one retry; aborting an unknown id is a no-op.
        await self.llm.abort([request_id, f"{request_id}-retry"])

    def num_unfinished_requests(self) -> int:
        return self.llm.get_num_unfinished_requests()

    @property
    def is_dead(self) -> bool:
        return self._shut_down or self.llm.errored

    async def check_health(self) -> bool:
        if self.is_dead:
            return False
        try:
            await self.llm.check_health()
        except Exception:
            return False
        return True

    def grammar_checker(self) -> GrammarGuard | None:
        """The structured-output checker of this engine (None: its backend compiles lazily)."""
        if self.grammar_guard is None and GrammarGuard.applies(self.llm.vllm_config):
            self.grammar_guard = GrammarGuard.shared(self.llm.vllm_config)  # a frontend process
        return self.grammar_guard

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Stops the engine processes: vLLM's ``AsyncLLM.shutdown(timeout)`` sends SIGTERM
        and kills what is still running after ``timeout_s`` (None: vLLM's default, 5 s)."""
        if not self._shut_down:
            self._shut_down = True
            if self.grammar_guard is not None:
                self.grammar_guard.close()
            self.llm.shutdown(timeout=timeout_s)
