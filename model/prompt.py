"""Nemotron Nano VL prompt conventions: ordered content parts → prompt + ``multi_modal_data``.

vLLM's processor for ``NemotronH_Nano_VL_V2`` expands one placeholder per media item
(``<image>``, ``<video>``, ``<so_embedding>``) into the item's tokens, matching the
n-th placeholder of a modality with the n-th item of that modality. This module is
the only place that knows those strings.

A video's audio track (``use_audio_in_video``) is one more audio item whose placeholder
follows the video's: ``<video><so_embedding>``, the prompt vLLM's own
``use_audio_in_video`` builds (``NanoNemotronVLMultiModalProcessor.apply`` inserts the
audio context right after each ``<video>`` of a video with audio).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nanovl.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from nanovl.modalities import MODALITIES, Modality

PLACEHOLDERS: Mapping[Modality, str] = {"image": "<image>", "video": "<video>", "audio": "<so_embedding>"}

# Strings the processor treats as structure. A user's text must not contain them, or
# the count of placeholders would no longer match the count of media items.
RESERVED_STRINGS = ("<image>", "<img>", "</img>", "<video>", "<so_start>", "<so_end>", "<so_embedding>")

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class MediaPart:
    """One media item, already decoded into the object vLLM's ``multi_modal_data`` takes.

    ``audio_track`` (videos only): the clip's audio as an audio item (``(waveform,
    sample_rate)``), given to the model right after the video (``use_audio_in_video``)."""

    modality: Modality
    item: Any
    audio_track: Any = None


ContentPart = TextPart | MediaPart


@dataclass(frozen=True)
class ToolCallTurn:
    """A tool call an assistant turn made, as chat templates take it: ``arguments`` is the
    parsed JSON object (vLLM's ``_postprocess_messages`` hands templates a dict too)."""

    id: str
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True)
class Message:
    role: str
    parts: tuple[ContentPart, ...]
    # assistant: the calls it made; tool: the call it answers; assistant: its reasoning.
    tool_calls: tuple[ToolCallTurn, ...] = ()
    tool_call_id: str | None = None
    reasoning: str | None = None


@dataclass(frozen=True)
class AssembledPrompt:
    prompt: str
    multi_modal_data: Mapping[Modality, tuple[Any, ...]] = field(default_factory=dict)
    # vLLM's ``multi_modal_uuids`` (one identifier per item; None: vLLM hashes the content).
    # Set by the engine for prompts vLLM's processor cache would otherwise count
    # differently (``model.processor_cache``).
    multi_modal_uuids: Mapping[Modality, tuple[str, ...]] | None = None

    @property
    def item_counts(self) -> dict[Modality, int]:
        return {m: len(items) for m, items in self.multi_modal_data.items()}

    def to_vllm(self) -> dict[str, Any]:
        """A vLLM ``TextPrompt``."""
        prompt: dict[str, Any] = {"prompt": self.prompt}
        if self.multi_modal_data:
            prompt["multi_modal_data"] = {m: list(items) for m, items in self.multi_modal_data.items()}
        if self.multi_modal_uuids:
            prompt["multi_modal_uuids"] = {m: list(ids) for m, ids in self.multi_modal_uuids.items()}
        return prompt


