"""Server lifecycle: STARTING → SERVING → DRAINING → STOPPED, the in-flight count drain
waits on, and the admission budgets (admitted requests; StreamGenerate uploads).

Readiness can be withdrawn while the server still accepts calls (``withdraw``): the first
step of a drain, so balancers and Kubernetes stop routing here before new calls would be
refused (``NanovlServer.drain_and_stop``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

from nanovl.errors import ResourceExhausted

STARTING, SERVING, DRAINING, STOPPED = "STARTING", "SERVING", "DRAINING", "STOPPED"


class Admission:
    """One admitted request: ``queued`` (nanovl's own queue: media decoding, prompt
    rendering) until ``to_engine`` hands it to vLLM."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle
        self.queued = True

    def to_engine(self) -> None:
        if self.queued:
            self.queued = False
            self._lifecycle.queued -= 1


class Lifecycle:
    """``on_change`` is called with no argument whenever what readiness reports may have
    changed: the state, the engine's death, or the server filling up or freeing a slot."""

    def __init__(
        self,
        on_change: Callable[[], None] | None = None,
        *,
        max_admitted: int | None = None,
        max_uploading: int | None = None,
        max_uploading_per_peer: int | None = None,
    ) -> None:
        self.state = STARTING
        self.in_flight = 0  # every call inside the servicer, for drain
        self.admitted = 0  # requests past upload: decoding, queued or generating
        self.queued = 0  # admitted requests not yet handed to the engine (decoding, rendering)
        self.uploading = 0  # StreamGenerate calls between header and End
        self.max_admitted = max_admitted
        self.max_uploading = max_uploading
        self.max_uploading_per_peer = max_uploading_per_peer or None  # 0: no per-peer cap
        self.uploading_by_peer: dict[str, int] = {}
        self.engine_dead = asyncio.Event()
        # Readiness withdrawn (drain's first step, or SIGUSR1) at this loop time; the server
        # still accepts calls until the state leaves SERVING.
        self.withdrawn_at: float | None = None
        self.cut_calls = 0  # calls still running when a drain's grace ran out
        # The tasks of the calls in flight, and why they are being cancelled when a drain
        # cuts them (their handlers then end them with this UNAVAILABLE message).
        self.calls: set[asyncio.Task] = set()
        self.cut_reason: str | None = None
        # Calls whose handler is suspended at a ``yield`` (gRPC is sending its response) and
        # those a cut reached there: see ``sending``.
        self._sending: set[asyncio.Task] = set()
        self._cut_at_send: set[asyncio.Task] = set()
        self._pending_update: object = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.on_change = on_change

    @property
    def accepting(self) -> bool:
        return self.state == SERVING and not self.engine_dead.is_set()

    @property
    def saturated(self) -> bool:
        """Every admission slot is taken: readiness says NOT_SERVING so balancers route elsewhere."""
        return self.max_admitted is not None and self.admitted >= self.max_admitted

    @property
    def uploads_full(self) -> bool:
        """Every upload slot is taken: StreamGenerate would be refused, so readiness says
        NOT_SERVING too (balancers route elsewhere). One peer cannot cause it alone when
        ``max_uploading_per_peer`` is below ``max_uploading``."""
        return self.max_uploading is not None and self.uploading >= self.max_uploading

    @property
    def ready(self) -> bool:
        return self.accepting and not self.saturated and not self.uploads_full and self.withdrawn_at is None

    def withdraw(self) -> bool:
        """Readiness goes NOT_SERVING for good; calls are still accepted. False if it already was."""
        if self.withdrawn_at is not None:
            return False
        self.withdrawn_at = asyncio.get_running_loop().time()
        self._changed()
        return True

    @property
    def not_ready_reason(self) -> str | None:
        """Why readiness is NOT_SERVING, in a few words (the HTTP ``/ready`` body); None when ready."""
        if self.engine_dead.is_set():
            return "the engine died"
        if self.state != SERVING:
            return self.state.lower()
        if self.withdrawn_at is not None:
            return "draining (readiness withdrawn; in-flight calls finishing)"
        if self.saturated:
            return f"full: {self.admitted} requests admitted, the limit (--max-concurrent-requests)"
        if self.uploads_full:
            return f"full: {self.uploading} uploads in progress, the limit (--max-concurrent-uploads)"
        return None

    def _changed(self) -> None:
        if self.on_change is not None:
            self._pending_update = self.on_change()

    async def settled(self) -> None:
        """Waits until what readiness reports reflects the last change (the health update
        ``on_change`` started, when it returned an awaitable): a call refused because the
        engine died is answered only once readiness already says NOT_SERVING."""
        update = self._pending_update
        if update is not None and hasattr(update, "__await__"):
            with contextlib.suppress(Exception):
                await asyncio.shield(update)  # type: ignore[arg-type]

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._changed()

    def mark_engine_dead(self) -> None:
        if not self.engine_dead.is_set():
            self.engine_dead.set()
            self._changed()

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        self.in_flight += 1
        self._idle.clear()
        task = asyncio.current_task()
        if task is not None:
            self.calls.add(task)
        try:
            yield
        finally:
            if task is not None:
                self.calls.discard(task)
                self._cut_at_send.discard(task)
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    @contextlib.contextmanager
    def admission(self) -> Iterator[Admission]:
        """One admitted request; ResourceExhausted when every slot is taken."""
        if self.saturated:
            raise ResourceExhausted(
                f"the server is at its limit of {self.max_admitted} concurrent requests "
                "(--max-concurrent-requests); retry with backoff or on another replica"
            )
        was_saturated = self.saturated
        self.admitted += 1
        self.queued += 1
        admission = Admission(self)
        if self.saturated != was_saturated:
            self._changed()
        try:
            yield admission
        finally:
            admission.to_engine()
            was_saturated = self.saturated
            self.admitted -= 1
            if self.saturated != was_saturated:
                self._changed()

    @contextlib.contextmanager
    def upload(self, peer: str = "") -> Iterator[None]:
        """One StreamGenerate upload in progress (taken once its header is valid);
        ResourceExhausted past the server's upload budget or the peer's share of it."""
        if self.uploads_full:
            raise ResourceExhausted(
                f"the server is receiving {self.uploading} uploads, its limit (--max-concurrent-uploads); "
                "retry with backoff or on another replica, or send the request with Generate"
            )
        mine = self.uploading_by_peer.get(peer, 0)
        if self.max_uploading_per_peer is not None and mine >= self.max_uploading_per_peer:
            raise ResourceExhausted(
                f"this client ({peer or 'unknown peer'}) has {mine} uploads in progress, the limit per client "
                "(--max-uploads-per-peer); finish or cancel one first"
            )
        self.uploading += 1
        self.uploading_by_peer[peer] = mine + 1
        if self.uploads_full:
            self._changed()
        try:
            yield
        finally:
            was_full = self.uploads_full
            self.uploading -= 1
            if (left := self.uploading_by_peer[peer] - 1) > 0:
                self.uploading_by_peer[peer] = left
            else:
                del self.uploading_by_peer[peer]
            if was_full and not self.uploads_full:
                self._changed()

    @contextlib.contextmanager
    def sending(self, *, last: bool = False) -> Iterator[None]:
        """Around a streaming handler's ``yield response``. While the handler is suspended
        there, the task is in gRPC's send, outside the handler's frames: a cancel landing
        there ends the call with no status of the handler's (gRPC's own "Cancelling all
        calls" when the server stops). So a cut leaves such a call alone and it raises
        ``CancelledError`` here when it resumes (unless its ``last`` response was sent), in
        the handler, which then ends it with the cut's message."""
        task = asyncio.current_task()
        if task is None:
            yield
            return
        self._sending.add(task)
        try:
            yield
        finally:
            self._sending.discard(task)
        if task in self._cut_at_send:
            self._cut_at_send.discard(task)
            if not last:
                raise asyncio.CancelledError

    async def cut(self, reason: str, timeout_s: float = 1.0) -> None:
        """Cancels every call still in flight; their handlers end them UNAVAILABLE with
        ``reason`` (instead of gRPC's bare "Cancelling all calls" when the server stops).
        A call in gRPC's send is cut when the send returns (``sending``)."""
        self.cut_reason = reason
        for task in list(self.calls):
            if task in self._sending:
                self._cut_at_send.add(task)
            else:
                task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)

    async def wait_idle(self, timeout_s: float) -> bool:
        """True if every in-flight request finished within the timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            self.cut_calls = self.in_flight
            return False
