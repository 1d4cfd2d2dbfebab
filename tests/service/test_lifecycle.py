"""The drain cut against a call suspended in gRPC's send (pure logic: a fake of grpc.aio's
loop that drives a streaming handler; the real server's cut is
tests/service/test_isolation.py::test_a_drain_that_cuts_calls_says_so)."""

from __future__ import annotations

import asyncio

from service.lifecycle import Lifecycle


def _handler(lifecycle: Lifecycle, outcome: list, responses: int = 3):
    """A streaming handler shaped like ``Generate``: track the call, yield each response
    inside ``sending``, and end a cut call with the cut's reason."""

    async def handler():
        try:
            with lifecycle.track():
                for i in range(responses):
                    with lifecycle.sending(last=i == responses - 1):
                        yield i
            outcome.append("finished")
        except asyncio.CancelledError:
            outcome.append(("cut", lifecycle.cut_reason))

    return handler()


async def _grpc_loop(handler, sending: asyncio.Event, release: asyncio.Event) -> list:
    """grpc.aio's part: pull each response and send it; the send waits for ``release``
    (a slow client, a loaded machine). A cancel that lands here never reaches the handler."""
    sent = []
    async for response in handler:
        sending.set()
        await release.wait()
        sent.append(response)
    return sent


async def test_a_cut_reaches_a_call_in_a_send_when_the_send_returns() -> None:
    lifecycle = Lifecycle()
    outcome: list = []
    sending, release = asyncio.Event(), asyncio.Event()
    call = asyncio.ensure_future(_grpc_loop(_handler(lifecycle, outcome), sending, release))
    await sending.wait()  # the handler is suspended at its first yield, the task in the send
    cut = asyncio.ensure_future(lifecycle.cut("the server stopped; retry", timeout_s=10))
    await asyncio.sleep(0.05)
    assert not call.done() and outcome == []  # the send was not interrupted
    release.set()
    await asyncio.wait_for(cut, 10)
    # The handler saw the cut when the send returned, and ended the call itself.
    assert await asyncio.wait_for(call, 10) == [0] and outcome == [("cut", "the server stopped; retry")]
    assert lifecycle.in_flight == 0


async def test_a_cut_while_the_last_response_is_sent_lets_the_call_finish() -> None:
    lifecycle = Lifecycle()
    outcome: list = []
    sending, release = asyncio.Event(), asyncio.Event()
    call = asyncio.ensure_future(_grpc_loop(_handler(lifecycle, outcome, responses=1), sending, release))
    await sending.wait()
    cut = asyncio.ensure_future(lifecycle.cut("stopping", timeout_s=10))
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(cut, 10)
    assert await asyncio.wait_for(call, 10) == [0] and outcome == ["finished"]


async def test_a_cut_elsewhere_cancels_the_call_at_once() -> None:
    lifecycle = Lifecycle()
    outcome: list = []
    waiting = asyncio.Event()

    async def handler() -> None:
        try:
            with lifecycle.track():
                waiting.set()
                await asyncio.sleep(60)  # the engine's next token
        except asyncio.CancelledError:
            outcome.append(("cut", lifecycle.cut_reason))

    call = asyncio.ensure_future(handler())
    await waiting.wait()
    await asyncio.wait_for(lifecycle.cut("stopping", timeout_s=10), 5)
    await call
    assert outcome == [("cut", "stopping")] and lifecycle.in_flight == 0
