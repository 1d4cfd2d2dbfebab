"""One nanovl ``GenerateRequest`` in each other side's form, built before timing starts.

- (a) in-process: media decoded by nanovl's own decoders (``service.part_decoding``) and
  the chat rendered by nanovl's ``ChatRenderer``, i.e. exactly the prompt the nanovl
  server hands the engine; only vLLM's renderer (tokenizer + multimodal processor) and
  generation are timed.
- (c) vLLM OpenAI HTTP: a chat completion with the same media bytes as base64 data URLs
  (``image_url``, ``video_url``, ``input_audio``), serialised to JSON bytes up front.
- (d) vLLM gRPC: token ids of the same rendered chat (text only: that API takes no raw media).

The sampling options are the request's own (max_tokens, temperature, ignore_eos).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from nanovl.errors import InvalidArgument
from nanovl.v1 import inference_pb2 as pb

__all__ = [
    "BenchSampling",
    "chat_parts",
    "chat_token_ids",
    "inprocess_prompt",
    "openai_body",
    "rendered_chat_text",
    "sampling_of",
    "vllm_grpc_request",
]

_MIME = {
    "image": {"jpeg": "image/jpeg", "jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"},
    "video": {"mp4": "video/mp4", "webm": "video/webm", "mov": "video/quicktime"},
}


@dataclass(frozen=True)
class BenchSampling:
    max_tokens: int
    temperature: float
    ignore_eos: bool


def sampling_of(req: pb.GenerateRequest) -> BenchSampling:
    """The request's sampling options; refuses any other option, which the other sides
    would silently drop."""
    s = req.sampling
    present = {f.name for f, _ in s.ListFields()}
    extra = present - {"max_tokens", "temperature", "ignore_eos"}
    if extra or not s.HasField("max_tokens"):
        raise InvalidArgument(
            f"bench requests may set only max_tokens, temperature and ignore_eos; got {sorted(present)}"
        )
    return BenchSampling(
        max_tokens=s.max_tokens,
        temperature=s.temperature if s.HasField("temperature") else 1.0,
        ignore_eos=s.ignore_eos if s.HasField("ignore_eos") else False,
    )


def chat_parts(req: pb.GenerateRequest) -> tuple[pb.ContentPart, ...]:
    """The parts of the request's single user message (the load tester's chat form)."""
    if req.parts or len(req.messages) != 1 or req.messages[0].role != "user":
        raise InvalidArgument("bench requests must be chat requests with one user message")
    return tuple(req.messages[0].parts)


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _openai_part(part: pb.ContentPart) -> dict[str, Any]:
    kind = part.WhichOneof("kind")
    if kind == "text":
        return {"type": "text", "text": part.text}
    if kind == "image":
        mime = _MIME["image"].get(part.image.format.lower(), "image/jpeg")
        return {"type": "image_url", "image_url": {"url": _data_url(mime, part.image.data)}}
    if kind == "video":
        if part.video.WhichOneof("source") != "encoded":
            raise InvalidArgument("bench video must be an encoded container")
        mime = _MIME["video"].get(part.video.format.lower(), "video/mp4")
        return {"type": "video_url", "video_url": {"url": _data_url(mime, part.video.encoded)}}
    if kind == "audio":
        if part.audio.WhichOneof("source") != "encoded":
            raise InvalidArgument("bench audio must be an encoded file")
        data = base64.b64encode(part.audio.encoded).decode("ascii")
        return {"type": "input_audio", "input_audio": {"data": data, "format": part.audio.format or "wav"}}
    raise InvalidArgument(f"unsupported part {kind!r}")


def openai_body(req: pb.GenerateRequest, model: str) -> bytes:
    """The chat-completion request body, streamed, with per-chunk token ids (a vLLM
    extension; without it vLLM skips chunks whose text is an incomplete UTF-8 sequence,
    and token counts and TTFT could not be measured) and usage in the last chunk."""
    s = sampling_of(req)
    body = {
        "model": model,
        "messages": [{"role": "user", "content": [_openai_part(p) for p in chat_parts(req)]}],
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "ignore_eos": s.ignore_eos,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def rendered_chat_text(req: pb.GenerateRequest, renderer: Any) -> str:
    """The prompt text nanovl's ``ChatRenderer`` makes of a text-only chat request."""
    from model.prompt import Message, TextPart

    parts = chat_parts(req)
    if any(p.WhichOneof("kind") != "text" for p in parts):
        raise InvalidArgument("only text requests can be sent as token ids")
    return renderer.render([Message("user", tuple(TextPart(p.text) for p in parts))]).prompt


def chat_token_ids(checkpoint: str) -> Any:
    """A function giving the token ids of a text-only chat request's rendered prompt
    (nanovl's ``ChatRenderer``, then the checkpoint's tokenizer with its defaults, as
    vLLM tokenizes a text prompt): what the token-id sides (d) and (e) send."""
    from transformers import AutoTokenizer

    from model.prompt import ChatRenderer

    renderer = ChatRenderer(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=True)

    def ids(req: pb.GenerateRequest) -> list[int]:
        return list(tokenizer(rendered_chat_text(req, renderer))["input_ids"])

    return ids


def vllm_grpc_request(req: pb.GenerateRequest, token_ids: list[int], request_id: str) -> Any:
    """vLLM's own gRPC ``GenerateRequest`` (smg-grpc-proto), streamed."""
    from smg_grpc_proto import vllm_engine_pb2 as vpb

    s = sampling_of(req)
    return vpb.GenerateRequest(
        request_id=request_id,
        tokenized=vpb.TokenizedInput(input_ids=token_ids),
        sampling_params=vpb.SamplingParams(temperature=s.temperature, max_tokens=s.max_tokens, ignore_eos=s.ignore_eos),
        stream=True,
    )


def inprocess_prompt(
    req: pb.GenerateRequest,
    renderer: Any,
    *,
    default_video_frames: int,
    audio_sample_rate: int | None,
    limits: Any,
) -> Any:
    """The ``AssembledPrompt`` the nanovl server would build from ``req`` (media decoded)."""
    from model.prompt import Message, TextPart
    from service.part_decoding import decode_part

    parts = []
    for p in chat_parts(req):
        if p.WhichOneof("kind") == "text":
            parts.append(TextPart(p.text))
        else:
            parts.append(
                decode_part(
                    p, default_video_frames=default_video_frames, audio_sample_rate=audio_sample_rate, limits=limits
                ).part
            )
    return renderer.render([Message("user", tuple(parts))])
