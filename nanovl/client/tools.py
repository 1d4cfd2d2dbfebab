"""Tool calling: the functions a request declares (:class:`Tool`), which ones the model may
call (:class:`ToolChoice`), and the calls it makes (:class:`ToolCall`), as the OpenAI and
vLLM chat APIs shape them (``Tool``, ``ToolChoice``, ``ToolCall`` in inference.proto)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from nanovl.errors import InvalidArgument
from nanovl.v1 import inference_pb2 as pb


@dataclass(frozen=True)
class Tool:
    """A function the model may call. ``parameters`` is its arguments' JSON Schema (an
    object schema), as a mapping or JSON text; the server checks it."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] | str | None = None
    strict: bool | None = None

    def to_proto(self) -> pb.Tool:
        msg = pb.Tool(name=self.name, description=self.description)
        if self.parameters is not None:
            msg.parameters = self.parameters if isinstance(self.parameters, str) else json.dumps(self.parameters)
        if self.strict is not None:
            msg.strict = self.strict
        return msg

    @staticmethod
    def from_openai(spec: Mapping[str, Any]) -> Tool:
        """One OpenAI-style tool: ``{"type": "function", "function": {"name", "description",
        "parameters", "strict"}}`` or the inner function object alone."""
        if not isinstance(spec, Mapping):
            raise InvalidArgument(f"a tool must be a JSON object, got {type(spec).__name__}")
        fn = spec.get("function", spec)
        if spec.get("type", "function") != "function" or not isinstance(fn, Mapping):
            raise InvalidArgument(f"only function tools are supported, got type {spec.get('type')!r}")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument("a tool needs a function name")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, Mapping):
            raise InvalidArgument(f"tool {name!r}: parameters must be a JSON object (a JSON Schema)")
        strict = fn.get("strict")
        return Tool(
            name=name,
            description=str(fn.get("description") or ""),
            parameters=params,
            strict=bool(strict) if strict is not None else None,
        )


def load_tools(path: str | Path) -> tuple[Tool, ...]:
    """Tools from a JSON file: a list of OpenAI-style tools (or ``{"tools": [...]}``)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise InvalidArgument(f"cannot read tools file {path}: {e.strerror or e}") from e
    except ValueError as e:
        raise InvalidArgument(f"tools file {path} is not JSON: {e}") from e
    if isinstance(data, Mapping) and "tools" in data:
        data = data["tools"]
    if not isinstance(data, list):
        raise InvalidArgument(f"tools file {path} must hold a JSON list of tools")
    return tuple(Tool.from_openai(t) for t in data)


@dataclass(frozen=True)
class ToolChoice:
    """``mode`` "auto", "none" or "required", or ``function``: call exactly that tool."""

    mode: str | None = None
    function: str | None = None

    AUTO: ClassVar[ToolChoice]  # set below the class
    NONE: ClassVar[ToolChoice]
    REQUIRED: ClassVar[ToolChoice]

    def __post_init__(self) -> None:
        if (self.mode is None) == (self.function is None):
            raise InvalidArgument("a tool choice is a mode (auto, none, required) or a function name, not both")
        if self.mode is not None and self.mode not in _MODES:
            raise InvalidArgument(f"tool choice mode must be one of {', '.join(_MODES)}, got {self.mode!r}")

    @staticmethod
    def named(function: str) -> ToolChoice:
        return ToolChoice(function=function)

    @staticmethod
    def parse(text: str) -> ToolChoice:
        """ "auto", "none", "required", or any other word as a function name."""
        return ToolChoice(mode=text) if text in _MODES else ToolChoice(function=text)

    def to_proto(self) -> pb.ToolChoice:
        if self.function is not None:
            return pb.ToolChoice(function_name=self.function)
        return pb.ToolChoice(mode=_MODES[self.mode])  # type: ignore[index]


_MODES = {
    "auto": pb.TOOL_CHOICE_MODE_AUTO,
    "none": pb.TOOL_CHOICE_MODE_NONE,
    "required": pb.TOOL_CHOICE_MODE_REQUIRED,
}
ToolChoice.AUTO = ToolChoice(mode="auto")
ToolChoice.NONE = ToolChoice(mode="none")
ToolChoice.REQUIRED = ToolChoice(mode="required")


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: ``arguments`` is JSON text (an object), as returned."""

    id: str
    name: str
    arguments: str

    def parsed_arguments(self) -> Any:
        """The arguments as Python values."""
        return json.loads(self.arguments) if self.arguments else {}

    def to_proto(self) -> pb.ToolCall:
        return pb.ToolCall(id=self.id, name=self.name, arguments=self.arguments)

    @staticmethod
    def from_proto(m: pb.ToolCall) -> ToolCall:
        return ToolCall(id=m.id, name=m.name, arguments=m.arguments)


def tools_to_proto(tools: Iterable[Tool]) -> list[pb.Tool]:
    return [t.to_proto() for t in tools]
