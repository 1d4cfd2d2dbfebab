"""The ``nanovl.v1.Inference`` service: request lifecycle from bytes in to tokens out.

validation (service.request) → media decoding (bounded thread pool) → prompt assembly
(model.prompt) → engine (service.engine) → response stream. Failures are
``NanovlError``s carrying their gRPC status; only this module turns them into aborts.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

import nanovl
from model.prompt import AssembledPrompt, ChatRenderer, check_rendered
from nanovl.errors import DeadlineExceeded, InvalidArgument, NanovlError, ResourceExhausted, Unavailable
from nanovl.modalities import MODALITY_TO_PB, TOKEN_MODALITIES
from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import inference_pb2_grpc as pb_grpc
from profiling.telemetry import tracing
from profiling.telemetry.metrics import ServiceMetrics
from profiling.telemetry.tracing import StageTracer
from service import media
from service.decode_workers import DecodeWorkers, lost_worker
from service.engine import Engine, RenderedPrompt
from service.grammar_guard import GrammarGuard, GrammarLimits, check_size
from service.lifecycle import Lifecycle
from service.output_parsing import OutputParsers, ParserConfig
from service.part_decoding import DecodedPart, decode_part, modality_of, payload_size
from service.request import (
    ValidatedRequest,
    assemble_prompt,
    chat_job,
    declared_sizes,
    from_generate_request,
    from_stream_header,
    has_request_template,
    with_payload,
)
from service.request_drain import DRAIN_MAX_S, drain_requests
from service.request_limits import RequestCounter, WireCounter
from service.settings import ServerSettings
from service.status import abort_with, status_of
from service.template_sandbox import TemplateSandbox

log = logging.getLogger(__name__)
T = TypeVar("T")

_FINISH = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "abort": pb.FINISH_REASON_ABORT,
    "error": pb.FINISH_REASON_ERROR,
    "repetition": pb.FINISH_REASON_REPETITION,
}


@dataclass
class _RequestClock:
    """The server-side events of one request (``time.perf_counter`` seconds); the
    ``Timings`` message in inference.proto defines each duration by its two events."""

    start: float = field(default_factory=time.perf_counter)
    header: float | None = None  # StreamGenerate: the header arrived
    end: float | None = None  # StreamGenerate: End arrived
    decodes: list[tuple[float, float]] = field(default_factory=list)  # one (start, end) per media part
    preprocess_start: float | None = None  # every part decoded (and End received)
    rendered: float | None = None
    first_token: float | None = None
    last_token: float | None = None

    @property
    def ttft_origin(self) -> float:
        """TTFT counts from End for StreamGenerate (the upload is upload_s), else from start."""
        return self.end if self.end is not None else self.start

    @property
    def upload_s(self) -> float:
        return self.end - self.header if self.end is not None and self.header is not None else 0.0

    @property
    def decode_media_s(self) -> float:
        """Wall time with at least one part decoding: the union of the intervals."""
        total, reach = 0.0, float("-inf")
        for begin, finish in sorted(self.decodes):
            begin = max(begin, reach)
            if finish > begin:
                total += finish - begin
            reach = max(reach, finish)
        return total

    @property
    def preprocess_s(self) -> float:
        if self.preprocess_start is None or self.rendered is None:
            return 0.0
        return self.rendered - self.preprocess_start


def _modality_tokens(by_modality: Mapping[str, int]) -> pb.ModalityTokens:
    return pb.ModalityTokens(**{k: v for k, v in by_modality.items() if k in TOKEN_MODALITIES})


def _position_logprobs(token_id: int, entry: Any) -> pb.TokenLogprobs:
    def one(tid: int, lp: Any) -> pb.TokenLogprob:
        msg = pb.TokenLogprob(token_id=tid, text=lp.decoded_token or "", logprob=float(lp.logprob))
        if lp.rank is not None:
            msg.rank = int(lp.rank)
        return msg

    chosen = entry.get(token_id)
    top = sorted(((t, lp) for t, lp in entry.items()), key=lambda kv: kv[1].rank or 0)
    return pb.TokenLogprobs(token=one(token_id, chosen) if chosen else None, top=[one(t, lp) for t, lp in top])


def _logprobs(token_ids: list[int], logprobs: Any) -> list[pb.TokenLogprobs]:
    return [_position_logprobs(t, entry) for t, entry in zip(token_ids, logprobs or [], strict=False) if entry]


def _prompt_logprobs(prompt_token_ids: list[int], logprobs: Any) -> list[pb.TokenLogprobs]:
    """One entry per prompt token, as the proto promises: the first (and any position
    vLLM leaves without logprobs) is an empty entry, not skipped."""
    return [
        _position_logprobs(t, entry) if entry else pb.TokenLogprobs()
        for t, entry in zip(prompt_token_ids, logprobs, strict=False)
    ]


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


# Threads validating requests (service.request): each request's work is bounded by
# ServerSettings.request_limits, so two keep up with the engine; a burst of large
# requests queues here rather than on the event loop.
VALIDATE_THREADS = 2
# Threads assembling prompts, apart from the media decode pool (--decode-threads) so a
# text-only request never queues behind another request's video. Each assembly is bounded
# by request_limits (milliseconds), so two keep up with the engine on a 2-core machine; the
# pools only add threads, the OS shares the cores between them.
PROMPT_THREADS = 2

ENGINE_STOPPED = "the inference engine has stopped; the server is restarting, retry on another replica"

# How long the Final waits for a client that has not half-closed after End (see StreamGenerate).
AFTER_END_GRACE_S = 0.25


def _kind_phrase(msg: pb.GenerateChunk) -> str:
    """How a message names a GenerateChunk: "a header message", "an end message", "an
    empty GenerateChunk (no kind set)"."""
    kind = msg.WhichOneof("kind")
    if kind is None:
        return "an empty GenerateChunk (none of header, media, end set)"
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} message"