def video_item(
    frames: np.ndarray,
    *,
    fps: float,
    frames_indices: Sequence[int],
    total_num_frames: int,
    duration_s: float | None = None,
    backend: str = "nanovl",
) -> tuple[np.ndarray, dict[str, Any]]:
    """A video as this model's processor takes it: frames ``[T,H,W,3] uint8`` plus metadata.

    The processor derives per-frame timestamps from ``fps`` (the SOURCE frame rate) and
    ``frames_indices`` (indices in the source clip); they end up in the prompt as
    "Frame i sampled at t seconds". ``do_sample_frames`` is False: frames are already chosen.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InvalidArgument(f"video frames must be uint8 [T,H,W,3], got {frames.dtype} {list(frames.shape)}")
    if len(frames_indices) != frames.shape[0]:
        raise InvalidArgument(f"video has {frames.shape[0]} frames but {len(frames_indices)} frame indices")
    if fps <= 0:
        raise InvalidArgument(f"video fps must be positive, got {fps}")
    metadata = {
        "fps": float(fps),
        "frames_indices": [int(i) for i in frames_indices],
        "total_num_frames": int(total_num_frames),
        "duration": float(duration_s) if duration_s is not None else float(total_num_frames) / float(fps),
        "video_backend": backend,
        "do_sample_frames": False,
    }
    return frames, metadata


# The processor turns metadata into the prompt's "Frame i sampled at t seconds" text as
# ``int(frames_indices[i]) * int(1000 / fps) / 1000`` (vLLM
# ``transformers_utils/processors/nano_nemotron_vl.py::calculate_timestamps``; the model's
# ``get_video_repl`` rebuilds the same text from the same two fields), and uses ``fps``
# and ``frames_indices`` for nothing else. Source frame indices and the average frame rate
# give false times for variable-frame-rate clips, and ``int(1000 / fps)`` truncates
# (29.97 fps → 33 ms, 2.4 s off after 10 minutes). A millisecond clock makes the formula
# exact: fps = 1000 → frame duration 1 ms, and each "index" is the frame's presentation
# time in milliseconds, so the prompt says each frame's real time (to the 10 ms it prints).
TIMESTAMP_CLOCK_HZ = 1000


def video_item_at_times(
    frames: np.ndarray,
    *,
    timestamps_s: Sequence[float],
    total_num_frames: int,
    duration_s: float,
    backend: str = "nanovl",
) -> tuple[np.ndarray, dict[str, Any]]:
    """A video whose frames are placed at their real presentation times (seconds).

    Same shape contract as :func:`video_item`; the metadata encodes each time as a
    millisecond count on a 1000 Hz clock (see ``TIMESTAMP_CLOCK_HZ``), which this
    model's processor turns back into exactly ``round(t * 1000) / 1000`` seconds.
    """
    if any(not np.isfinite(t) or t < 0 for t in timestamps_s):
        raise InvalidArgument(f"video timestamps must be finite and >= 0, got {list(timestamps_s)[:8]}")
    ms = [round(float(t) * TIMESTAMP_CLOCK_HZ) for t in timestamps_s]
    frames, metadata = video_item(
        frames,
        fps=float(TIMESTAMP_CLOCK_HZ),
        frames_indices=ms,
        total_num_frames=total_num_frames,
        duration_s=duration_s,
        backend=backend,
    )
    return frames, metadata


def check_text(text: str) -> None:
    """Refuse text holding a media placeholder (``InvalidArgument``): it would shift the
    placeholders' matching to media items."""
    for reserved in RESERVED_STRINGS:
        if reserved in text:
            raise InvalidArgument(
                f"text contains the reserved string {reserved!r}, which this model uses to mark media; "
                "send media as image/video/audio parts instead of writing placeholders into text"
            )


def _collect(parts: Sequence[ContentPart], media: dict[Modality, list[Any]]) -> None:
    for part in parts:
        if isinstance(part, TextPart):
            check_text(part.text)
        else:
            media.setdefault(part.modality, []).append(part.item)
            if part.audio_track is not None:
                media.setdefault("audio", []).append(part.audio_track)


def _placeholder(part: MediaPart) -> str:
    return PLACEHOLDERS[part.modality] + (PLACEHOLDERS["audio"] if part.audio_track is not None else "")


def with_video_audio(rendered: str, video_audio: Sequence[bool]) -> str:
    """A rendered chat prompt with an audio placeholder right after the ``<video>`` of each
    video whose audio track goes to the model (``video_audio[i]`` for the i-th video), as
    vLLM's ``use_audio_in_video`` places it. Raises ``InvalidArgument`` when the template
    did not render one ``<video>`` per video."""
    if not any(video_audio):
        return rendered
    tag = PLACEHOLDERS["video"]
    head, *rest = rendered.split(tag)
    if len(rest) != len(video_audio):
        raise InvalidArgument(
            f"the chat template rendered {len(rest)} {tag} placeholders for {len(video_audio)} videos; "
            "cannot place the videos' audio tracks"
        )
    out = [head]
    for has_audio, tail in zip(video_audio, rest, strict=True):
        out.append(tag + (PLACEHOLDERS["audio"] if has_audio else "") + tail)
    return "".join(out)


# Markers the processor writes around what it expands (``<img>…</img>``, the audio's
# ``<so_start>…<so_end>``): a prompt's template never writes them itself.
_EXPANSION_MARKERS = tuple(r for r in RESERVED_STRINGS if r not in PLACEHOLDERS.values())


