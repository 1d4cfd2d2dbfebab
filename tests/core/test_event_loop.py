"""nanovl.event_loop: which loop nanovl's processes run on."""

from __future__ import annotations

import asyncio

import pytest

from nanovl import event_loop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_auto_runs_on_uvloop_where_installed() -> None:
    pytest.importorskip("uvloop")
    assert event_loop.resolve("auto") == "uvloop"
    assert event_loop.run(_loop_module()).startswith("uvloop")


def test_asyncio_can_be_chosen() -> None:
    assert event_loop.resolve("asyncio") == "asyncio"
    assert event_loop.run(_loop_module(), loop="asyncio").startswith("asyncio")


def test_uvloop_requested_but_missing_is_a_clear_error(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_uvloop(name, *args, **kwargs):
        if name == "uvloop":
            raise ImportError("no uvloop here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    assert event_loop.resolve("auto") == "asyncio"
    with pytest.raises(RuntimeError, match="pip install uvloop"):
        event_loop.resolve("uvloop")
