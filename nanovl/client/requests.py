"""The protobuf request layer: the ``GenerateRequest`` and the ``StreamGenerate`` message
sequence (header, contiguous media chunks, End) for a prompt and its options."""

from __future__ import annotations

from collections.abc import Iterator

from nanovl.client.parts import DEFAULT_CHUNK_SIZE, Prompt, PromptLike
from nanovl.client.sampling import ChatTemplate, Sampling
from nanovl.errors import InvalidArgument
from nanovl.v1 import inference_pb2 as pb


def _common_fields(
    msg: pb.GenerateRequest | pb.StreamGenerateHeader,
    request_id: str | None,
    sampling: Sampling | None,
    chat_template: ChatTemplate | None,
) -> None:
    if request_id is not None:
        msg.request_id = request_id
    if sampling is not None:
        msg.sampling.CopyFrom(sampling.to_proto())
    if chat_template is not None:
        msg.chat_template.CopyFrom(chat_template.to_proto())


def build_generate_request(
    prompt: PromptLike,
    *,
    sampling: Sampling | None = None,
    request_id: str | None = None,
    chat_template: ChatTemplate | None = None,
) -> pb.GenerateRequest:
    """The Generate request for ``prompt`` (media payloads read in full)."""
    p = Prompt.of(prompt)
    req = pb.GenerateRequest()
    _common_fields(req, request_id, sampling, chat_template)
    _tools(req, p)
    if p.parts:
        req.parts.extend(part.to_proto() for part in p.parts)
    for m in p.messages:
        msg = req.messages.add()
        m._fill(msg)
        msg.parts.extend(part.to_proto() for part in m.parts)
    return req


def _tools(msg: pb.GenerateRequest | pb.StreamGenerateHeader, p: Prompt) -> None:
    msg.tools.extend(t.to_proto() for t in p.tools)
    if p.tool_choice is not None:
        msg.tool_choice.CopyFrom(p.tool_choice.to_proto())


def build_stream_header(
    prompt: PromptLike,
    *,
    sampling: Sampling | None = None,
    request_id: str | None = None,
    chat_template: ChatTemplate | None = None,
) -> pb.StreamGenerateHeader:
    """The StreamGenerate header: text inline, media declared with their sizes."""
    p = Prompt.of(prompt)
    header = pb.StreamGenerateHeader()
    _common_fields(header, request_id, sampling, chat_template)
    _tools(header, p)
    if p.parts:
        header.parts.extend(part.declare() for part in p.parts)
    for m in p.messages:
        msg = header.messages.add()
        m._fill(msg)
        msg.parts.extend(part.declare() for part in m.parts)
    return header


def iter_stream_chunks(
    prompt: PromptLike,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    sampling: Sampling | None = None,
    request_id: str | None = None,
    chat_template: ChatTemplate | None = None,
) -> Iterator[pb.GenerateChunk]:
    """The StreamGenerate client messages: header, each media part's chunks in order
    (contiguous, the last one flagged), then End. File payloads are read lazily, but the
    prompt, options and chunk size are validated now, before anything is sent."""
    if chunk_size <= 0:
        raise InvalidArgument(f"chunk_size must be > 0, got {chunk_size}")
    p = Prompt.of(prompt)
    header = build_stream_header(p, sampling=sampling, request_id=request_id, chat_template=chat_template)
    return _stream_chunks(p, header, chunk_size)


def _stream_chunks(p: Prompt, header: pb.StreamGenerateHeader, chunk_size: int) -> Iterator[pb.GenerateChunk]:
    yield pb.GenerateChunk(header=header)
    for index, part in enumerate(p.flat_parts()):
        if not part.is_media:
            continue
        pending: bytes | None = None
        # One chunk of look-ahead so the final data chunk carries `last` itself.
        for data in part.iter_payload(chunk_size):
            if pending is not None:
                yield pb.GenerateChunk(media=pb.MediaChunk(part_index=index, data=pending))
            pending = data
        yield pb.GenerateChunk(media=pb.MediaChunk(part_index=index, data=pending or b"", last=True))
    yield pb.GenerateChunk(end=pb.End())
