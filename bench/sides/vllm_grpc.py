"""(d) vLLM's own gRPC server (``VllmEngine`` from smg-grpc-servicer): token ids in, token ids out.

Its API takes a tokenized prompt (a router is expected to tokenize), so the client renders
the chat and tokenizes it before timing; only text requests can be sent this way.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from bench.convert import chat_token_ids, vllm_grpc_request
from bench.loop import StreamClock, point_measurer
from bench.passes import MeasurePoint
from loadtest.results import RequestRecord

__all__ = ["VLLM_GRPC_SERVICE", "vllm_grpc_measurer"]

VLLM_GRPC_SERVICE = "vllm.grpc.engine.VllmEngine"


@dataclass(frozen=True)
class _GrpcRequest:
    kind: str
    request: Any  # vllm_engine_pb2.GenerateRequest


async def _send(stub: Any, item: _GrpcRequest, index: int) -> RequestRecord:
    clock = StreamClock()
    prompt_tokens = 0
    try:
        async for resp in stub.Generate(item.request, timeout=600):
            which = resp.WhichOneof("response")
            if which == "chunk":
                clock.tokens_arrived(len(resp.chunk.token_ids))
                prompt_tokens = resp.chunk.prompt_tokens
            elif which == "complete":
                prompt_tokens = resp.complete.prompt_tokens
                if resp.complete.finish_reason in ("abort", "error"):
                    return clock.record(
                        index,
                        item.kind,
                        prompt_tokens=0,
                        error=(f"FINISH_{resp.complete.finish_reason.upper()}", "engine finished the request early"),
                    )
    except grpc.aio.AioRpcError as e:
        return clock.record(index, item.kind, prompt_tokens=0, error=(e.code().name, e.details() or ""))
    return clock.record(index, item.kind, prompt_tokens=prompt_tokens)


@asynccontextmanager
async def vllm_grpc_measurer(target: str, checkpoint: str, server_pid: int) -> AsyncIterator[MeasurePoint]:
    """One channel for the side's whole run; yields a function measuring one point."""
    from smg_grpc_proto import vllm_engine_pb2_grpc

    token_ids = chat_token_ids(checkpoint)

    def convert(r: Any) -> _GrpcRequest:
        return _GrpcRequest(r.kind, vllm_grpc_request(r.request, token_ids(r.request), f"bench-{uuid.uuid4().hex}"))

    async with grpc.aio.insecure_channel(target) as channel:
        stub = vllm_engine_pb2_grpc.VllmEngineStub(channel)

        async def send(item: _GrpcRequest, index: int) -> RequestRecord:
            return await _send(stub, item, index)

        yield point_measurer(send, convert, server_pid)
