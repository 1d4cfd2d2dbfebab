"""Validation of an inference request, before any byte of media is decoded.

Both RPCs end up here: ``Generate`` sends the whole ``GenerateRequest``; ``StreamGenerate``
sends its header first, and :class:`ValidatedRequest` is built from the header with the
media payloads still missing, so a bad request is refused before its bytes are uploaded.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf.json_format import MessageToDict

from model.prompt import check_template_kwargs
from nanovl.errors import InvalidArgument
from nanovl.modalities import Modality
from nanovl.v1 import inference_pb2 as pb
from service.part_decoding import payload_size
from service.sampling import to_sampling_params
from service.settings import ServerSettings

if TYPE_CHECKING:
    from model.prompt import AssembledPrompt, ChatRenderer, TemplateJob
    from service.part_decoding import DecodedPart

MEDIA_KINDS: Mapping[str, Modality] = {"image": "image", "video": "video", "audio": "audio"}


MAX_REQUEST_ID_CHARS = 256


@dataclass(frozen=True)
class ValidatedRequest:
    # The caller's id (or a generated one), echoed in responses, logs and spans.
    request_id: str
    # Every content part, in order (across messages for chat requests).
    parts: tuple[pb.ContentPart, ...]
    # Chat requests: (role, number of parts) per message. Raw-parts requests: None.
    messages: tuple[tuple[str, int], ...] | None
    add_generation_prompt: bool
    chat_template_kwargs: Mapping[str, Any]
    sampling: Any  # vllm.SamplingParams
    item_counts: Mapping[Modality, int] = field(default_factory=dict)
    # The engine's id for this call alone: the caller's id need not be unique, and vLLM
    # aborts every engine request mapped to an id, so two calls never share one.
    engine_request_id: str = ""

    @property
    def media_indices(self) -> tuple[int, ...]:
        return tuple(i for i, p in enumerate(self.parts) if p.WhichOneof("kind") in MEDIA_KINDS)

    def modality_label(self) -> str:
        """One label for metrics: the single modality, "mixed", or "text"."""
        present = [m for m in ("image", "video", "audio") if self.item_counts.get(m)]
        return present[0] if len(present) == 1 else ("mixed" if present else "text")


def _check_part(i: int, part: pb.ContentPart, *, payload_expected: bool) -> None:
    kind = part.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(f"parts[{i}] is empty: set one of text, image, video, audio")
    if not payload_expected:
        # StreamGenerate: bytes travel in MediaChunks only; bytes in the header would be
        # silently replaced by the upload.
        if payload_size(part):
            raise InvalidArgument(
                f"parts[{i}] ({kind}) carries media bytes inside the StreamGenerate header; "
                "declare the part there and send its bytes in MediaChunks"
            )
        return
    if kind == "image" and not part.image.data:
        raise InvalidArgument(f"parts[{i}] (image) has no bytes")
    if kind == "video":
        source = part.video.WhichOneof("source")
        if (
            source is None
            or (source == "encoded" and not part.video.encoded)
            or (source == "raw_frames" and not part.video.raw_frames.rgb24)
        ):
            raise InvalidArgument(f"parts[{i}] (video) has no bytes: set encoded or raw_frames")
    if kind == "audio":
        source = part.audio.WhichOneof("source")
        if (
            source is None
            or (source == "encoded" and not part.audio.encoded)
            or (source == "pcm" and not part.audio.pcm.data)
        ):
            raise InvalidArgument(f"parts[{i}] (audio) has no bytes: set encoded or pcm")


def validate(
    *,
    request_id: str | None,
    parts: Sequence[pb.ContentPart],
    messages: Sequence[tuple[str, Sequence[pb.ContentPart]]],
    chat_template: pb.ChatTemplateOptions,
    sampling: pb.SamplingOptions,
    settings: ServerSettings,
    limits: Mapping[Modality, int],
    vocab_size: int,
    payload_expected: bool,
) -> ValidatedRequest:
    if bool(parts) == bool(messages):
        raise InvalidArgument(
            "set exactly one of parts (raw prompt) or messages (chat); "
            f"got {len(parts)} parts and {len(messages)} messages"
        )
    if messages:
        flat = [p for _, ps in messages for p in ps]
        layout: tuple[tuple[str, int], ...] | None = tuple((role, len(ps)) for role, ps in messages)
    else:
        flat, layout = list(parts), None
    counts: dict[Modality, int] = {}
    for i, part in enumerate(flat):
        _check_part(i, part, payload_expected=payload_expected)
        kind = part.WhichOneof("kind")
        if kind in MEDIA_KINDS:
            counts[MEDIA_KINDS[kind]] = counts.get(MEDIA_KINDS[kind], 0) + 1
    for modality, count in counts.items():
        limit = limits.get(modality)
        if limit is None or limit == 0:
            enabled = ", ".join(m for m, n in limits.items() if n) or "none"
            raise InvalidArgument(f"this server does not accept {modality} input (enabled modalities: {enabled})")
        if count > limit:
            raise InvalidArgument(
                f"{count} {modality} items in one prompt, but this server allows at most {limit} "
                "(--limit-mm-per-prompt); split the request or send fewer items"
            )
    kwargs = MessageToDict(chat_template.chat_template_kwargs) if chat_template.HasField("chat_template_kwargs") else {}
    if messages:
        check_template_kwargs(kwargs, allow_request_template=settings.allow_request_chat_template)
    if request_id is not None and (len(request_id) > MAX_REQUEST_ID_CHARS or not request_id.isprintable()):
        raise InvalidArgument(
            f"request_id must be at most {MAX_REQUEST_ID_CHARS} printable characters, got {len(request_id)} characters"
        )
    client_id = request_id or f"nvl-{uuid.uuid4().hex}"
    return ValidatedRequest(
        request_id=client_id,
        engine_request_id=f"{client_id}-{uuid.uuid4().hex[:12]}",
        parts=tuple(flat),
        messages=layout,
        add_generation_prompt=chat_template.add_generation_prompt
        if chat_template.HasField("add_generation_prompt")
        else True,
        chat_template_kwargs=kwargs,
        sampling=to_sampling_params(sampling, default_max_tokens=settings.default_max_tokens, vocab_size=vocab_size),
        item_counts=counts,
    )


def from_generate_request(req: pb.GenerateRequest, **kw: Any) -> ValidatedRequest:
    return validate(
        request_id=req.request_id if req.HasField("request_id") else None,
        parts=list(req.parts),
        messages=[(m.role, list(m.parts)) for m in req.messages],
        chat_template=req.chat_template,
        sampling=req.sampling,
        payload_expected=True,
        **kw,
    )


def from_stream_header(header: pb.StreamGenerateHeader, **kw: Any) -> ValidatedRequest:
    return validate(
        request_id=header.request_id if header.HasField("request_id") else None,
        parts=[d.part for d in header.parts],
        messages=[(m.role, [d.part for d in m.parts]) for m in header.messages],
        chat_template=header.chat_template,
        sampling=header.sampling,
        payload_expected=False,
        **kw,
    )


def declared_sizes(header: pb.StreamGenerateHeader) -> list[int | None]:
    declared = list(header.parts) or [d for m in header.messages for d in m.parts]
    return [d.size_bytes if d.HasField("size_bytes") else None for d in declared]


def with_payload(part: pb.ContentPart, payload: bytes) -> pb.ContentPart:
    """A declared media part with its uploaded bytes filled in."""
    filled = pb.ContentPart()
    filled.CopyFrom(part)
    kind = part.WhichOneof("kind")
    if kind == "image":
        filled.image.data = payload
    elif kind == "video":
        if part.video.WhichOneof("source") == "raw_frames":
            filled.video.raw_frames.rgb24 = payload
        else:
            filled.video.encoded = payload
    elif kind == "audio":
        if part.audio.WhichOneof("source") == "pcm":
            filled.audio.pcm.data = payload
        else:
            filled.audio.encoded = payload
    else:
        raise InvalidArgument("only image, video and audio parts carry uploaded bytes")
    return filled


def _parts(req: ValidatedRequest, decoded: Mapping[int, DecodedPart]) -> list[Any]:
    from model.prompt import TextPart

    return [decoded[i].part if i in decoded else TextPart(p.text) for i, p in enumerate(req.parts)]


def _messages(req: ValidatedRequest, decoded: Mapping[int, DecodedPart], chat: ChatRenderer | None) -> list[Any]:
    from model.prompt import Message

    if chat is None:
        raise InvalidArgument("this checkpoint has no chat template; send raw parts instead of messages")
    parts, messages, offset = _parts(req, decoded), [], 0
    for role, n in req.messages or ():
        messages.append(Message(role, tuple(parts[offset : offset + n])))
        offset += n
    return messages


def has_request_template(req: ValidatedRequest) -> bool:
    """The request brings its own chat template (rendered in the sandbox, if allowed)."""
    from model.prompt import REQUEST_TEMPLATE_KEY

    return req.messages is not None and REQUEST_TEMPLATE_KEY in req.chat_template_kwargs


def chat_job(
    req: ValidatedRequest, decoded: Mapping[int, DecodedPart], chat: ChatRenderer | None
) -> tuple[TemplateJob, Mapping[Modality, tuple[Any, ...]]]:
    """A chat request's template render job and its media, for rendering elsewhere."""
    return chat.job(  # type: ignore[union-attr]  # _messages checked it
        _messages(req, decoded, chat),
        add_generation_prompt=req.add_generation_prompt,
        chat_template_kwargs=req.chat_template_kwargs,
    )


def assemble_prompt(
    req: ValidatedRequest, decoded: Mapping[int, DecodedPart], chat: ChatRenderer | None
) -> AssembledPrompt:
    """The validated request with its decoded media → the model's prompt (raw, or chat
    with the checkpoint's template rendered in this thread)."""
    from model.prompt import assemble_raw

    if req.messages is None:
        return assemble_raw(_parts(req, decoded))
    return chat.render(  # type: ignore[union-attr]  # _messages checked it
        _messages(req, decoded, chat),
        add_generation_prompt=req.add_generation_prompt,
        chat_template_kwargs=req.chat_template_kwargs,
    )
