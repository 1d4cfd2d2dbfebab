"""Server lifecycle: STARTING → SERVING → DRAINING → STOPPED, the in-flight count drain
waits on, and the admission budgets (admitted requests; StreamGenerate uploads)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

from nanovl.errors import ResourceExhausted

STARTING, SERVING, DRAINING, STOPPED = "STARTING", "SERVING", "DRAINING", "STOPPED"


class Lifecycle:
    """``on_change`` is called with no argument whenever what readiness reports may have
    changed: the state, the engine's death, or the server filling up or freeing a slot."""

    def __init__(
        self,
        on_change: Callable[[], None] | None = None,
        *,
        max_admitted: int | None = None,
        max_uploading: int | None = None,
    ) -> None:
        self.state = STARTING
        self.in_flight = 0  # every call inside the servicer, for drain
        self.admitted = 0  # requests past upload: decoding, queued or generating
        self.uploading = 0  # StreamGenerate calls between header and End
        self.max_admitted = max_admitted
        self.max_uploading = max_uploading
        self.engine_dead = asyncio.Event()
        self.cut_calls = 0  # calls still running when a drain's grace ran out
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
    def ready(self) -> bool:
        return self.accepting and not self.saturated

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

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
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    @contextlib.contextmanager
    def admission(self) -> Iterator[None]:
        """One admitted request; ResourceExhausted when every slot is taken."""
        if self.saturated:
            raise ResourceExhausted(
                f"the server is at its limit of {self.max_admitted} concurrent requests "
                "(--max-concurrent-requests); retry with backoff or on another replica"
            )
        was_saturated = self.saturated
        self.admitted += 1
        if self.saturated != was_saturated:
            self._changed()
        try:
            yield
        finally:
            was_saturated = self.saturated
            self.admitted -= 1
            if self.saturated != was_saturated:
                self._changed()

    @contextlib.contextmanager
    def upload(self) -> Iterator[None]:
        """One StreamGenerate upload in progress; ResourceExhausted past its own budget."""
        if self.max_uploading is not None and self.uploading >= self.max_uploading:
            raise ResourceExhausted(
                f"the server is receiving {self.uploading} uploads, its limit (--max-concurrent-uploads); "
                "retry with backoff, or send the request with Generate"
            )
        self.uploading += 1
        try:
            yield
        finally:
            self.uploading -= 1

    async def wait_idle(self, timeout_s: float) -> bool:
        """True if every in-flight request finished within the timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            self.cut_calls = self.in_flight
            return False
