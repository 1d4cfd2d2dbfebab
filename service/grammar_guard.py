"""Structured-output constraints are client programs too: bounded before the engine sees them.

vLLM compiles a request's grammar (JSON schema, regex, EBNF/Lark grammar, choice) in the
engine core, in a thread pool of ``(cpu_count + 1) // 2`` threads
(``vllm.v1.structured_output.StructuredOutputManager.grammar_init``), with xgrammar's
``GrammarCompiler``: a mask over the whole vocabulary for every parser state. Compile time
grows super-linearly with the constraint (a 20000-entry ``enum``: 1 s on a 512-token
vocabulary; 100000 entries: minutes), a thread cannot be stopped, and every later
structured-output request waits behind it in that pool. A client's cancel does not stop it.

So, before a request reaches the engine:

1. **Size limits** (:func:`check_size`): the constraint's text (JSON schema, regex, grammar,
   structural tag, or all choices together) at most ``max_bytes``
   (``--max-structured-output-bytes``, default 128 KiB: OpenAI's structured outputs cap the
   total string length of a schema at 120 000 characters) and at most ``max_choices`` choices
   (``--max-structured-output-choices``, default 1000: OpenAI's cap on enum values per
   schema). Over either: RESOURCE_EXHAUSTED naming the flag.
2. **A compile check with a time limit** (:class:`GrammarGuard`): the constraint is compiled
   exactly as the engine will compile it — vLLM's own ``validate_xgrammar_grammar`` (which
   turns a choice into a grammar), ``get_structured_output_key`` and
   ``XgrammarBackend.compile_grammar`` — in a child process forked from a *zygote* that
   imported vLLM and built the backend (tokenizer info) once. A child still compiling after
   ``timeout_s`` (``--structured-output-compile-timeout-s``, default 2 s) is killed, and the
   request gets RESOURCE_EXHAUSTED naming the flag; the engine never sees it. A constraint
   that passed compiles in the engine in about the same time, so no request can hold the
   engine's grammar pool for much longer than the limit. Verdicts are remembered (LRU by the
   constraint's hash): the common case, one schema sent many times, pays the check once.

Only the xgrammar backend compiles eagerly (``--structured-outputs-config.backend`` ``auto``
or ``xgrammar``); guidance and the others build their masks lazily and are not checked.
A constraint the check cannot compile (xgrammar does not support it) is passed through:
vLLM's own validation then refuses it or, in ``auto`` mode, gives it to guidance.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import multiprocessing as mp
import os
import pickle
import select
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from nanovl.errors import InvalidArgument, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 128 * 1024
DEFAULT_MAX_CHOICES = 1000
DEFAULT_COMPILE_TIMEOUT_S = 2.0
# Verdicts remembered (constraint hash → passed / too slow).
VERDICT_CACHE_SIZE = 4096


@dataclass(frozen=True)
class GrammarLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_choices: int = DEFAULT_MAX_CHOICES
    compile_timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def constraint_size(params: Any) -> tuple[str, int, int]:
    """(field, bytes of its text, number of choices) of a vLLM ``StructuredOutputsParams``."""
    if params.choice is not None:
        choices = list(params.choice)
        return "choice", sum(len(str(c).encode()) for c in choices), len(choices)
    for name in ("json", "regex", "grammar", "structural_tag"):
        value = getattr(params, name)
        if value is not None:
            return name, len(_text(value).encode()), 0
    return "json_object", 0, 0


def check_size(params: Any, limits: GrammarLimits) -> None:
    """RESOURCE_EXHAUSTED past ``--max-structured-output-bytes`` / ``-choices``."""
    name, size, choices = constraint_size(params)
    extra = len(params.whitespace_pattern.encode()) if getattr(params, "whitespace_pattern", None) else 0
    if size + extra > limits.max_bytes:
        raise ResourceExhausted(
            f"the structured-output constraint ({name}) is {size + extra} bytes, over this server's limit of "
            f"{limits.max_bytes} bytes (--max-structured-output-bytes); send a smaller schema, regex or grammar"
        )
    if choices > limits.max_choices:
        raise ResourceExhausted(
            f"the structured-output choice has {choices} options, over this server's limit of "
            f"{limits.max_choices} (--max-structured-output-choices); send fewer choices"
        )


def _verdict_key(params: Any) -> str:
    fields = (
        params.json,
        params.regex,
        params.choice,
        params.grammar,
        params.json_object,
        params.structural_tag,
        params.disable_any_whitespace,
        params.disable_additional_properties,
        params.whitespace_pattern,
    )
    return hashlib.sha256(pickle.dumps(fields)).hexdigest()


# ---------------------------------------------------------------- the zygote process


def _compile_in_child(backend: Any, params: Any) -> tuple[str, str]:
    """In the forked child: what the engine would do with ``params``."""
    from types import SimpleNamespace

    from vllm.v1.structured_output.backend_xgrammar import validate_xgrammar_grammar
    from vllm.v1.structured_output.request import get_structured_output_key

    try:
        # vLLM's frontend validation; rewrites a choice into the grammar the engine compiles.
        validate_xgrammar_grammar(SimpleNamespace(structured_outputs=params))
        key = get_structured_output_key(params)
        if key[0].name == "CHOICE":  # left unconverted: vLLM's validation refuses it (an empty choice)
            return "unsupported", "a choice xgrammar's validation did not turn into a grammar"
        grammar = backend.compile_grammar(*key)
    except Exception as exc:  # not xgrammar's to compile: vLLM's own validation decides
        return "unsupported", f"{type(exc).__name__}: {exc}"[:300]
    # A grammar that allows no first token (e.g. ``root ::= root``) matches no string: the
    # engine would end the request with an error after its first step (verify-10e D4).
    bitmask = backend.allocate_token_bitmask(1)
    grammar.fill_bitmask(bitmask, 0)
    if not bool(bitmask.any()) and not grammar.is_terminated():
        return "empty", ""
    return "ok", ""


def _zygote_main(conn: Connection, pickled_config_source: bytes) -> None:
    """Imports vLLM and builds the xgrammar backend once (from the engine's ``VllmConfig``,
    or from its ``AsyncEngineArgs`` while the engine itself starts); then, per check, forks
    a child that compiles and answers over a pipe, and kills it past its time limit."""
    # Titled like vLLM's own processes, so process listings (GetBudget, CPU profiles) never
    # take this spawned child of the server for the engine core.
    with contextlib.suppress(ImportError):
        import setproctitle

        setproctitle.setproctitle("nanovl::GrammarCheck")
    os.nice(10)  # never ahead of the engine's threads (nor its start: vLLM's import below)
    config_source = pickle.loads(pickled_config_source)
    from vllm.tokenizers import cached_tokenizer_from_config
    from vllm.v1.structured_output.backend_xgrammar import XgrammarBackend

    # What vLLM would log about a client's constraint here is the client's business (its
    # status says it); the engine logs its own view if the constraint ever reaches it.
    logging.getLogger("vllm").setLevel(logging.CRITICAL)
    if hasattr(config_source, "create_engine_config"):
        vllm_config = config_source.create_engine_config()
    else:
        vllm_config = config_source

    model_config = vllm_config.model_config
    backend = XgrammarBackend(
        vllm_config,
        tokenizer=cached_tokenizer_from_config(model_config=model_config),
        vocab_size=model_config.get_vocab_size(),
    )
    conn.send(("ready", None, None))
    children: dict[int, tuple[int, int, float]] = {}  # read fd → (check id, pid, deadline)

    def finish(fd: int, verdict: tuple[str, str]) -> None:
        check_id, pid, _ = children.pop(fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
        conn.send((check_id, *verdict))

    while True:
        now = time.monotonic()
        timeout = max(0.0, min(d for _, _, d in children.values()) - now) if children else None
        readable, _, _ = select.select([conn.fileno(), *children], [], [], timeout)
        if conn.fileno() in readable:
            try:
                message = conn.recv()
            except EOFError:
                message = None
            if message is None:  # the server is gone or closing
                for fd in list(children):
                    finish(fd, ("stopped", ""))
                return
            check_id, params, timeout_s = message
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: compile, answer, exit without cleanup
                os.close(read_fd)
                try:
                    payload = pickle.dumps(_compile_in_child(backend, params))
                    os.write(write_fd, payload)
                finally:
                    os._exit(0)
            os.close(write_fd)
            children[read_fd] = (check_id, pid, time.monotonic() + timeout_s)
        for fd in [fd for fd in readable if fd in children]:
            data = b""
            while chunk := os.read(fd, 65536):
                data += chunk
            finish(fd, pickle.loads(data) if data else ("crashed", "the grammar compiler died"))
        now = time.monotonic()
        for fd in [fd for fd, (_, _, deadline) in children.items() if deadline <= now]:
            finish(fd, ("timeout", ""))


_SHARED: dict[int, GrammarGuard] = {}


class GrammarGuard:
    """Checks structured-output constraints before the engine compiles them (module docstring).

    ``check`` raises ``ResourceExhausted`` (over a size limit, too slow to compile, or every
    check slot busy for longer than the time limit), ``InvalidArgument`` (the compiler
    crashed on it), or ``Unavailable`` (the checker process died and is restarting)."""

    def __init__(self, config_source: Any, *, max_concurrent: int = 2) -> None:
        """``config_source``: the engine's ``VllmConfig``, or the ``AsyncEngineArgs`` it is
        built from (to start the checker while the engine starts)."""
        self._config_source = config_source
        self._slots = asyncio.Semaphore(max_concurrent)
        self._verdicts: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()
        self._pending: dict[int, asyncio.Future[tuple[str, str]]] = {}
        self._next_id = 0
        self._inflight: dict[str, asyncio.Future[tuple[str, str]]] = {}
        self._conn: Connection | None = None
        self._process: mp.process.BaseProcess | None = None
        self._ready: asyncio.Future[None] | None = None
        self._send_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @classmethod
    def shared(cls, vllm_config: Any) -> GrammarGuard:
        """The one checker of this engine (every server built on it shares it: one process
        that imports vLLM, started once). Call on the event loop."""
        guard = _SHARED.get(id(vllm_config))
        if guard is None or guard._closed:
            guard = _SHARED[id(vllm_config)] = cls(vllm_config)
            guard.start()
        return guard

    async def wait_ready(self) -> bool:
        """Waits until the checker has started; False (logged) if it could not start, in
        which case constraints get only the size limits."""
        assert self._ready is not None
        try:
            await asyncio.shield(self._ready)
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            log.error("the structured-output checker did not start (%s): only size limits apply", exc)
            return False
        return True

    @staticmethod
    def applies(vllm_config: Any) -> bool:
        """Whether the engine compiles grammars eagerly with xgrammar (backend auto / xgrammar)."""
        backend = str(vllm_config.structured_outputs_config.backend or "auto")
        return backend == "auto" or backend.startswith("xgrammar")

    def start(self) -> None:
        """Start the checker process in the background (it imports vLLM: seconds); checks
        wait for it. Call on the event loop."""
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(
            # Pickled here, unpickled after the child lowers its priority: unpickling it
            # imports vLLM (seconds of CPU, beside the engine's own start).
            target=_zygote_main,
            args=(child, pickle.dumps(self._config_source)),
            name="nanovl-grammar-check",
            daemon=True,
        )
        self._process.start()
        child.close()
        self._conn = parent
        threading.Thread(target=self._read_replies, args=(parent, self._ready), daemon=True).start()

    def _read_replies(self, conn: Connection, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None
        loop = self._loop
        while True:
            try:
                check_id, *verdict = conn.recv()
            except (EOFError, OSError):
                break
            with contextlib.suppress(RuntimeError):  # the loop closed under us
                if check_id == "ready":
                    loop.call_soon_threadsafe(lambda: ready.done() or ready.set_result(None))
                else:
                    loop.call_soon_threadsafe(self._resolve, check_id, tuple(verdict))
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._died, conn, ready)

    def _resolve(self, check_id: int, verdict: tuple[str, str]) -> None:
        future = self._pending.pop(check_id, None)
        if future is not None and not future.done():
            future.set_result(verdict)

    def _died(self, conn: Connection, ready: asyncio.Future[None]) -> None:
        if conn is not self._conn:
            return  # an old checker, already replaced
        was_ready = ready.done() and not ready.cancelled() and ready.exception() is None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(Unavailable("the structured-output checker restarted; retry"))
        self._pending.clear()
        if self._closed:
            return
        if self._process is not None and self._process.exitcode not in (None, 0):
            log.error("the structured-output checker died (exit %s); restarting it", self._process.exitcode)
        self._conn = None
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(Unavailable("the structured-output checker failed to start"))
            self._ready.exception()
        if was_ready and not self._closed:
            self.start()  # a checker that never started is not retried in a loop

    def close(self) -> None:
        self._closed = True  # no restart
        if self._conn is not None:
            with contextlib.suppress(OSError), self._send_lock:
                self._conn.send(None)
            self._conn.close()
        if self._process is not None:
            self._process.join(2)
            if self._process.is_alive():
                self._process.kill()

    async def check(self, params: Any, limits: GrammarLimits) -> None:
        """Size limits, then the timed compile (remembered per time limit); returns when the
        engine may compile it."""
        if params is None:
            return
        check_size(params, limits)
        if params.json_object and params.json is None:
            return  # vLLM's fixed '{"type": "object"}' grammar
        if self.failed:
            return  # the checker could not start (logged): size limits only
        key = f"{limits.compile_timeout_s!r}:{_verdict_key(params)}"
        verdict = self._verdicts.get(key)
        if verdict is None:
            # One compile per constraint at a time: a client repeating a slow schema (or
            # cancelling and resending it) waits on the same check instead of forking more.
            future = self._inflight.get(key)
            if future is None:
                future = await self._submit(params, limits.compile_timeout_s)
                self._inflight[key] = future
                future.add_done_callback(lambda f, key=key: self._remember(key, f))
            verdict = await asyncio.shield(future)
        else:
            self._verdicts.move_to_end(key)
        kind, _detail = verdict
        if kind == "timeout":
            raise ResourceExhausted(
                "the structured-output constraint takes longer to compile than this server's limit of "
                f"{limits.compile_timeout_s:g} s (--structured-output-compile-timeout-s); "
                "simplify it (fewer enum values, alternatives or repetitions)"
            )
        if kind == "empty":
            raise InvalidArgument(
                "the structured-output constraint matches no string: it allows no first token "
                "(e.g. a grammar rule defined only by itself); fix the grammar, schema or regex"
            )
        if kind == "crashed":
            raise InvalidArgument("the structured-output constraint crashed the grammar compiler; simplify it")

    @property
    def failed(self) -> bool:
        ready = self._ready
        return ready is not None and ready.done() and (ready.cancelled() or ready.exception() is not None)

    def _remember(self, key: str, future: asyncio.Future[tuple[str, str]]) -> None:
        self._inflight.pop(key, None)
        if future.cancelled() or future.exception() is not None:
            return
        verdict = future.result()
        if verdict[0] in ("ok", "timeout", "unsupported"):
            self._verdicts[key] = verdict
            while len(self._verdicts) > VERDICT_CACHE_SIZE:
                self._verdicts.popitem(last=False)

    async def _submit(self, params: Any, timeout: float) -> asyncio.Future[tuple[str, str]]:
        """Sends one check to the checker; the future resolves with its verdict. A slot is
        held until the verdict arrives, even if the caller has gone (the compile goes on)."""
        assert self._ready is not None and self._loop is not None, "GrammarGuard.start() was not called"
        await asyncio.shield(self._ready)  # servers report SERVING only once it is ready
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except TimeoutError:
            raise ResourceExhausted(
                "every structured-output check slot is busy with other requests' constraints; retry with backoff"
            ) from None
        if self._conn is None:
            self._slots.release()
            raise Unavailable("the structured-output checker is restarting; retry")
        check_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[tuple[str, str]] = self._loop.create_future()
        future.add_done_callback(lambda _: self._slots.release())
        self._pending[check_id] = future
        with self._send_lock:
            self._conn.send((check_id, params, timeout))
        # The checker enforces the limit; this only guards against a stuck checker.
        self._loop.call_later(timeout + 30, self._give_up, check_id)
        return future

    def _give_up(self, check_id: int) -> None:
        future = self._pending.pop(check_id, None)
        if future is not None and not future.done():
            future.set_exception(Unavailable("the structured-output checker did not answer; retry"))
