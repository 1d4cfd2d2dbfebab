"""Reasoning and tool calls: vLLM's own parsers, driven the way vLLM's OpenAI server drives them.

vLLM's chat server composes the reasoning parser (``--reasoning-parser``) and the tool-call
parser (``--enable-auto-tool-choice --tool-call-parser``) into one ``Parser`` class
(``vllm.parser.ParserManager.get_parser``), builds one instance per request from the
request's tools and chat template kwargs, lets it adjust the request (a grammar that forces
the tool-call format for ``tool_choice`` required or named: ``Parser.adjust_request``),
tells the engine whether the prompt already ended the reasoning
(``ChatCompletionRequest.resolve_reasoning_ended``), and feeds it every streamed delta
(``Parser.parse_delta``). nanovl does the same with the same objects, a vLLM
``ChatCompletionRequest`` included, so tools, ``tool_choice`` and their errors are exactly
vLLM's (``vllm/entrypoints/openai/chat_completion/serving.py`` and
``vllm/renderers/online_renderer.py`` are the reference).

What nanovl adds: tool-call deltas are gathered and each call is returned once, complete
(id, name, arguments JSON), and tool schemas are checked as JSON Schema (vLLM takes any
object).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nanovl.errors import InvalidArgument, ResourceExhausted, echo
from nanovl.v1 import inference_pb2 as pb
from service.markup_filter import MarkupFilter, tool_markup

if TYPE_CHECKING:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.parser.abstract_parser import Parser
    from vllm.sampling_params import StructuredOutputsParams

# Bounds on what one request may declare (OpenAI allows 128 tools; a name is
# ^[a-zA-Z0-9_-]{1,64}$). A schema is rendered into the prompt, so max_model_len bounds
# it in the end; this bound only keeps validation cheap.
MAX_TOOLS = 128
MAX_TOOL_SCHEMA_BYTES = 256 * 1024
# All tools' schemas together: they share the request-validation threads every call goes
# through (verify-10b D2: 128 large schemas held both threads for minutes).
MAX_TOOLS_SCHEMA_BYTES = 1024 * 1024
# jsonschema's meta-schema check costs per JSON value, not per byte: up to ~0.45 ms a value
# on this project's machines (an allOf of empty objects: 4 bytes a value, so 32 KB took 3.4 s
# idle and 8-12 s loaded, verify-10c E2). Schemas are checked in full while the request's
# schemas hold at most this many JSON values together (~0.2 s at worst), and past it only as
# JSON objects describing an object (what the template and vLLM's grammar need; the grammar
# check bounds the rest, service.grammar_guard). A real tool's schema holds a few per parameter.
MAX_TOOL_SCHEMA_CHECK_VALUES = 500
NO_TOOL_PARSER = (
    "this server has no tool-call parser: tools are refused (it was started without "
    "--enable-auto-tool-choice --tool-call-parser); send tool_choice none or no tools"
)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")

_TOOL_CHOICE_MODES = {
    pb.TOOL_CHOICE_MODE_AUTO: "auto",
    pb.TOOL_CHOICE_MODE_NONE: "none",
    pb.TOOL_CHOICE_MODE_REQUIRED: "required",
}


@dataclass(frozen=True)
class ParserConfig:
    """The server's parsers ("" = none). Tools need both a tool-call parser and auto tool
    choice, as in vLLM (``ParserManager.get_tool_parser`` composes none without it)."""

    reasoning_parser: str = ""
    tool_call_parser: str = ""

    @property
    def any(self) -> bool:
        return bool(self.reasoning_parser or self.tool_call_parser)


def check_parser_names(config: ParserConfig) -> None:
    """Refuse parser names vLLM does not know (``InvalidArgument``, listing the known ones)."""
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    for flag, name, manager in (
        ("--reasoning-parser", config.reasoning_parser, ReasoningParserManager),
        ("--tool-call-parser", config.tool_call_parser, ToolParserManager),
    ):
        known = sorted(manager.list_registered())
        if name and name not in known:
            raise InvalidArgument(f"{flag} {name!r} is not one of vLLM's parsers: {', '.join(known)} (or none)")


def check_tool_name(where: str, name: str) -> None:
    """A function name as OpenAI's API allows it (``^[a-zA-Z0-9_-]{1,64}$``), for declared
    tools and for the calls of an assistant message in the history alike: the chat template
    writes it into the prompt as markup (``<function=NAME>``). ``InvalidArgument`` naming
    ``where``."""
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
        raise InvalidArgument(f"{where} {echo(name)} must be 1-64 characters of a-z, A-Z, 0-9, _ and -")


def parse_tools(tools: Sequence[pb.Tool]) -> list[dict[str, Any]]:
    """The request's tools in OpenAI's shape (``{"type": "function", "function": {...}}``),
    each schema checked as a JSON Schema document. Raises ``InvalidArgument`` naming the
    tool and what is wrong."""
    if len(tools) > MAX_TOOLS:
        raise InvalidArgument(f"{len(tools)} tools in one request; at most {MAX_TOOLS} are accepted")
    total = sum(len(t.parameters.encode()) for t in tools)
    if total > MAX_TOOLS_SCHEMA_BYTES:
        raise ResourceExhausted(
            f"the tools' parameter schemas take {total} bytes together; at most {MAX_TOOLS_SCHEMA_BYTES} are accepted"
        )
    check_budget = MAX_TOOL_SCHEMA_CHECK_VALUES
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        check_tool_name(f"{where}.name", tool.name)
        if tool.name in seen:
            raise InvalidArgument(f"{where}.name {tool.name!r} is declared twice; tool names must be unique")
        seen.add(tool.name)
        # Always a string: the description is optional (OpenAI, vLLM), but chat templates
        # that write it into the prompt fail on None (vLLM's default when it is left out).
        function: dict[str, Any] = {"name": tool.name, "description": tool.description}
        if tool.parameters:
            schema = _schema(where, tool.parameters)
            values = _json_values(schema, limit=check_budget + 1)
            if values <= check_budget:
                _check_schema(where, schema)
            check_budget -= min(values, check_budget)
            function["parameters"] = schema
        if tool.HasField("strict"):
            function["strict"] = tool.strict
        out.append({"type": "function", "function": function})
    return out


def _json_values(document: Any, *, limit: int) -> int:
    """How many JSON values ``document`` holds (objects, arrays and scalars, itself
    included), counted up to ``limit``."""
    count, stack = 0, [document]
    while stack and count < limit:
        value = stack.pop()
        count += 1
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return count


def _schema(where: str, text: str) -> dict[str, Any]:
    """``text`` parsed: a JSON object describing an object (``_check_schema`` checks it is a
    valid JSON Schema document)."""
    if len(text.encode()) > MAX_TOOL_SCHEMA_BYTES:
        raise InvalidArgument(
            f"{where}.parameters is {len(text.encode())} bytes; at most {MAX_TOOL_SCHEMA_BYTES} are accepted"
        )
    try:
        schema = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"{where}.parameters is not JSON: {e}") from None
    if not isinstance(schema, dict):
        raise InvalidArgument(f"{where}.parameters must be a JSON Schema object, got {type(schema).__name__}")
    if schema.get("type", "object") != "object":
        raise InvalidArgument(f'{where}.parameters must describe an object ("type": "object"), got {schema["type"]!r}')
    return schema


def _check_schema(where: str, schema: dict[str, Any]) -> None:
    """jsonschema's meta-schema check of a tool's parameters: ``InvalidArgument`` naming
    where it fails. Its cost grows with the JSON values (MAX_TOOL_SCHEMA_CHECK_VALUES).

    As ``Validator.check_schema`` (the best-matching error of the meta-schema), without
    its format checker: the meta-schema's ``regex`` format compiles every ``pattern`` with
    Python's ``re`` in this process, holding the GIL, and 45 KB of wide character classes
    took seconds (verify-10d F2: another user's call waited 14.7 s). A pattern reaches a
    regex engine only in a structured-output grammar (tool_choice required or named),
    which the grammar checker compiles in its own process under a time limit
    (``service.grammar_guard``)."""
    import jsonschema

    try:
        cls = jsonschema.validators.validator_for(schema)
        error = jsonschema.exceptions.best_match(cls(cls.META_SCHEMA).iter_errors(schema))
    except RecursionError:
        raise InvalidArgument(f"{where}.parameters is nested too deeply") from None
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise InvalidArgument(f"{where}.parameters is not a valid JSON Schema at {path}: {error.message}")


def tool_choice_value(choice: pb.ToolChoice) -> str | dict[str, Any] | None:
    """``ToolChoice`` as vLLM's ``tool_choice`` ("auto", "none", "required", or a named
    function); None when unset (vLLM's default: auto with tools)."""
    kind = choice.WhichOneof("choice")
    if kind is None:
        return None
    if kind == "function_name":
        return {"type": "function", "function": {"name": choice.function_name}}
    if choice.mode == pb.TOOL_CHOICE_MODE_UNSPECIFIED:
        return None  # the default
    if choice.mode not in _TOOL_CHOICE_MODES:
        raise InvalidArgument(
            f"tool_choice.mode {choice.mode} is not a ToolChoiceMode (AUTO, NONE or REQUIRED), "
            "or name a function in tool_choice.function_name"
        )
    return _TOOL_CHOICE_MODES[choice.mode]


@dataclass(frozen=True)
class ChatOptions:
    """What a chat request asks of the parsers (from ``service.request`` validation)."""

    messages: list[dict[str, Any]]  # OpenAI-shaped, text only (what parsers may read)
    tools: list[dict[str, Any]] | None
    tool_choice: str | dict[str, Any] | None
    chat_template_kwargs: Mapping[str, Any]
    structured_outputs: StructuredOutputsParams | None


class OutputParsers:
    """The server's composed vLLM ``Parser`` class (None without parsers), built once."""

    def __init__(self, config: ParserConfig, *, tokenizer: Any = None, model_config: Any = None) -> None:
        self.config = config
        self._tokenizer = tokenizer
        self._model_config = model_config
        # Both parsers (requests that may call tools), and the reasoning parser alone
        # (requests without tools or with tool_choice none: see for_request).
        self._cls: type[Parser] | None = self._compose(config) if config.any else None
        self._reasoning_cls: type[Parser] | None = (
            self._compose(ParserConfig(reasoning_parser=config.reasoning_parser))
            if config.reasoning_parser and config.tool_call_parser
            else self._cls
            if not config.tool_call_parser
            else None
        )

    def _compose(self, config: ParserConfig) -> type[Parser] | None:
        from vllm.parser import ParserManager

        try:
            return ParserManager.get_parser(
                tool_parser_name=config.tool_call_parser or None,
                reasoning_parser_name=config.reasoning_parser or None,
                enable_auto_tools=bool(config.tool_call_parser),
                model_name=getattr(self._model_config, "model", None),
                tokenizer=self._tokenizer,
            )
        except TypeError as e:  # vLLM's words for an unknown parser or a tokenizer that lacks its tokens
            raise InvalidArgument(str(e)) from e

    @classmethod
    def none(cls) -> OutputParsers:
        """No parsers: chat output is returned as generated, tools are refused."""
        return cls(ParserConfig())

    @property
    def tools(self) -> bool:
        return bool(self.config.tool_call_parser)

    @property
    def reasoning(self) -> bool:
        return bool(self.config.reasoning_parser)

    def for_request(self, options: ChatOptions) -> RequestParsing:
        """A parser for one chat request, its vLLM ``ChatCompletionRequest`` validated and
        adjusted (``InvalidArgument`` with vLLM's message when tools or tool_choice are wrong)."""
        from pydantic import ValidationError
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.exceptions import VLLMValidationError

        fields: dict[str, Any] = {
            "messages": options.messages,
            "chat_template_kwargs": dict(options.chat_template_kwargs),
            "structured_outputs": options.structured_outputs,
        }
        if options.tools is not None:
            fields["tools"] = options.tools
        if options.tool_choice is not None:
            fields["tool_choice"] = options.tool_choice
        try:
            request = ChatCompletionRequest(**fields)
        except ValidationError as e:
            raise InvalidArgument(f"vLLM rejected the request: {_pydantic_message(e)}") from None
        except VLLMValidationError as e:
            raise InvalidArgument(f"vLLM rejected the request: {e}") from None
        if request.tool_choice not in (None, "none") and not self.tools:
            raise InvalidArgument(NO_TOOL_PARSER)
        parser = None
        new_parser: Callable[[], Parser] | None = None
        # No tools, or tool_choice none: the tool-call parser is not run (the proto: NONE's
        # "output is returned as text"). vLLM's chat server runs it even then, and its
        # parsers drop what follows a <tool_call> token: qwen3_coder's ParserEngine enters
        # the call and never returns to content (verify-14c D4).
        may_call = bool(request.tools) and request.tool_choice != "none"
        cls = self._cls if may_call else self._reasoning_cls
        if cls is not None:
            tools = request.tools

            def new_parser() -> Parser:
                # As OpenAIServingChat._make_parser: one instance per use, never shared.
                return cls(
                    self._tokenizer,
                    tools,
                    chat_template_kwargs=dict(options.chat_template_kwargs),
                    model_config=self._model_config,
                )

            parser = new_parser()
            # As vLLM's renderer: adjusted when there is a reasoning parser or a tool choice.
            if parser.reasoning_parser is not None or (may_call and request.tool_choice != "none"):
                try:
                    request = parser.adjust_request(request)
                except (VLLMValidationError, ValueError) as e:
                    raise InvalidArgument(f"vLLM rejected the tools: {e}") from None
        return RequestParsing(
            request=request,
            parser=parser,
            chat_template_kwargs=dict(options.chat_template_kwargs),
            new_parser=new_parser,
            markup=MarkupFilter(tool_markup(parser.tool_parser) if parser is not None else ()),
        )


def _pydantic_message(e: Any) -> str:
    errors = e.errors()
    parts = []
    for err in errors[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("function-after", "function-before"))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts) + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else "")