def check_rendered(prompt: str, media: Mapping[Modality, Sequence[Any]], *, request_template: bool) -> None:
    """Refuse a rendered chat prompt whose media placeholders do not match its media items
    one to one (``InvalidArgument``), the rule ``check_text`` applies to a client's text:
    vLLM's processor expands the n-th ``<image>`` with the n-th image, so a placeholder
    without an item reaches the model as bare image-context tokens, and an item without a
    placeholder is an error deep in the processor. ``media`` holds the items in prompt
    order (a video's audio track among the audio items, its placeholder already added by
    ``with_video_audio``). A per-request template (``request_template``) must also write
    none of the processor's expansion markers (``<img>``, ``<so_start>``, …); the
    checkpoint's own template is trusted with them."""
    for modality, tag in PLACEHOLDERS.items():
        items, found = len(media.get(modality, ())), prompt.count(tag)
        if found != items:
            whose = "the request's chat template" if request_template else "the checkpoint's chat template"
            raise InvalidArgument(
                f"{whose} rendered {found} {tag} placeholders for {items} {modality} items: every {modality} "
                f"part needs exactly one, and a template may not write them for media the request does not send"
            )
    if request_template and (markers := [m for m in _EXPANSION_MARKERS if m in prompt]):
        raise InvalidArgument(
            f"the request's chat template rendered {', '.join(markers)}, which this model's processor writes "
            "around media it expands; a template may write only one placeholder per media part"
        )


def _freeze(media: dict[Modality, list[Any]]) -> dict[Modality, tuple[Any, ...]]:
    return {m: tuple(media[m]) for m in MODALITIES if m in media}


def assemble_raw(parts: Sequence[ContentPart]) -> AssembledPrompt:
    """Parts used as the prompt as-is (no chat template): text verbatim, media as placeholders."""
    if not parts:
        raise InvalidArgument("the prompt is empty: send at least one text or media part")
    media: dict[Modality, list[Any]] = {}
    _collect(parts, media)
    prompt = "".join(p.text if isinstance(p, TextPart) else _placeholder(p) for p in parts)
    return AssembledPrompt(prompt=prompt, multi_modal_data=_freeze(media))


# apply_chat_template's own parameters and the variables render_jinja_template sets
# itself (transformers.utils.chat_template_utils): a client's chat_template_kwargs may not
# name them (a duplicate keyword is a TypeError deep inside transformers).
RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "conversation",
        "conversations",
        "messages",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
    }
)
REQUEST_TEMPLATE_KEY = "chat_template"


# What to use instead of a reserved chat_template_kwargs key, where the API has a field for it.
_RESERVED_HINTS = {
    "add_generation_prompt": "use ChatTemplateOptions.add_generation_prompt for add_generation_prompt",
    "messages": "send the conversation as GenerateRequest.messages",
    "conversation": "send the conversation as GenerateRequest.messages",
}


def _json_kind(value: Any) -> str:
    """A JSON value's kind, as a message names it ("a string", "a number", "an object")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def check_template_kwargs(kwargs: Mapping[str, Any], *, allow_request_template: bool) -> None:
    """Refuse ``chat_template_kwargs`` the renderer cannot take: reserved names, ``tools``
    and ``documents`` not shaped as lists of objects, and a per-request template unless the
    server allows one. Raises ``InvalidArgument`` (``PermissionDenied`` for the template)."""
    if bad := sorted(RESERVED_TEMPLATE_KWARGS.intersection(kwargs)):
        hints = [hint for key, hint in _RESERVED_HINTS.items() if key in bad]
        raise InvalidArgument(
            f"chat_template_kwargs may not set {', '.join(bad)}: the server sets "
            f"{'it' if len(bad) == 1 else 'them'}{'; ' + '; '.join(hints) if hints else ''}"
        )
    for key, what in (("tools", "tool definitions"), ("documents", "documents")):
        value = kwargs.get(key)
        if value is None:
            continue
        if not isinstance(value, list):
            raise InvalidArgument(
                f"chat_template_kwargs.{key} must be a list of objects ({what}), got {_json_kind(value)}"
            )
        if (i := next((i for i, v in enumerate(value) if not isinstance(v, dict)), None)) is not None:
            raise InvalidArgument(
                f"chat_template_kwargs.{key} must be a list of objects ({what}); item {i} is {_json_kind(value[i])}"
            )
    if REQUEST_TEMPLATE_KEY in kwargs:
        if not isinstance(kwargs[REQUEST_TEMPLATE_KEY], str):
            raise InvalidArgument("chat_template_kwargs.chat_template must be a string (a Jinja template)")
        if not allow_request_template:
            raise PermissionDenied(
                "this server does not accept per-request chat templates (chat_template_kwargs.chat_template); "
                "remove it to use the checkpoint's template, or ask the operator for --allow-request-chat-template"
            )


@dataclass(frozen=True)
class TemplateJob:
    """Everything a chat template render needs, as plain data (it crosses into the
    sandbox process for per-request templates): the arguments of transformers'
    ``render_jinja_template``."""

    template: str
    conversation: list[dict[str, Any]]
    add_generation_prompt: bool
    tools: list[dict[str, Any]] | None
    documents: list[dict[str, Any]] | None
    variables: dict[str, Any]  # special tokens, then the request's own kwargs
    # Per video, in prompt order: its audio track follows it (see with_video_audio).
    video_audio: tuple[bool, ...] = ()

    def finish(self, rendered: str) -> str:
        """The rendered template as the prompt: the videos' audio placeholders added."""
        return with_video_audio(rendered, self.video_audio)


