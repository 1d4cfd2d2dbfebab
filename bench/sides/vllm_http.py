"""(c) vLLM's OpenAI-compatible HTTP server: streamed chat completions over aiohttp."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from bench.convert import openai_body
from bench.loop import StreamClock, point_measurer
from bench.passes import MeasurePoint
from loadtest.results import RequestRecord

__all__ = ["served_model", "vllm_http_measurer"]


@dataclass(frozen=True)
class _HttpRequest:
    kind: str
    body: bytes  # JSON, serialised before timing


async def served_model(base_url: str) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/v1/models") as resp:
            resp.raise_for_status()
            return str((await resp.json())["data"][0]["id"])


async def _send(session: aiohttp.ClientSession, url: str, item: _HttpRequest, index: int) -> RequestRecord:
    clock = StreamClock()
    prompt_tokens = 0
    try:
        async with session.post(url, data=item.body, headers={"Content-Type": "application/json"}) as resp:
            if resp.status != 200:
                text = (await resp.text())[:500]
                return clock.record(index, item.kind, prompt_tokens=0, error=(f"HTTP_{resp.status}", text))
            async for raw in resp.content:
                if not raw.startswith(b"data: "):
                    continue
                payload = raw[6:].strip()
                if payload == b"[DONE]":
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    return clock.record(
                        index, item.kind, prompt_tokens=0, error=("STREAM_ERROR", str(chunk["error"])[:500])
                    )
                for choice in chunk.get("choices") or ():
                    clock.tokens_arrived(len(choice.get("token_ids") or ()))
                usage = chunk.get("usage")
                if usage:
                    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        return clock.record(index, item.kind, prompt_tokens=0, error=("CLIENT", f"{type(e).__name__}: {e}"))
    return clock.record(index, item.kind, prompt_tokens=prompt_tokens)


@asynccontextmanager
async def vllm_http_measurer(base_url: str, server_pid: int) -> AsyncIterator[MeasurePoint]:
    """One HTTP session for the side's whole run; yields a function measuring one point."""
    model = await served_model(base_url)
    url = f"{base_url}/v1/chat/completions"
    # No connection cap (aiohttp's default is 100) and no total timeout but a generous one.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def send(item: _HttpRequest, index: int) -> RequestRecord:
            return await _send(session, url, item, index)

        yield point_measurer(send, lambda r: _HttpRequest(r.kind, openai_body(r.request, model)), server_pid)
