"""Server lifecycle: STARTING → SERVING → DRAINING → STOPPED, and the in-flight count drain waits on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

STARTING, SERVING, DRAINING, STOPPED = "STARTING", "SERVING", "DRAINING", "STOPPED"


class Lifecycle:
    def __init__(self, on_change: Callable[[str], None] | None = None) -> None:
        self.state = STARTING
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._on_change = on_change

    @property
    def accepting(self) -> bool:
        return self.state == SERVING

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(state)

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

    async def wait_idle(self, timeout_s: float) -> bool:
        """True if every in-flight request finished within the timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