def render_template(job: TemplateJob) -> str:
    """Render ``job`` exactly as ``tokenizer.apply_chat_template(tokenize=False)`` would
    (same function, same sandboxed Jinja environment). A template that fails — a Jinja
    error, ``raise_exception(...)``, a type error on the client's values — is the
    request's fault: ``InvalidArgument`` with the template's own message."""
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template(
            conversations=[job.conversation],
            tools=job.tools,
            documents=job.documents,
            chat_template=job.template,
            add_generation_prompt=job.add_generation_prompt,
            **job.variables,
        )
    except RecursionError:
        raise InvalidArgument("the chat template recursed too deeply for these messages") from None
    except MemoryError:
        raise ResourceExhausted("the chat template needed more memory than this server allows") from None
    except Exception as exc:
        raise InvalidArgument(f"the chat template failed for these messages: {type(exc).__name__}: {exc}") from None
    return rendered[0]


class ChatRenderer:
    """Renders messages with a checkpoint's chat template.

    Owns its own tokenizer instance and only uses its Jinja rendering
    (``tokenize=False``): the Rust tokenizer is never touched here, so this is safe
    to call from worker threads while vLLM tokenizes elsewhere.
    """

    def __init__(self, model_path: str, *, trust_remote_code: bool = True) -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        if not getattr(self._tokenizer, "chat_template", None):
            raise ValueError(f"checkpoint {model_path} has no chat template; send raw parts instead of messages")

    def job(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> tuple[TemplateJob, dict[Modality, tuple[Any, ...]]]:
        """The render job for ``messages`` (the request's template if its kwargs carry one,
        else the checkpoint's) and the media in prompt order."""
        if not messages:
            raise InvalidArgument("messages is empty: send at least one message")
        media: dict[Modality, list[Any]] = {}
        conversation = [_turn(i, message, media) for i, message in enumerate(messages)]
        kwargs = dict(chat_template_kwargs or {})
        tools, documents = kwargs.pop("tools", None), kwargs.pop("documents", None)
        # The checkpoint's template may be a set of named ones (e.g. "tool_use"):
        # get_chat_template picks as apply_chat_template does.
        template = kwargs.pop(REQUEST_TEMPLATE_KEY, None) or self._tokenizer.get_chat_template(None, tools)
        job = TemplateJob(
            template=template,
            conversation=conversation,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            documents=documents,
            variables={**self._tokenizer.special_tokens_map, **kwargs},
            video_audio=tuple(
                p.audio_track is not None
                for m in messages
                for p in m.parts
                if isinstance(p, MediaPart) and p.modality == "video"
            ),
        )
        return job, _freeze(media)

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> AssembledPrompt:
        """Render in this process (the checkpoint's own, trusted template)."""
        job, media = self.job(
            messages, add_generation_prompt=add_generation_prompt, chat_template_kwargs=chat_template_kwargs
        )
        prompt = job.finish(render_template(job))
        check_rendered(prompt, media, request_template=REQUEST_TEMPLATE_KEY in (chat_template_kwargs or {}))
        return AssembledPrompt(prompt=prompt, multi_modal_data=media)


def _turn(i: int, message: Message, media: dict[Modality, list[Any]]) -> dict[str, Any]:
    """One message as chat templates take it (vLLM's conversation shape: OpenAI messages
    with tool-call arguments as objects, a tool result's text as one string)."""
    if message.role not in ROLES:
        raise InvalidArgument(f"messages[{i}].role is {message.role!r}; expected one of {', '.join(ROLES)}")
    _collect(message.parts, media)
    content: Any = [
        {"type": "text", "text": p.text} if isinstance(p, TextPart) else {"type": p.modality} for p in message.parts
    ]
    turn: dict[str, Any] = {"role": message.role, "content": content}
    if message.role == "tool":
        # vLLM joins a tool result's text parts: most templates take a string there.
        turn["content"] = "\n".join(p.text for p in message.parts if isinstance(p, TextPart))
        turn["tool_call_id"] = message.tool_call_id
    for text in (message.tool_call_id or "", *(f"{c.id}{c.name}{json.dumps(c.arguments)}" for c in message.tool_calls)):
        check_text(text)
    if message.tool_calls:
        turn["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": dict(c.arguments)}}
            for c in message.tool_calls
        ]
    if message.reasoning is not None:
        check_text(message.reasoning)
        # vLLM passes both names (chat_utils._parse_chat_message_content).
        turn["reasoning"] = turn["reasoning_content"] = message.reasoning
    return turn
