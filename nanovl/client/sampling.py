"""Request options: :class:`Sampling` (vLLM's ``SamplingParams`` fields), :class:`StructuredOutput`
and :class:`ChatTemplate` (per-request template and kwargs)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from google.protobuf import struct_pb2

from nanovl.errors import InvalidArgument
from nanovl.sampling_fields import SAMPLING_LISTS, SAMPLING_SCALARS
from nanovl.v1 import inference_pb2 as pb

# ---------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class StructuredOutput:
    """One output constraint; build with :meth:`json`, :meth:`regex`, :meth:`choice`,
    :meth:`grammar` or :meth:`json_object`."""

    kind: Literal["json_schema", "regex", "choice", "grammar", "json_object"]
    value: str | tuple[str, ...] | bool
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None

    @staticmethod
    def json(schema: str | Mapping[str, Any], **flags: Any) -> StructuredOutput:
        text = schema if isinstance(schema, str) else json.dumps(schema)
        return StructuredOutput("json_schema", text, **flags)

    @staticmethod
    def regex(pattern: str, **flags: Any) -> StructuredOutput:
        return StructuredOutput("regex", pattern, **flags)

    @staticmethod
    def choice(options: Iterable[str], **flags: Any) -> StructuredOutput:
        return StructuredOutput("choice", tuple(options), **flags)

    @staticmethod
    def grammar(grammar: str, **flags: Any) -> StructuredOutput:
        return StructuredOutput("grammar", grammar, **flags)

    @staticmethod
    def json_object(**flags: Any) -> StructuredOutput:
        return StructuredOutput("json_object", True, **flags)

    def to_proto(self) -> pb.StructuredOutput:
        msg = pb.StructuredOutput(
            disable_any_whitespace=self.disable_any_whitespace,
            disable_additional_properties=self.disable_additional_properties,
        )
        if self.whitespace_pattern is not None:
            msg.whitespace_pattern = self.whitespace_pattern
        if self.kind == "choice":
            msg.choice.choices.extend(self.value)  # type: ignore[arg-type]
        else:
            setattr(msg, self.kind, self.value)
        return msg


@dataclass(frozen=True)
class Sampling:
    """Sampling options (see ``SamplingOptions`` in inference.proto); None = vLLM default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    max_tokens: int | None = None
    min_tokens: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    ignore_eos: bool | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    # False: token ids only (Delta.text empty); the client detokenises.
    detokenize: bool | None = None
    logit_bias: Mapping[int, float] | None = None
    allowed_token_ids: tuple[int, ...] = ()
    bad_words: tuple[str, ...] = ()
    structured_output: StructuredOutput | None = None
    thinking_token_budget: int | None = None  # most reasoning tokens (chat, reasoning models)

    def to_proto(self) -> pb.SamplingOptions:
        msg = pb.SamplingOptions()
        for name in (*SAMPLING_SCALARS, *SAMPLING_LISTS, "logit_bias"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                if name in SAMPLING_LISTS:
                    # A bare string would be split into characters: the classic mistake.
                    getattr(msg, name).extend([value] if isinstance(value, str) else value)
                elif name == "logit_bias":
                    msg.logit_bias.update({int(k): float(v) for k, v in value.items()})
                else:
                    setattr(msg, name, value)
            except (TypeError, ValueError) as e:
                raise InvalidArgument(f"sampling.{name}={value!r} is not valid: {e}") from e
        if self.structured_output is not None:
            msg.structured_output.CopyFrom(self.structured_output.to_proto())
        return msg


@dataclass(frozen=True)
class ChatTemplate:
    """Rendering options for chat ``messages`` (chat only: a raw-parts prompt with any option
    set is INVALID_ARGUMENT)."""

    add_generation_prompt: bool | None = None
    kwargs: Mapping[str, Any] | None = None  # e.g. {"enable_thinking": False}
    enable_thinking: bool | None = None  # reason before answering (reasoning models); None: the template's default

    def to_proto(self) -> pb.ChatTemplateOptions:
        msg = pb.ChatTemplateOptions()
        if self.add_generation_prompt is not None:
            msg.add_generation_prompt = self.add_generation_prompt
        if self.enable_thinking is not None:
            msg.enable_thinking = self.enable_thinking
        if self.kwargs:
            struct = struct_pb2.Struct()
            try:
                struct.update(dict(self.kwargs))
            except (TypeError, ValueError) as e:
                raise InvalidArgument(f"chat_template_kwargs must be JSON-like values: {e}") from e
            msg.chat_template_kwargs.CopyFrom(struct)
        return msg
