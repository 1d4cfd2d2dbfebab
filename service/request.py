"""Validation of an inference request, before any byte of media is decoded.

Both RPCs end up here: ``Generate`` sends the whole ``GenerateRequest``; ``StreamGenerate``
sends its header first, and :class:`ValidatedRequest` is built from the header with the
media payloads still missing, so a bad request is refused before its bytes are uploaded.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict

from model.prompt import ROLES, ToolCallTurn, check_template_kwargs, check_text
from nanovl.errors import InvalidArgument, echo
from nanovl.modalities import Modality
from nanovl.v1 import inference_pb2 as pb
from service.output_parsing import (
    NO_TOOL_PARSER,
    ChatOptions,
    OutputParsers,
    RequestParsing,
    check_tool_name,
    parse_tools,
    tool_choice_value,
)
from service.part_decoding import payload_size
from service.sampling import structured_outputs_of, to_sampling_params
from service.settings import ServerSettings

if TYPE_CHECKING:
    from model.prompt import AssembledPrompt, ChatRenderer, TemplateJob
    from service.part_decoding import DecodedPart

MEDIA_KINDS: Mapping[str, Modality] = {"image": "image", "video": "video", "audio": "audio"}


MAX_REQUEST_ID_CHARS = 256
# A tool call's id as sent back in the history (vLLM's make_tool_call_id: 46 characters;
# OpenAI's: about 30); the bound only keeps a client's id out of the prompt's way.
MAX_TOOL_CALL_ID_CHARS = 256
# The template variable that switches reasoning on and off (Nemotron 3, Qwen3, ...).
ENABLE_THINKING = "enable_thinking"


@dataclass(frozen=True)
class MessageIn:
    """One chat message as received (either RPC), before validation."""

    role: str
    parts: Sequence[pb.ContentPart]
    tool_calls: Sequence[pb.ToolCall] = ()
    tool_call_id: str = ""
    reasoning_text: str = ""


@dataclass(frozen=True)
class ChatTurn:
    """A validated chat message: its role, how many of the request's parts it holds, and
    its tool-call fields (see ``Message`` in inference.proto)."""

    role: str
    num_parts: int
    tool_calls: tuple[ToolCallTurn, ...] = ()
    tool_call_id: str | None = None
    reasoning: str | None = None


@dataclass(frozen=True)
class ValidatedRequest:
    # The caller's id (or a generated one), echoed in responses, logs and spans.
    request_id: str
    # Every content part, in order (across messages for chat requests).
    parts: tuple[pb.ContentPart, ...]
    # Chat requests: one turn per message. Raw-parts requests: None.
    messages: tuple[ChatTurn, ...] | None
    add_generation_prompt: bool
    chat_template_kwargs: Mapping[str, Any]
    sampling: Any  # vllm.SamplingParams
    item_counts: Mapping[Modality, int] = field(default_factory=dict)
    # The engine's id for this call alone: the caller's id need not be unique, and vLLM
    # aborts every engine request mapped to an id, so two calls never share one.
    engine_request_id: str = ""
    # Chat requests on a server with parsers: vLLM's parser for this request's output
    # (reasoning split, tool calls). None: the output is returned as generated.
    parsing: RequestParsing | None = None

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


def _tool_calls(where: str, calls: Sequence[pb.ToolCall]) -> tuple[ToolCallTurn, ...]:
    """An assistant message's calls checked: ids non-empty, printable, at most
    ``MAX_TOOL_CALL_ID_CHARS`` and unique within the message (a tool result names its call
    by id, so two calls with one id could not be told apart); names by the rule for
    declared tools (``check_tool_name``); arguments a JSON object. The name need not be
    one of the request's tools, and history calls need no tools declared: an OpenAI-style
    history keeps calls to tools the request no longer offers (vLLM accepts them too)."""
    out = []
    ids: set[str] = set()
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        if not call.id:
            raise InvalidArgument(f"{at}.id is empty: send the id the call was returned with")
        if len(call.id) > MAX_TOOL_CALL_ID_CHARS:
            raise InvalidArgument(
                f"{at}.id is {len(call.id)} characters; at most {MAX_TOOL_CALL_ID_CHARS} are accepted "
                "(send the id the call was returned with)"
            )
        if bad := next((c for c in call.id if not c.isprintable()), None):
            raise InvalidArgument(
                f"{at}.id {echo(call.id)} holds the non-printable character U+{ord(bad):04X}; "
                "send the id the call was returned with"
            )
        if call.id in ids:
            raise InvalidArgument(
                f"{at}.id {echo(call.id)} is also the id of an earlier call in this message; "
                "each call needs its own id (a tool result names its call by id)"
            )
        ids.add(call.id)
        check_tool_name(f"{at}.name", call.name)
        try:
            arguments = json.loads(call.arguments) if call.arguments else {}
        except (ValueError, RecursionError) as e:
            raise InvalidArgument(f"{at}.arguments is not JSON: {e}") from None
        if not isinstance(arguments, dict):
            raise InvalidArgument(f"{at}.arguments must be a JSON object, got {type(arguments).__name__}")
        check_text(call.id + call.name + call.arguments)  # the template writes them into the prompt
        out.append(ToolCallTurn(id=call.id, name=call.name, arguments=arguments))
    return tuple(out)


def _chat_turns(messages: Sequence[MessageIn]) -> tuple[ChatTurn, ...]:
    """Roles and tool-call fields checked before any media is decoded (OpenAI's rules: a
    tool result answers an earlier assistant call by its id)."""
    turns = []
    call_ids: dict[str, int] = {}  # call id -> the assistant message that made it
    answered: dict[str, int] = {}  # call id -> the tool message that answered it
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if m.role not in ROLES:
            raise InvalidArgument(f"{where}.role is {echo(m.role)}; expected one of {', '.join(ROLES)}")
        if m.tool_calls and m.role != "assistant":
            raise InvalidArgument(f"{where} ({m.role}) has tool_calls; only assistant messages make tool calls")
        if m.reasoning_text and m.role != "assistant":
            raise InvalidArgument(f"{where} ({m.role}) has reasoning_text; only assistant messages reason")
        if m.role == "tool":
            if not m.tool_call_id:
                raise InvalidArgument(
                    f"{where} (tool) has no tool_call_id: set it to the id of the call whose result it carries"
                )
            if m.tool_call_id not in call_ids:
                raise InvalidArgument(
                    f"{where}.tool_call_id {echo(m.tool_call_id)} answers no tool call of an earlier "
                    "assistant message; send the assistant message with its tool_calls before the results"
                )
            if m.tool_call_id in answered:
                raise InvalidArgument(
                    f"{where}.tool_call_id {echo(m.tool_call_id)} was already answered by "
                    f"messages[{answered[m.tool_call_id]}]; send one tool result per call"
                )
            answered[m.tool_call_id] = i
            if kinds := sorted({p.WhichOneof("kind") or "empty" for p in m.parts} - {"text"}):
                raise InvalidArgument(f"{where} (tool) has {', '.join(kinds)} parts; a tool result is text only")
        elif m.tool_call_id:
            raise InvalidArgument(f"{where} ({m.role}) has a tool_call_id; only tool messages answer tool calls")
        check_text(m.tool_call_id + m.reasoning_text)
        calls = _tool_calls(where, m.tool_calls)
        for j, c in enumerate(calls):
            if c.id in call_ids:
                raise InvalidArgument(
                    f"{where}.tool_calls[{j}].id {echo(c.id)} is also the id of a call in "
                    f"messages[{call_ids[c.id]}]; each call needs its own id (a tool result names its call by id)"
                )
            call_ids[c.id] = i
        turns.append(
            ChatTurn(
                role=m.role,
                num_parts=len(m.parts),
                tool_calls=calls,
                tool_call_id=m.tool_call_id or None,
                reasoning=m.reasoning_text or None,
            )
        )
    return tuple(turns)


def _openai_messages(messages: Sequence[MessageIn], turns: Sequence[ChatTurn]) -> list[dict[str, Any]]:
    """The messages as vLLM's ``ChatCompletionRequest`` holds them, text only (media are
    rendered by nanovl; the parsers read no message content)."""
    out = []
    for m, turn in zip(messages, turns, strict=True):
        msg: dict[str, Any] = {"role": m.role, "content": "".join(p.text for p in m.parts if p.HasField("text"))}
        if turn.tool_calls:
            msg["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in turn.tool_calls
            ]
        if turn.tool_call_id:
            msg["tool_call_id"] = turn.tool_call_id
        out.append(msg)
    return out


def _check_chat_only(chat_template: pb.ChatTemplateOptions, sampling: pb.SamplingOptions, tools: Any, choice: Any):
    """Options a raw-parts prompt would ignore (no template renders it, no parser reads its
    output): every ``ChatTemplateOptions`` field, tools, tool_choice and the thinking
    budget are INVALID_ARGUMENT there, naming them, rather than dropped without a word."""
    asked = [
        name
        for name, present in (
            ("tools", bool(tools)),
            ("tool_choice", choice is not None),
            ("chat_template.enable_thinking", chat_template.HasField("enable_thinking")),
            ("chat_template.chat_template_kwargs", chat_template.HasField("chat_template_kwargs")),
            ("chat_template.add_generation_prompt", chat_template.HasField("add_generation_prompt")),
            ("sampling.thinking_token_budget", sampling.HasField("thinking_token_budget")),
        )
        if present
    ]
    if asked:
        raise InvalidArgument(
            f"{', '.join(asked)} apply to chat messages only; a raw-parts prompt is used verbatim. "
            "Send the prompt as messages"
        )


def _thinking(
    chat_template: pb.ChatTemplateOptions,
    sampling: pb.SamplingOptions,
    kwargs: dict[str, Any],
    parsers: OutputParsers,
) -> None:
    """Map ChatTemplateOptions.enable_thinking into the template kwargs. ``InvalidArgument``
    for thinking options on a server whose model output has no reasoning parser, and for
    options that contradict each other or cannot be read one way:

    - ``chat_template_kwargs.enable_thinking`` that is not a JSON boolean ("yes", 1, null):
      vLLM's ``NemotronV3Parser.__init__`` takes its truthiness for the parser's mode
      (``chat_template_kwargs.get("enable_thinking", True)``) while
      ``NemotronV3Parser._should_force_content`` tests ``is False``, and a Jinja template
      may test ``is defined``, truthiness or ``== false``;
    - ``chat_template.enable_thinking`` different from ``chat_template_kwargs.enable_thinking``;
    - ``sampling.thinking_token_budget`` with thinking off: the template closes the
      thinking in the prompt, and vLLM's budget counts only inside a ``<think>`` the prompt
      leaves open (``ThinkingBudgetState._init_state_entry``), so it would do nothing."""
    for name, present in (
        ("chat_template.enable_thinking", chat_template.HasField("enable_thinking")),
        ("sampling.thinking_token_budget", sampling.HasField("thinking_token_budget")),
    ):
        if present and not parsers.reasoning:
            raise InvalidArgument(
                f"{name} needs a reasoning model: this server has no reasoning parser (it was started without "
                "--reasoning-parser, which Nemotron 3 checkpoints get by default); remove the option"
            )
    if ENABLE_THINKING in kwargs and not isinstance(kwargs[ENABLE_THINKING], bool):
        given = kwargs[ENABLE_THINKING]
        shown = json.dumps(given)
        shown = shown if len(shown) <= 80 else shown[:80] + "..."
        raise InvalidArgument(
            f"chat_template.chat_template_kwargs.enable_thinking is {shown} "
            f"({_json_type(given)}); it must be true or false (or leave it out and set "
            "chat_template.enable_thinking): the reasoning parser and the chat template could each read "
            "another value differently"
        )
    if chat_template.HasField("enable_thinking"):
        given = kwargs.get(ENABLE_THINKING)
        if given is not None and given != chat_template.enable_thinking:
            raise InvalidArgument(
                f"chat_template.enable_thinking is {chat_template.enable_thinking} but "
                f"chat_template_kwargs.enable_thinking is {given!r}; set one of them"
            )
        kwargs[ENABLE_THINKING] = chat_template.enable_thinking
    if sampling.HasField("thinking_token_budget") and kwargs.get(ENABLE_THINKING) is False:
        where = (
            "chat_template.enable_thinking"
            if chat_template.HasField("enable_thinking")
            else "chat_template.chat_template_kwargs.enable_thinking"
        )
        raise InvalidArgument(
            f"sampling.thinking_token_budget is {sampling.thinking_token_budget} but {where} is false: with "
            "thinking off the prompt closes the thinking before generation, so a budget would have no "
            "effect; remove sampling.thinking_token_budget or turn thinking on"
        )


def _json_type(value: Any) -> str:
    """JSON's name for a ``MessageToDict`` value's type (the client wrote JSON, not Python)."""
    if value is None:
        return "JSON null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _check_constraint_and_tool_choice(sampling: pb.SamplingOptions, choice: str | dict[str, Any] | None) -> None:
    """A structured output with tool_choice required or a named function is refused: the
    tool choice constrains the whole output to the tool-call format, and vLLM then drops
    the client's constraint with only a server log line (``DelegatingParser._apply_structural_tag``:
    "structured outputs are ignored because tool_choice forces tool call"; vLLM's
    ``ChatCompletionRequest.check_structured_outputs_count`` already refuses json, regex and
    choice with a named function: "either use constraints for structured outputs or tools,
    not both"). tool_choice auto and none keep the constraint (auto: an answer that is not
    a call follows it), so they combine with one."""
    kind = sampling.structured_output.WhichOneof("constraint") if sampling.HasField("structured_output") else None
    if kind is None or choice is None or choice in ("auto", "none"):
        return
    forced = (
        "tool_choice.mode REQUIRED"
        if choice == "required"
        else f"tool_choice.function_name {echo(choice['function']['name'])}"  # type: ignore[index]
    )
    raise InvalidArgument(
        f"sampling.structured_output.{kind} and {forced} cannot be combined: that tool choice constrains "
        "the output to the tool-call format, which replaces the structured output; remove one of them, or "
        "use tool_choice auto (the structured output then constrains an answer that is not a tool call)"
    )


def _struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """``chat_template_kwargs`` as the template sees it (JSON values). A Struct holds JSON
    values only: anything else in its bytes (a protobuf group, an unknown field number) was
    written by no protobuf encoder, would be dropped on the way to the template, and is
    refused as groups are everywhere else in the request (verify-10e D5). Checked in C
    (upb's ``DiscardUnknownFields`` at every depth), not by a walk of up to
    ``RequestLimits.max_template_kwargs_bytes`` in Python."""
    clean = struct_pb2.Struct()
    clean.CopyFrom(struct)
    clean.DiscardUnknownFields()
    if clean.ByteSize() != struct.ByteSize():
        raise InvalidArgument(
            "chat_template.chat_template_kwargs holds bytes that are not a google.protobuf.Struct "
            "(a protobuf group or an unknown field number inside it); send JSON values only"
        )
    return MessageToDict(clean)


def _count_media(
    flat: Sequence[pb.ContentPart], *, payload_expected: bool, audio_in_video: bool
) -> dict[Modality, int]:
    counts: dict[Modality, int] = {}
    for i, part in enumerate(flat):
        _check_part(i, part, payload_expected=payload_expected)
        kind = part.WhichOneof("kind")
        if kind in MEDIA_KINDS:
            counts[MEDIA_KINDS[kind]] = counts.get(MEDIA_KINDS[kind], 0) + 1
        if kind == "video" and part.video.HasField("use_audio_in_video") and part.video.use_audio_in_video:
            if not audio_in_video:
                raise InvalidArgument(
                    f"parts[{i}] (video) sets use_audio_in_video, but this server gives the model no audio "
                    "(its checkpoint has no audio encoder, or audio is disabled); leave it unset"
                )
            if part.video.WhichOneof("source") == "raw_frames":
                raise InvalidArgument(
                    f"parts[{i}] (video) sets use_audio_in_video on raw frames, which carry no audio track; "
                    "send the encoded video, or an Audio part beside the frames"
                )
            # Its track is one more audio item (the server's default may add more; the
            # engine counts those after decoding).
            counts["audio"] = counts.get("audio", 0) + 1
    return counts


def validate(
    *,
    request_id: str | None,
    parts: Sequence[pb.ContentPart],
    messages: Sequence[MessageIn],
    chat_template: pb.ChatTemplateOptions,
    sampling: pb.SamplingOptions,
    settings: ServerSettings,
    limits: Mapping[Modality, int],
    vocab_size: int,
    payload_expected: bool,
    tools: Sequence[pb.Tool] = (),
    tool_choice: pb.ToolChoice | None = None,
    parsers: OutputParsers | None = None,
    audio_in_video: bool = False,
) -> ValidatedRequest:
    """Every check that needs no media bytes. ``parsers``: the server's vLLM parsers (chat
    requests are parsed with them); ``audio_in_video``: the server can give a video's
    audio track to the model (audio encoder, audio enabled)."""
    if bool(parts) == bool(messages):
        raise InvalidArgument(
            "set exactly one of parts (raw prompt) or messages (chat); "
            f"got {len(parts)} parts and {len(messages)} messages"
        )
    choice = tool_choice_value(tool_choice) if tool_choice is not None else None
    turns: tuple[ChatTurn, ...] | None = None
    if messages:
        turns = _chat_turns(messages)
        flat = [p for m in messages for p in m.parts]
    else:
        _check_chat_only(chat_template, sampling, tools, choice)
        flat = list(parts)
    counts = _count_media(
        flat,
        payload_expected=payload_expected,
        audio_in_video=audio_in_video,
    )
    for modality, count in counts.items():
        limit = limits.get(modality)
        if limit is None or limit == 0:
            enabled = ", ".join(m for m, n in limits.items() if n) or "none"
            raise InvalidArgument(f"this server does not accept {modality} input (enabled modalities: {enabled})")
        if count > limit:
            raise InvalidArgument(
                f"{count} {modality} items in one prompt, but this server allows at most {limit} "
                "(--limit-mm-per-prompt; a video's audio track is an audio item); split the request or send fewer items"
            )
    kwargs = (
        _struct_to_dict(chat_template.chat_template_kwargs) if chat_template.HasField("chat_template_kwargs") else {}
    )
    parsing: RequestParsing | None = None
    structured = structured_outputs_of(sampling)
    if messages:
        check_template_kwargs(kwargs, allow_request_template=settings.allow_request_chat_template)
        parsers = parsers or OutputParsers.none()
        _thinking(chat_template, sampling, kwargs, parsers)
        _check_constraint_and_tool_choice(sampling, choice)
        if tools and choice != "none" and not parsers.tools:
            raise InvalidArgument(NO_TOOL_PARSER)  # before any work on the schemas
        tool_dicts = parse_tools(tools) if tools else None
        if tool_dicts is not None:
            if "tools" in kwargs:
                raise InvalidArgument("send tools either as the tools field or in chat_template_kwargs.tools, not both")
            check_text(json.dumps(tool_dicts))
        assert turns is not None
        # Without parsers, tools or a tool choice there is nothing for vLLM's request to check.
        if tool_dicts is not None or choice is not None or parsers.config.any:
            parsing = parsers.for_request(
                ChatOptions(
                    messages=_openai_messages(messages, turns),
                    tools=tool_dicts,
                    tool_choice=choice,
                    chat_template_kwargs=kwargs,
                    structured_outputs=structured,
                )
            )
            if tool_dicts is not None:
                # Rendered as vLLM renders them (ChatCompletionToolsParam.model_dump).
                kwargs["tools"] = [t.model_dump() for t in parsing.request.tools or ()]
            structured = parsing.structured_outputs
            if parsing.parser is None:
                parsing = None  # nothing to parse: the output is the answer
            else:
                _check_detokenize(sampling, parsing, kwargs)
    if request_id is not None:
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidArgument(
                f"request_id is {len(request_id)} characters; at most {MAX_REQUEST_ID_CHARS} are accepted"
            )
        if bad := next((c for c in request_id if not c.isprintable()), None):
            raise InvalidArgument(
                f"request_id {echo(request_id)} holds the non-printable character U+{ord(bad):04X}; "
                "use printable characters only (no control characters, newlines or tabs)"
            )
    client_id = request_id or f"nvl-{uuid.uuid4().hex}"
    return ValidatedRequest(
        request_id=client_id,
        engine_request_id=f"{client_id}-{uuid.uuid4().hex[:12]}",
        parts=tuple(flat),
        messages=turns,
        add_generation_prompt=chat_template.add_generation_prompt
        if chat_template.HasField("add_generation_prompt")
        else True,
        chat_template_kwargs=kwargs,
        sampling=to_sampling_params(
            sampling,
            default_max_tokens=settings.default_max_tokens,
            vocab_size=vocab_size,
            structured_outputs=structured,
        ),
        item_counts=counts,
        parsing=parsing,
    )


def _check_detokenize(sampling: pb.SamplingOptions, parsing: RequestParsing, kwargs: Mapping[str, Any]) -> None:
    """``sampling.detokenize`` false where the output is parsed: vLLM's reasoning and tool
    parsers read the generated text (``Parser.parse_delta``), so without it tool calls and
    the reasoning split would silently vanish (verify-14c D2). INVALID_ARGUMENT."""
    if not sampling.HasField("detokenize") or sampling.detokenize:
        return
    needs = []
    request = parsing.request
    if request.tools and request.tool_choice != "none":
        needs.append("tools (tool calls are parsed from the text; or send tool_choice none)")
    if (
        parsing.parser is not None
        and parsing.parser.reasoning_parser is not None
        and kwargs.get(ENABLE_THINKING) is not False
    ):
        needs.append("thinking on (the reasoning is split from the answer in the text; or turn thinking off)")
    if needs:
        raise InvalidArgument(
            "sampling.detokenize is false, but this chat request's output is parsed for "
            + " and ".join(needs)
            + ": keep detokenize on (unset or true)"
        )


def from_generate_request(req: pb.GenerateRequest, **kw: Any) -> ValidatedRequest:
    return validate(
        request_id=req.request_id if req.HasField("request_id") else None,
        parts=list(req.parts),
        messages=[
            MessageIn(m.role, list(m.parts), m.tool_calls, m.tool_call_id, m.reasoning_text) for m in req.messages
        ],
        chat_template=req.chat_template,
        sampling=req.sampling,
        payload_expected=True,
        tools=req.tools,
        tool_choice=req.tool_choice if req.HasField("tool_choice") else None,
        **kw,
    )


def from_stream_header(header: pb.StreamGenerateHeader, **kw: Any) -> ValidatedRequest:
    return validate(
        request_id=header.request_id if header.HasField("request_id") else None,
        parts=[d.part for d in header.parts],
        messages=[
            MessageIn(m.role, [d.part for d in m.parts], m.tool_calls, m.tool_call_id, m.reasoning_text)
            for m in header.messages
        ],
        chat_template=header.chat_template,
        sampling=header.sampling,
        payload_expected=False,
        tools=header.tools,
        tool_choice=header.tool_choice if header.HasField("tool_choice") else None,
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
    for turn in req.messages or ():
        n = turn.num_parts
        messages.append(
            Message(
                turn.role,
                tuple(parts[offset : offset + n]),
                tool_calls=turn.tool_calls,
                tool_call_id=turn.tool_call_id,
                reasoning=turn.reasoning,
            )
        )
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
