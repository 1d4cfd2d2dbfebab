"""(d) vLLM's own gRPC server (``VllmEngine`` from smg-grpc-servicer): token ids in, token ids out.

Its API takes a tokenized prompt (a router is expected to tokenize), so the client renders
the chat and tokenizes it before timing; only text requests can be sent this way.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from bench.convert import rendered_chat_text, vllm_grpc_request
from bench.loop import StreamClock, measure_points
from bench.plan import Point
from bench.sides import PointOutcome
from loadtest.results import RequestRecord

__all__ = ["VLLM_GRPC_SERVICE", "measure_vllm_grpc"]

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


async def measure_vllm_grpc(
    points: Sequence[Point], target: str, checkpoint: str, server_pid: int
) -> list[PointOutcome]:
    from smg_grpc_proto import vllm_engine_pb2_grpc
    from transformers import AutoTokenizer

    from model.prompt import ChatRenderer

    renderer = ChatRenderer(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=True)

    def convert(r: Any) -> _GrpcRequest:
        # vLLM tokenizes a text prompt with the tokenizer's defaults; so does this.
        ids = list(tokenizer(rendered_chat_text(r.request, renderer))["input_ids"])
        return _GrpcRequest(r.kind, vllm_grpc_request(r.request, ids, f"bench-{uuid.uuid4().hex}"))

    async with grpc.aio.insecure_channel(target) as channel:
        stub = vllm_engine_pb2_grpc.VllmEngineStub(channel)

        async def send(item: _GrpcRequest, index: int) -> RequestRecord:
            return await _send(stub, item, index)

        return await measure_points(points, send, convert, server_pid=server_pid)