@dataclass
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    done: bool = False


@dataclass(frozen=True)
class ParsedDelta:
    """One streamed delta, split: answer text, reasoning text, completed tool calls."""

    text: str = ""
    reasoning_text: str = ""
    tool_calls: tuple[pb.ToolCall, ...] = ()


@dataclass
class RequestParsing:
    """One chat request's parser and its stream state (not shared between requests)."""

    request: ChatCompletionRequest
    parser: Parser | None
    chat_template_kwargs: dict[str, Any]
    # A fresh instance of ``parser``'s class with the same arguments (for the final count).
    new_parser: Callable[[], Parser] | None = None
    # The tool parser's start/end markup, kept out of the answer text (service.markup_filter).
    markup: MarkupFilter = field(default_factory=lambda: MarkupFilter(()))
    _calls: dict[int, _PendingCall] = field(default_factory=dict)
    tools_called: bool = False
    _ended: bool = False  # the stream ended: calls still open are never returned (see feed)

    @property
    def structured_outputs(self) -> StructuredOutputsParams | None:
        """The output constraint after ``adjust_request`` (the client's, or the tool-call
        grammar vLLM derives for tool_choice required or named)."""
        return self.request.structured_outputs

    @property
    def named_tool_choice(self) -> bool:
        return isinstance(self.request.tool_choice, dict) or hasattr(self.request.tool_choice, "function")

    def engine_kwargs(self, prompt_token_ids: Sequence[int]) -> dict[str, Any]:
        """``reasoning_ended`` and ``reasoning_parser_kwargs`` for ``AsyncLLM.generate``
        (as ``OpenAIServingChat._engine_reasoning_kwargs``)."""
        kwargs: dict[str, Any] = {
            "reasoning_ended": self.request.resolve_reasoning_ended(self.parser, list(prompt_token_ids))
        }
        if self.parser is not None and self.parser.reasoning_parser is not None:
            kwargs["reasoning_parser_kwargs"] = {"chat_template_kwargs": self.chat_template_kwargs}
        return kwargs

    def feed(
        self,
        text: str,
        token_ids: Sequence[int],
        prompt_token_ids: Sequence[int] | None,
        *,
        finished: bool,
    ) -> ParsedDelta:
        """Parse one engine delta; tool calls come out once each, when complete: their
        arguments form a whole JSON object, or (no arguments) their markup closed or a
        later call began. A call still open when the stream ends is never returned, however
        it ended (max_tokens, a stop string, or the model's own end-of-sequence token:
        verify-14e D1), wherever its markup stopped, even inside the function's name.
        (vLLM's parsers close such a call when the stream ends,
        ``get_remaining_unstreamed_args``, so their own parse returns e.g. ``ge({})`` for
        ``<function=ge`` followed by ``<|im_end|>`` or at max_tokens.)"""
        if self.parser is None:
            return ParsedDelta(text=text)
        if not finished:
            parsed = self._parse(text, token_ids, prompt_token_ids, finished=finished)
        else:
            # The delta as the output has it, then the end of the stream on its own: what
            # only the end completes was left open.
            before = self._parse(text, token_ids, prompt_token_ids, finished=False)
            self._ended = True
            end = self._parse("", (), prompt_token_ids, finished=True)
            parsed = ParsedDelta(
                text=before.text + end.text,
                reasoning_text=before.reasoning_text + end.reasoning_text,
                tool_calls=before.tool_calls,
            )
        if not self.markup.active:
            return parsed
        # Markup vLLM's parser passed through as content (spelled without its special
        # token) never reaches Delta.text; a possible start of it waits for the next delta.
        answer = self.markup.feed(parsed.text) + (self.markup.flush() if finished else "")
        return ParsedDelta(text=answer, reasoning_text=parsed.reasoning_text, tool_calls=parsed.tool_calls)

    def _parse(
        self, text: str, token_ids: Sequence[int], prompt_token_ids: Sequence[int] | None, *, finished: bool
    ) -> ParsedDelta:
        assert self.parser is not None
        delta = self.parser.parse_delta(
            delta_text=text,
            delta_token_ids=list(token_ids),
            request=self.request,
            prompt_token_ids=list(prompt_token_ids) if prompt_token_ids is not None else None,
            finished=finished,
        )
        if delta is None:
            return ParsedDelta(tool_calls=self._complete(finished)) if finished else ParsedDelta()
        for call in delta.tool_calls or ():
            pending = self._calls.setdefault(call.index, _PendingCall())
            if call.id:
                pending.id = call.id
            if call.function is not None:
                pending.name = pending.name or (call.function.name or "")
                if call.function.arguments:
                    pending.arguments.append(call.function.arguments)
        return ParsedDelta(
            text=delta.content or "", reasoning_text=delta.reasoning or "", tool_calls=self._complete(finished)
        )

    def _complete(self, finished: bool) -> tuple[pb.ToolCall, ...]:
        from vllm.renderers.chat_utils import make_tool_call_id

        out = []
        indices = sorted(self._calls)
        for n, index in enumerate(indices):
            call = self._calls[index]
            if call.done or not call.name:
                continue
            if self._ended:  # open when the stream ended: never returned (see feed)
                call.done = True
                continue
            arguments = "".join(call.arguments)
            ended = finished or n + 1 < len(indices)  # the stream, or a later call, began after it
            whole = _is_json_object(arguments)
            if not (whole or ended):
                continue
            call.done = True
            if not (whole or not arguments.strip()):
                # Cut off mid-arguments (max_tokens, a stop string): as vLLM's own parse drops
                # incomplete tool-call markup, it is not returned; Final says why it ended.
                continue
            self.tools_called = True
            out.append(pb.ToolCall(id=call.id or make_tool_call_id(), name=call.name, arguments=arguments or "{}"))
        return tuple(out)

    def reasoning_tokens(self, token_ids: Sequence[int], prompt_token_ids: Sequence[int] | None = None) -> int:
        """``Final.usage.reasoning_tokens``: of the whole completion ``token_ids``, how many
        are reasoning (a count of tokens, 0 <= n <= len(token_ids)).

        Counted once, at the end, from the ids alone, by a fresh instance of this request's
        vLLM parser (``Parser.count_reasoning_tokens`` on an instance that streamed
        nothing, which decodes the ids and parses them in one pass), as vLLM's
        non-streaming chat path counts (``OpenAIServingChat.chat_completion_full_generator``).
        The streaming instance's running count is not used: vLLM's engine-based reasoning
        parsers (``ParserEngineReasoningAdapter``) count only the tokens of deltas that
        carried text, so the byte tokens of a character still incomplete in its delta
        (non-ASCII output) were missed. 0 without a reasoning parser, and when the prompt
        already ended the reasoning (thinking off: the whole stream is answer, as
        ``Parser.parse_delta`` decides from the prompt)."""
        if self.parser is None or self.parser.reasoning_parser is None or not token_ids:
            return 0
        if prompt_token_ids is not None and self.parser.is_reasoning_end(list(prompt_token_ids)):
            return 0
        counter = self.new_parser() if self.new_parser is not None else self.parser
        return counter.count_reasoning_tokens(tuple(token_ids))


def _is_json_object(text: str) -> bool:
    if not text.endswith("}"):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