async def _after_end(iterator: AsyncIterator[pb.GenerateChunk]) -> NanovlError | None:
    """Reads the request stream after End: None when the client closes it; the protocol
    error when the client sends anything more (a chunk, a second End)."""
    try:
        msg = await iterator.__anext__()
    except StopAsyncIteration:
        return None
    except Exception:  # the call ended (cancelled, finished): nothing to police
        return None
    return InvalidArgument(
        f"{_kind_phrase(msg)} arrived after End; End must be the last message of a StreamGenerate request"
    )


# How long a request stream that ended without End waits for the cancel that usually
# explains it (grpc.aio delivers the end of the stream and the cancel in either order).
CLIENT_GONE_WAIT_S = 0.5
# A cancel this close to the call's deadline is the deadline (see _deadline_passed). Outcome
# labels only: nothing is ended early by it.
DEADLINE_SLACK_S = 0.5


class _StreamEnded(InvalidArgument):
    """The request stream ended before End: a protocol violation, or a client that left."""


# Rejections where the client is not writing (it stalled, the engine died): nothing to read.
_NO_DRAIN = (DeadlineExceeded, Unavailable, _StreamEnded)


async def _drain_client(
    iterator: AsyncIterator[pb.GenerateChunk] | None, rest: asyncio.Task[NanovlError | None] | None
) -> None:
    """Reads (and drops) what a rejected client is still sending, so that its half-close,
    not a write in flight, meets the status (``service.request_drain``)."""
    if rest is not None:  # after End: a task already reads the rest of the stream
        await asyncio.wait({rest}, timeout=DRAIN_MAX_S)
        return
    if iterator is not None:
        await drain_requests(iterator, pb.GenerateChunk.ByteSize)


def _peer_of(context: grpc.aio.ServicerContext) -> str:
    """The client's address without its port (``ipv4:10.0.0.7``), for per-peer upload caps."""
    peer = context.peer() or ""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


