"""Python client for the nanovl ``Inference`` API: an asyncio client and a blocking one.

Build a prompt from :class:`Part` s (or chat :class:`Message` s), then either iterate typed
events::

    async with AsyncInferenceClient("localhost:50051") as client:
        async with client.generate([Part.image("cat.jpg"), "What is this?"]) as stream:
            async for event in stream:
                if isinstance(event, Delta):
                    print(event.text, end="")

or take the whole answer with ``await client.generate_text(...)`` (a :class:`Result`).
``stream_generate`` uploads media in chunks straight from the files, so multi-megabyte
media are never held twice in memory and the server decodes each part while the next
one uploads. Leaving the ``async with`` block (or calling ``cancel()``) cancels the RPC,
and the server aborts the generation. Failed RPCs raise :class:`InferenceRpcError`;
prompts that cannot be built raise :class:`nanovl.errors.InvalidArgument`.

Modules: ``parts`` (prompt parts and messages), ``tools`` (tools, tool choice, tool
calls), ``sampling`` (sampling, structured output, chat template options), ``requests``
(the protobuf request layer), ``events`` (response events, results, model info),
``aio`` / ``sync`` (the two clients over one shared implementation in ``_base``),
``security`` (``TlsConfig``, bearer tokens). The client imports only grpc and protobuf
(numpy when arrays are passed): never torch, transformers or vLLM.
"""

from __future__ import annotations

from nanovl.client._base import DEFAULT_MAX_MESSAGE_BYTES, InferenceRpcError, channel_options
from nanovl.client.aio import AsyncGeneration, AsyncInferenceClient
from nanovl.client.events import (
    Delta,
    Event,
    Final,
    FinishReason,
    Logprob,
    MediaItem,
    Modality,
    ModalityInfo,
    ModalityTokens,
    ModelInfo,
    Result,
    Started,
    Timings,
    TokenLogprobs,
    Usage,
    collect_result,
    event_from_proto,
)
from nanovl.client.parts import DEFAULT_CHUNK_SIZE, Message, Part, PcmSpec, Prompt, PromptLike, RawFramesSpec
from nanovl.client.requests import build_generate_request, build_stream_header, iter_stream_chunks
from nanovl.client.sampling import ChatTemplate, Sampling, StructuredOutput
from nanovl.client.security import TlsConfig, read_token_file
from nanovl.client.sync import Generation, InferenceClient
from nanovl.client.tools import Tool, ToolCall, ToolChoice, load_tools

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "AsyncGeneration",
    "AsyncInferenceClient",
    "ChatTemplate",
    "Delta",
    "Event",
    "Final",
    "FinishReason",
    "Generation",
    "InferenceClient",
    "InferenceRpcError",
    "Logprob",
    "MediaItem",
    "Message",
    "Modality",
    "ModalityInfo",
    "ModalityTokens",
    "ModelInfo",
    "Part",
    "PcmSpec",
    "Prompt",
    "PromptLike",
    "RawFramesSpec",
    "Result",
    "Sampling",
    "Started",
    "StructuredOutput",
    "Timings",
    "TlsConfig",
    "TokenLogprobs",
    "Tool",
    "ToolCall",
    "ToolChoice",
    "Usage",
    "build_generate_request",
    "build_stream_header",
    "channel_options",
    "collect_result",
    "event_from_proto",
    "iter_stream_chunks",
    "load_tools",
    "read_token_file",
]