def _deadline_passed(context: grpc.aio.ServicerContext, slack_s: float = DEADLINE_SLACK_S) -> bool:
    """Whether the call's deadline has passed, give or take :data:`DEADLINE_SLACK_S`: the
    client's clock started before ours (its send, our receipt), so a client whose deadline
    expires cancels the call while our copy of the deadline still has a moment left."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= slack_s


def _client_gone(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """Why grpc.aio cancelled the handler: the client's deadline or its cancel (grpc.aio's
    ``context.cancelled()`` stays False in both cases)."""
    return grpc.StatusCode.DEADLINE_EXCEEDED if _deadline_passed(context) else grpc.StatusCode.CANCELLED


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(
        self,
        engine: Engine,
        settings: ServerSettings,
        *,
        lifecycle: Lifecycle,
        tracer: StageTracer,
        metrics: ServiceMetrics,
        chat: ChatRenderer | None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._lifecycle = lifecycle
        self._tracer = tracer
        self._metrics = metrics
        self._chat = chat
        # Media decoding only, in processes of its own (--decode-processes): a decoder crash
        # fails one request, not the server (verify-10e D1). A video can hold a worker for
        # seconds within every bound, so nothing a text-only request needs may queue here
        # (verify-10d F1b: 4 requests' videos delayed another user's text Generate 7.6 s).
        self._decode_workers = DecodeWorkers(settings.decode_processes, timeout_s=settings.media_decode_timeout_s)
        # Prompt assembly (the checkpoint's chat template, a rendered template's check): work
        # bounded by request_limits (milliseconds), never behind a media decode.
        self._prompt_pool = ThreadPoolExecutor(PROMPT_THREADS, thread_name_prefix="nanovl-prompt")
        # Request validation and conversion (protobuf → vLLM objects): CPU work proportional to
        # the request, never on the event loop (issue 10, N1); bounded by request_limits.
        self._validate_pool = ThreadPoolExecutor(VALIDATE_THREADS, thread_name_prefix="nanovl-validate")
        self._sandbox = (
            TemplateSandbox(settings.chat_template_timeout_s) if settings.allow_request_chat_template else None
        )
        self._grammar_limits = GrammarLimits(
            max_bytes=settings.max_structured_output_bytes,
            max_choices=settings.max_structured_output_choices,
            compile_timeout_s=settings.structured_output_compile_timeout_s,
        )
        vllm_config = engine.llm.vllm_config
        self._grammar: GrammarGuard | None = None
        model_config = vllm_config.model_config
        self._vocab_size = model_config.get_vocab_size()
        self._counter = RequestCounter(settings.request_limits, vocab_size=self._vocab_size)
        self._parsers = OutputParsers(
            ParserConfig(reasoning_parser=engine.summary.reasoning_parser, tool_call_parser=settings.tool_call_parser),
            tokenizer=engine.llm.renderer.tokenizer,
            model_config=model_config,
        )
        # A video's audio track can reach the model: an audio encoder, and audio enabled.
        s = engine.summary
        self._audio_in_video = s.audio_sample_rate is not None and s.limits.get("audio", 0) > 0

    def prechecks(self) -> dict[str, Callable[[bytes], None]]:
        """Element counts checked on the request bytes before grpc.aio parses them on the
        event loop (``service.request_limits.WireCounter``), by method path."""
        return {
            f"/{pb.DESCRIPTOR.services_by_name['Inference'].full_name}/{method}": WireCounter(self._counter, root).check
            for method, root in (
                ("Generate", pb.GenerateRequest.DESCRIPTOR),
                ("StreamGenerate", pb.GenerateChunk.DESCRIPTOR),
            )
        }

    async def start(self) -> None:
        """Warm what the first request would otherwise pay for (the template sandbox's
        fork server imports transformers: seconds); the structured-output checker starts
        in the background (it imports vLLM; the first constraints wait for it)."""
        self._grammar = self._engine.grammar_checker()
        decoders = asyncio.ensure_future(self._decode_workers.start())  # beside the grammar checker's start
        if self._grammar is not None:
            await self._grammar.wait_ready()  # SERVING only once constraints can be checked
        if self._sandbox is not None:
            await asyncio.to_thread(self._sandbox.start)
        await decoders

    def close(self) -> None:
        self._decode_workers.close()
        self._prompt_pool.shutdown(wait=False, cancel_futures=True)
        self._validate_pool.shutdown(wait=False, cancel_futures=True)
        if self._sandbox is not None:
            self._sandbox.stop()

    # ------------------------------------------------------------------ RPCs

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        s = self._engine.summary
        fmts = media.ACCEPTED_FORMATS
        modalities = [pb.ModalityInfo(modality=pb.MODALITY_TEXT, enabled=True)]
        for m, accepted, raw in (
            ("image", fmts.image, ()),
            ("video", fmts.video, fmts.raw_video),
            ("audio", fmts.audio, fmts.raw_audio),
        ):
            limit = s.limits.get(m, 0)
            info = pb.ModalityInfo(
                modality=MODALITY_TO_PB[m],
                enabled=limit > 0,
                max_items_per_prompt=limit,
                accepted_formats=list(accepted),
                accepted_raw_formats=list(raw),
            )
            if m == "video":
                info.default_num_frames = self._settings.default_video_frames
                info.max_num_frames = self._settings.media_limits.max_video_frames
                if self._settings.default_video_fps:
                    info.default_fps = self._settings.default_video_fps
                info.default_max_frames = (
                    self._settings.default_video_max_frames or self._settings.media_limits.max_video_frames
                )
            modalities.append(info)
        config = self._engine.llm.vllm_config
        return pb.ModelInfo(
            model_name=s.served_model_name,
            model_path=s.model,
            architecture=",".join(config.model_config.architectures or []),
            max_model_len=s.max_model_len,
            modalities=modalities,
            audio_sample_rate=s.audio_sample_rate or 0,
            has_chat_template=self._chat is not None,
            max_message_bytes=self._settings.max_message_bytes,
            max_request_bytes=self._settings.max_request_bytes,
            max_num_seqs=int(config.scheduler_config.max_num_seqs),
            vllm_version=s.vllm_version,
            nanovl_version=nanovl.__version__,
            reasoning_parser=self._parsers.config.reasoning_parser,
            tool_call_parser=self._parsers.config.tool_call_parser,
            supports_audio_in_video=self._audio_in_video,
            default_use_audio_in_video=self._settings.use_audio_in_video and self._audio_in_video,
        )

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        async with self._admitted("Generate", context) as outcome:
            clock = _RequestClock()
            outcome["admission"] = outcome["release"].enter_context(self._lifecycle.admission())
            req = await self._validate(from_generate_request, request)
            outcome["modality"] = req.modality_label()
            await self._check_constraint(req)
            for i in req.media_indices:
                self._metrics.add_bytes_received(modality_of(req.parts[i]), payload_size(req.parts[i]))
            decoded = await asyncio.gather(*(self._decode(i, req.parts[i], clock) for i in req.media_indices))
            async for response in self._run(req, dict(zip(req.media_indices, decoded, strict=False)), clock, outcome):
                with self._lifecycle.sending(last=response.HasField("final")):
                    yield response

    async def StreamGenerate(
        self, request_iterator: AsyncIterator[pb.GenerateChunk], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        iterator = request_iterator.__aiter__()
        rest: asyncio.Task[NanovlError | None] | None = None

        async def before_status(exc: BaseException) -> None:
            # A client still writing when the server ends the call sees grpc.aio's
            # "Internal error from Core" instead of the status: read what it is still
            # sending (briefly) so its half-close lands before the status.
            if isinstance(exc, NanovlError) and not isinstance(exc, _NO_DRAIN):
                await _drain_client(iterator if rest is None else None, rest)

        async with self._admitted("StreamGenerate", context, before_status=before_status) as outcome:
            clock = _RequestClock()
            req, decode_tasks, rest = await self._receive(iterator, clock, _peer_of(context))
            outcome["release"].callback(rest.cancel)
            outcome["admission"] = outcome["release"].enter_context(self._lifecycle.admission())
            outcome["modality"] = req.modality_label()
            try:
                decoded = await asyncio.gather(*decode_tasks.values())
            finally:
                for task in decode_tasks.values():
                    task.cancel()
            async for response in self._run(req, dict(zip(decode_tasks, decoded, strict=False)), clock, outcome):
                if response.HasField("final") and not rest.done():
                    # A client that half-closed after End has its answer already; one still
                    # writing gets a moment to show a message after End before the verdict.
                    await asyncio.wait({rest}, timeout=AFTER_END_GRACE_S)
                if rest.done() and (violation := rest.result()) is not None:
                    raise violation
                with self._lifecycle.sending(last=response.HasField("final")):
                    yield response

    # ------------------------------------------------------------------ stages

    async def _validate(self, convert: Callable[..., ValidatedRequest], message: Any) -> ValidatedRequest:
        """``convert(message)`` (``from_generate_request`` / ``from_stream_header``) in the
        validation threads, after ``request_limits`` are checked there: a request with
        millions of parts or messages is refused by count, and the per-element work of one
        within the limits never holds the event loop (health checks, other streams, SIGTERM)."""

        def run() -> ValidatedRequest:
            self._counter.check(message)
            return convert(message, **self._validation_kwargs())

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._validate_pool, contextvars.copy_context().run, run)

    async def _check_constraint(self, req: ValidatedRequest) -> None:
        """The request's structured-output constraint (its own, or the one its tool choice
        implies) within the size limits and compilable within the time limit
        (service.grammar_guard), before the engine's grammar threads see it."""
        params = req.sampling.structured_outputs
        if params is None:
            return
        if self._grammar is None:
            check_size(params, self._grammar_limits)
        else:
            await self._grammar.check(params, self._grammar_limits)

    def _validation_kwargs(self) -> dict[str, Any]:
        return {
            "settings": self._settings,
            "limits": self._engine.summary.limits,
            "vocab_size": self._vocab_size,
            "parsers": self._parsers,
            "audio_in_video": self._audio_in_video,
        }

    @contextlib.asynccontextmanager
    async def _admitted(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext,
        *,
        before_status: Callable[[BaseException], Any] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Admission control, metrics and the one place errors become gRPC statuses."""
        outcome: dict[str, Any] = {"modality": "unknown", "release": contextlib.ExitStack()}
        code = grpc.StatusCode.OK
        start = time.perf_counter()
        try:
            if self._engine.is_dead or self._lifecycle.engine_dead.is_set():
                raise Unavailable(ENGINE_STOPPED)
            if not self._lifecycle.accepting:
                raise Unavailable(
                    f"the server is {self._lifecycle.state.lower()} and accepts no new requests; "
                    "retry on another replica"
                )
            with self._lifecycle.track(), self._metrics.in_flight(rpc), outcome["release"]:
                yield outcome
        except (asyncio.CancelledError, GeneratorExit) as exc:
            if self._lifecycle.cut_reason is None or not isinstance(exc, asyncio.CancelledError):
                code = _client_gone(context)
                raise
            # A drain cut this call: say so, and that a retry elsewhere will do.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            code = grpc.StatusCode.UNAVAILABLE
            await context.abort(code, self._lifecycle.cut_reason)
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as exc:
            # A client that cancels (or whose deadline passes) mid-upload ends its request
            # stream early, and grpc.aio has cancelled this task by then: the outcome is the
            # cancel or the deadline, not the truncated stream it caused.
            code = grpc.StatusCode.DEADLINE_EXCEEDED if _deadline_passed(context) else status_of(exc)[0]
            if self._engine.is_dead:
                # Readiness says NOT_SERVING before any caller hears UNAVAILABLE.
                self._lifecycle.mark_engine_dead()
                await self._lifecycle.settled()
            try:
                # Where a pending cancel lands. A request stream that ended early is most
                # often a client that cancelled (or whose deadline passed): grpc.aio ends the
                # stream and cancels this task in either order, so wait a moment for it.
                await asyncio.sleep(CLIENT_GONE_WAIT_S if isinstance(exc, _StreamEnded) else 0)
                if _deadline_passed(context, slack_s=0):
                    code = grpc.StatusCode.DEADLINE_EXCEEDED
                    raise asyncio.CancelledError
                if before_status is not None:
                    await before_status(exc)
            except asyncio.CancelledError:
                code = _client_gone(context)
                raise
            await abort_with(context, exc)
        finally:
            self._metrics.record_request(rpc, outcome["modality"], code, time.perf_counter() - start)

    async def _assemble(self, req: ValidatedRequest, decoded: Mapping[int, DecodedPart]) -> AssembledPrompt:
        """The prompt, never rendered on the event loop: a request's own chat template in
        the sandbox process (time- and memory-limited), the checkpoint's in the pool."""
        if has_request_template(req):
            if self._sandbox is None:  # validation refuses these unless allowed
                raise InvalidArgument("this server does not accept per-request chat templates")
            job, media = chat_job(req, decoded, self._chat)
            prompt = job.finish(await self._sandbox.render(job))
            # Off the loop: the rendered text is as long as the client's template made it.
            await self._in_pool(
                self._prompt_pool, functools.partial(check_rendered, prompt, media, request_template=True)
            )
            return AssembledPrompt(prompt=prompt, multi_modal_data=dict(media))
        return await self._in_pool(self._prompt_pool, functools.partial(assemble_prompt, req, decoded, self._chat))

    async def _in_pool(self, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        # The pool's threads do not inherit the caller's context; copy it so their logs
        # and spans stay in this request's trace.
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(ctx.run, fn))

    async def _decode(self, index: int, part: pb.ContentPart, clock: _RequestClock) -> DecodedPart:
        modality = modality_of(part)
        t0 = time.perf_counter()
        with self._tracer.stage_span(
            tracing.decode_span_name(modality), part_index=index, request_bytes=payload_size(part)
        ) as span:
            try:
                decoded = await self._decode_workers.run(
                    decode_part,
                    part,
                    what=f"part {index} ({modality})",
                    default_video_frames=self._settings.default_video_frames,
                    default_video_fps=self._settings.default_video_fps,
                    default_video_max_frames=self._settings.default_video_max_frames,
                    audio_sample_rate=self._engine.summary.audio_sample_rate,
                    limits=self._settings.media_limits,
                    default_use_audio_in_video=self._settings.use_audio_in_video and self._audio_in_video,
                )
            except NanovlError as exc:
                if (reason := lost_worker(exc)) is not None:
                    self._metrics.add_decoder_lost(modality, reason)
                raise
            for key, value in decoded.attributes.items():
                span.set_attribute(f"media.{key}", value)
        t1 = time.perf_counter()
        clock.decodes.append((t0, t1))
        self._metrics.observe_media_decode(modality, t1 - t0)
        return decoded

    async def _next_message(
        self, iterator: AsyncIterator[pb.GenerateChunk], upload_deadline: float, pace_deadline: float = float("inf")
    ) -> pb.GenerateChunk | None:
        """The client's next StreamGenerate message (None at the end of its stream), bounded
        by the idle timeout, the whole upload's deadline and the minimum upload rate
        (``pace_deadline``: when the bytes so far fall below it); UNAVAILABLE at once if the
        engine dies meanwhile (the upload could never be served)."""
        s = self._settings
        idle = s.upload_idle_timeout_s
        now = time.monotonic()
        timeout = min(idle, upload_deadline - now, pace_deadline - now)
        read = asyncio.ensure_future(iterator.__anext__())
        # If the call ends while the read is pending, its outcome is nobody's business:
        # retrieve it so asyncio does not log "Task exception was never retrieved".
        read.add_done_callback(_retrieve)
        dead = asyncio.ensure_future(self._lifecycle.engine_dead.wait())
        try:
            done, _ = await asyncio.wait({read, dead}, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
        finally:
            dead.cancel()
            if not read.done():
                read.cancel()
        if read in done:
            try:
                return read.result()
            except StopAsyncIteration:
                return None
        if dead in done:
            raise Unavailable(ENGINE_STOPPED)
        if pace_deadline - now <= min(idle, upload_deadline - now):
            raise DeadlineExceeded(
                f"the upload is slower than this server's minimum of {s.min_upload_bytes_per_s} bytes/s "
                f"after its first {s.upload_rate_grace_s:g} s (--min-upload-bytes-per-s); "
                "send the media faster, or smaller media"
            )
        if timeout < idle:
            raise DeadlineExceeded(
                f"the upload took longer than this server's limit of {s.upload_timeout_s:g} s "
                "(--upload-timeout-s); send smaller media or split the request"
            )
        raise DeadlineExceeded(
            f"no StreamGenerate message for {idle:g} s (--upload-idle-timeout-s); "
            "send chunks without long pauses, then End"
        )

    async def _receive(
        self, iterator: AsyncIterator[pb.GenerateChunk], clock: _RequestClock, peer: str = ""
    ) -> tuple[ValidatedRequest, dict[int, asyncio.Task[DecodedPart]], asyncio.Task[NanovlError | None]]:
        """Read header, media chunks and End; start decoding each part as soon as its
        last chunk arrives, so decoding overlaps the rest of the upload.

        Returns the request, its decode tasks, and a task that keeps reading the request
        stream after End: the protocol allows nothing more, so any further message is a
        violation the caller turns into INVALID_ARGUMENT.

        The upload slot (``--max-concurrent-uploads``, ``--max-uploads-per-peer``) is taken
        only once the header is read and valid, so an undecodable or invalid header gets
        its own status, never RESOURCE_EXHAUSTED; it is held until End."""
        upload_deadline = time.monotonic() + self._settings.upload_timeout_s
        with self._tracer.stage_span(tracing.RECEIVE) as span:
            first = await self._next_message(iterator, upload_deadline)
            if first is None:
                raise _StreamEnded("StreamGenerate received no messages: send a header first")
            clock.header = time.perf_counter()
            if first.WhichOneof("kind") != "header":
                raise InvalidArgument(f"the first StreamGenerate message must be a header, got {_kind_phrase(first)}")
            req = await self._validate(from_stream_header, first.header)
            await self._check_constraint(req)
            sizes = declared_sizes(first.header)
            declared_total = sum(n for n in sizes if n is not None)
            if declared_total > self._settings.max_request_bytes:
                raise ResourceExhausted(
                    f"the header declares {declared_total} bytes of media, over this server's limit of "
                    f"{self._settings.max_request_bytes} bytes (--max-request-bytes); send smaller media"
                )
            pending = list(req.media_indices)
            parts = list(req.parts)
            tasks: dict[int, asyncio.Task[DecodedPart]] = {}
            buffer: list[bytes] = []
            buffered = total = num_chunks = 0
            min_rate = self._settings.min_upload_bytes_per_s
            paced_from = time.monotonic() + self._settings.upload_rate_grace_s
            slot = contextlib.ExitStack()
            try:
                slot.enter_context(self._lifecycle.upload(peer))
                while (
                    msg := await self._next_message(
                        iterator, upload_deadline, paced_from + total / min_rate if min_rate else float("inf")
                    )
                ) is not None:
                    kind = msg.WhichOneof("kind")
                    if kind == "end":
                        clock.end = time.perf_counter()
                        break
                    if kind != "media":
                        raise InvalidArgument(
                            f"unexpected {kind or 'empty'} message after the header"
                            f"{'' if kind else ' (none of header, media, end set)'}; send media chunks then End"
                        )
                    chunk = msg.media
                    if not pending:
                        raise InvalidArgument(
                            f"media chunk for part {chunk.part_index}, but every declared media part "
                            "is already complete; send End"
                        )
                    if chunk.part_index != pending[0]:
                        raise InvalidArgument(
                            f"media chunk for part {chunk.part_index} while part {pending[0]} is "
                            "incomplete: send each part's chunks contiguously, in declared order"
                        )
                    if not chunk.data and not chunk.last:
                        raise InvalidArgument(
                            f"empty media chunk for part {chunk.part_index}: only the last chunk of a part "
                            "(last=true) may be empty"
                        )
                    num_chunks += 1
                    buffer.append(chunk.data)
                    buffered += len(chunk.data)
                    total += len(chunk.data)
                    if total > self._settings.max_request_bytes:
                        raise ResourceExhausted(
                            f"request media exceed this server's limit of "
                            f"{self._settings.max_request_bytes} bytes; send smaller media"
                        )
                    declared = sizes[chunk.part_index]
                    if declared is not None and buffered > declared:
                        raise InvalidArgument(f"part {chunk.part_index} declared {declared} bytes but more arrived")
                    if chunk.last:
                        if declared is not None and buffered != declared:
                            raise InvalidArgument(
                                f"part {chunk.part_index} declared {declared} bytes but {buffered} arrived"
                            )
                        index = pending.pop(0)
                        parts[index] = with_payload(parts[index], b"".join(buffer))
                        self._metrics.add_bytes_received(modality_of(parts[index]), buffered)
                        tasks[index] = asyncio.create_task(self._decode(index, parts[index], clock))
                        buffer, buffered = [], 0
                    for done in [t for t in tasks.values() if t.done() and t.exception()]:
                        done.result()  # fail fast: no need to receive the rest
                else:
                    raise _StreamEnded("the request stream ended without an End message")
                if pending:
                    raise InvalidArgument(
                        f"End received but media parts {pending} have no complete payload "
                        "(a part ends with a chunk whose last=true)"
                    )
            except BaseException:
                for task in tasks.values():
                    task.cancel()
                raise
            finally:
                slot.close()
            span.set_attribute("receive.chunks", num_chunks)
            span.set_attribute("receive.bytes", total)
            span.set_attribute("receive.upload_s", clock.upload_s)
        rest = asyncio.create_task(_after_end(iterator))
        return dataclasses.replace(req, parts=tuple(parts)), tasks, rest

    async def _run(
        self,
        req: ValidatedRequest,
        decoded: Mapping[int, DecodedPart],
        clock: _RequestClock,
        outcome: dict[str, Any],
    ) -> AsyncIterator[pb.GenerateResponse]:
        clock.preprocess_start = time.perf_counter()
        with self._tracer.stage_span(tracing.PROMPT_ASSEMBLE) as span:
            rendered: RenderedPrompt = await self._engine.render(await self._assemble(req, decoded))
            clock.rendered = time.perf_counter()
            span.set_attribute("prompt.tokens", rendered.num_prompt_tokens)
            for modality, n in rendered.tokens_by_modality.items():
                span.set_attribute(f"prompt.tokens.{modality}", n)
        started = pb.Started(
            request_id=req.request_id, prompt_tokens_by_modality=_modality_tokens(rendered.tokens_by_modality)
        )
        for index in sorted(decoded):
            item = started.media.add()
            item.CopyFrom(decoded[index].info)
            item.part_index = index
        yield pb.GenerateResponse(started=started)

        finished = False
        completion_tokens = 0
        final_output = None
        prompt_logprobs: list[pb.TokenLogprobs] = []
        parsing = req.parsing
        # The output parser reads the prompt's ids (where reasoning ends); nothing else does.
        prompt_ids = list(rendered.engine_input.get("prompt_token_ids") or []) if parsing is not None else []
        generated: list[int] = []  # for the reasoning token count
        with self._tracer.stage_span(
            tracing.ENGINE_GENERATE, request_id=req.request_id, engine_request_id=req.engine_request_id
        ) as span:
            outcome["admission"].to_engine()  # out of nanovl's queue, into vLLM's
            try:
                async for output in self._engine.generate(
                    rendered,
                    req.sampling,
                    request_id=req.engine_request_id,
                    trace_headers=tracing.trace_headers_for_vllm() if self._tracer.enabled else None,
                    reasoning=parsing.engine_kwargs if parsing is not None else None,
                ):
                    final_output = output
                    # With DELTA outputs vLLM sends all prompt logprobs once, after prefill.
                    if output.prompt_logprobs and not prompt_logprobs:
                        prompt_logprobs = _prompt_logprobs(list(output.prompt_token_ids or []), output.prompt_logprobs)
                    completion = output.outputs[0]
                    token_ids = list(completion.token_ids)
                    if token_ids:
                        now = time.perf_counter()
                        if clock.first_token is None:
                            clock.first_token = now
                            self._metrics.observe_ttft(now - clock.ttft_origin, modality=outcome["modality"])
                        elif clock.last_token is not None:
                            self._metrics.observe_inter_token_latency(
                                now - clock.last_token, modality=outcome["modality"], tokens=len(token_ids)
                            )
                        clock.last_token = now
                        completion_tokens += len(token_ids)
                    # Filled in place: constructing GenerateResponse(delta=Delta(...)) copies
                    # the Delta, on every streamed message.
                    response = pb.GenerateResponse()
                    delta = response.delta
                    if parsing is not None and (token_ids or output.finished):
                        # vLLM's parser sees every delta, the last one flagged, so calls still
                        # open when generation ends are returned too.
                        generated.extend(token_ids)
                        parsed = parsing.feed(
                            completion.text,
                            token_ids,
                            prompt_ids,
                            finished=output.finished,
                        )
                        delta.text = parsed.text
                        delta.reasoning_text = parsed.reasoning_text
                        delta.tool_calls.extend(parsed.tool_calls)
                    else:
                        delta.text = completion.text
                    delta.token_ids.extend(token_ids)
                    if token_ids or delta.tool_calls or delta.text or delta.reasoning_text:
                        if completion.logprobs:
                            delta.logprobs.extend(_logprobs(token_ids, completion.logprobs))
                        yield response
                    if output.finished:
                        finished = True
            finally:
                if not finished:
                    # Client cancel, deadline, or an error: free the engine's slot at once.
                    await self._engine.abort(req.engine_request_id)
            timeline = self._tracer.record_engine_stats(span, final_output.metrics if final_output else None)

        completion = final_output.outputs[0]
        now = time.perf_counter()
        finish = _FINISH.get(completion.finish_reason or "", pb.FINISH_REASON_UNSPECIFIED)
        if (
            parsing is not None
            and parsing.tools_called
            and finish == pb.FINISH_REASON_STOP
            and not parsing.named_tool_choice
        ):
            finish = pb.FINISH_REASON_TOOL_CALLS  # as vLLM's "tool_calls" (a named choice stays "stop")
        final = pb.Final(
            finish_reason=finish,
            request_id=req.request_id,
            usage=pb.Usage(
                prompt_tokens=rendered.num_prompt_tokens,
                completion_tokens=completion_tokens,
                prompt_tokens_by_modality=_modality_tokens(rendered.tokens_by_modality),
                cached_prompt_tokens=final_output.num_cached_tokens or 0,
                reasoning_tokens=parsing.reasoning_tokens(generated, prompt_ids) if parsing is not None else 0,
            ),
            timings=pb.Timings(
                queue_s=(timeline.queue_s or 0.0) if timeline else 0.0,
                prefill_s=(timeline.prefill_s or 0.0) if timeline else 0.0,
                decode_s=(timeline.decode_s or 0.0) if timeline else 0.0,
                ttft_s=(clock.first_token - clock.ttft_origin) if clock.first_token else 0.0,
                total_s=now - clock.start,
                decode_media_s=clock.decode_media_s,
                upload_s=clock.upload_s,
                preprocess_s=clock.preprocess_s,
            ),
        )
        final.prompt_logprobs.extend(prompt_logprobs)
        if isinstance(completion.stop_reason, str):
            final.stop_string = completion.stop_reason
        elif isinstance(completion.stop_reason, int):
            final.stop_token_id = completion.stop_reason
        yield pb.GenerateResponse(final=final)
