"""Reasoning and tool calls without an engine: request validation (tools, tool_choice,
tool messages, thinking options, audio in video) and vLLM's real parsers fed a real
tokenization of the tiny Nemotron 3 checkpoint's output format.

Engine-backed end-to-end checks (a real stream through a real server) are in
tests/service/test_engine_v3.py.
"""

from __future__ import annotations

import json
import random
import re

import pytest

from model.tiny import ensure_tiny_checkpoint
from nanovl.errors import InvalidArgument
from nanovl.v1 import inference_pb2 as pb
from service.markup_filter import MarkupFilter, tool_markup
from service.output_parsing import (
    MAX_TOOL_SCHEMA_BYTES,
    MAX_TOOLS,
    OutputParsers,
    ParserConfig,
    parse_tools,
    tool_choice_value,
)
from service.request import from_generate_request
from tests.conftest import server_settings

WEATHER = pb.Tool(
    name="get_weather",
    description="the weather",
    parameters=json.dumps(
        {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        }
    ),
)
LIMITS = {"image": 1, "video": 1, "audio": 1}


@pytest.fixture(scope="module")
def tokenizer():
    from vllm.tokenizers import get_tokenizer

    return get_tokenizer(str(ensure_tiny_checkpoint("omni-v3")), trust_remote_code=True)


@pytest.fixture(scope="module")
def v3_parsers(tokenizer) -> OutputParsers:
    return OutputParsers(
        ParserConfig(reasoning_parser="nemotron_v3", tool_call_parser="qwen3_coder"), tokenizer=tokenizer
    )


def _validate(req: pb.GenerateRequest, parsers: OutputParsers | None = None, **kw):
    kw.setdefault("audio_in_video", True)
    return from_generate_request(
        req,
        settings=server_settings(),
        limits=LIMITS,
        vocab_size=320,
        parsers=parsers or OutputParsers.none(),
        **kw,
    )


def _chat(*messages: pb.Message, **fields) -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=list(messages), **fields)


def _user(text: str = "hi") -> pb.Message:
    return pb.Message(role="user", parts=[pb.ContentPart(text=text)])


CALL = pb.ToolCall(id="call-1", name="get_weather", arguments='{"city": "Paris"}')


# ------------------------------------------------------------------ tools


def test_tools_become_openai_function_tools():
    (tool,) = parse_tools([WEATHER])
    assert tool == {
        "type": "function",
        "function": {"name": "get_weather", "description": "the weather", "parameters": json.loads(WEATHER.parameters)},
    }


@pytest.mark.parametrize(
    ("parameters", "match"),
    [
        ("{not json", r"tools\[0\].parameters is not JSON"),
        ("[1, 2]", r"must be a JSON Schema object, got list"),
        ('{"type": "string"}', r"must describe an object"),
        ('{"type": "object", "properties": 5}', r"not a valid JSON Schema at properties: 5 is not of type 'object'"),
        ('{"type": "object", "required": "city"}', r"not a valid JSON Schema at required"),
        (
            '{"type": "object", "properties": {"a": {"type": "strnig"}}}',
            r"not a valid JSON Schema at properties/a/type",
        ),
        ("[" * 5000 + "]" * 5000, r"(not JSON|nested too deeply)"),
    ],
    ids=["not-json", "array", "not-object", "properties-int", "required-str", "bad-type", "deep"],
)
def test_a_bad_schema_is_invalid_argument_naming_the_place(parameters, match):
    with pytest.raises(InvalidArgument, match=match):
        parse_tools([pb.Tool(name="f", parameters=parameters)])


@pytest.mark.parametrize(
    ("tools", "match"),
    [
        ([pb.Tool(name="")], r"tools\[0\].name '' must be 1-64 characters"),
        ([pb.Tool(name="get weather")], r"must be 1-64 characters"),
        ([pb.Tool(name="x" * 65)], r"must be 1-64 characters"),
        ([pb.Tool(name="f"), pb.Tool(name="f")], r"tools\[1\].name 'f' is declared twice"),
        ([pb.Tool(name=f"f{i}") for i in range(MAX_TOOLS + 1)], rf"{MAX_TOOLS + 1} tools in one request"),
        (
            [pb.Tool(name="f", parameters=json.dumps({"type": "object", "description": "x" * MAX_TOOL_SCHEMA_BYTES}))],
            r"parameters is \d+ bytes; at most",
        ),
    ],
    ids=["empty-name", "space", "long-name", "duplicate", "too-many", "huge-schema"],
)
def test_bad_tool_declarations_are_invalid_argument(tools, match):
    with pytest.raises(InvalidArgument, match=match):
        parse_tools(tools)


def test_seeded_hostile_schemas_are_refused_or_accepted_never_crash():
    """Mutations of a valid schema (truncation, type swaps, junk keys): each is either a
    valid JSON Schema or an InvalidArgument, never another exception."""
    rng = random.Random(14)
    base = WEATHER.parameters
    values = [None, 1, -1, "x", [], {}, True, 1e308, "object", ["string", 3]]
    outcomes = {"accepted": 0, "refused": 0}
    for _ in range(300):
        choice = rng.randrange(3)
        if choice == 0:
            text = base[: rng.randrange(len(base))]
        else:
            schema = json.loads(base)
            node = schema if choice == 1 else schema["properties"]["city"]
            node[rng.choice(["type", "properties", "required", "enum", "minimum", "items", "$ref", "x"])] = rng.choice(
                values
            )
            text = json.dumps(schema)
        try:
            parse_tools([pb.Tool(name="f", parameters=text)])
            outcomes["accepted"] += 1
        except InvalidArgument:
            outcomes["refused"] += 1
    assert outcomes["accepted"] and outcomes["refused"]


def test_tool_choice_maps_to_vllms_values():
    assert tool_choice_value(pb.ToolChoice()) is None
    assert tool_choice_value(pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_UNSPECIFIED)) is None
    assert tool_choice_value(pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_AUTO)) == "auto"
    assert tool_choice_value(pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE)) == "none"
    assert tool_choice_value(pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED)) == "required"
    assert tool_choice_value(pb.ToolChoice(function_name="f")) == {"type": "function", "function": {"name": "f"}}
    for undefined in (99, -1, 4):  # values no ToolChoiceMode has (the wire carries any int)
        with pytest.raises(InvalidArgument, match="is not a ToolChoiceMode"):
            tool_choice_value(pb.ToolChoice(mode=undefined))


def test_a_tool_without_a_description_renders():
    # Optional in OpenAI's and vLLM's APIs; templates that print it must get a string.
    (tool,) = parse_tools([pb.Tool(name="f", parameters=WEATHER.parameters)])
    assert tool["function"]["description"] == ""


# ------------------------------------------------------------------ request validation


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        (
            [_user(), pb.Message(role="tool", parts=[pb.ContentPart(text="r")])],
            r"messages\[1\] \(tool\) has no tool_call_id",
        ),
        (
            [_user(), pb.Message(role="tool", tool_call_id="nope", parts=[pb.ContentPart(text="r")])],
            r"messages\[1\].tool_call_id 'nope' answers no tool call of an earlier assistant message",
        ),
        ([pb.Message(role="user", tool_calls=[CALL])], r"messages\[0\] \(user\) has tool_calls"),
        ([pb.Message(role="user", tool_call_id="call-1")], r"messages\[0\] \(user\) has a tool_call_id"),
        ([pb.Message(role="system", reasoning_text="x")], r"messages\[0\] \(system\) has reasoning_text"),
        ([pb.Message(role="robot")], r"messages\[0\].role is 'robot'; expected one of system, user, assistant, tool"),
        (
            [pb.Message(role="assistant", tool_calls=[pb.ToolCall(id="c", name="f", arguments="{bad")])],
            r"messages\[0\].tool_calls\[0\].arguments is not JSON",
        ),
        (
            [pb.Message(role="assistant", tool_calls=[pb.ToolCall(id="c", name="f", arguments="[1]")])],
            r"arguments must be a JSON object, got list",
        ),
        ([pb.Message(role="assistant", tool_calls=[pb.ToolCall(name="f")])], r"tool_calls\[0\].id is empty"),
        (
            [
                pb.Message(role="assistant", tool_calls=[CALL]),
                pb.Message(role="tool", tool_call_id="call-1", parts=[pb.ContentPart(image=pb.Image(data=b"x"))]),
            ],
            r"messages\[1\] \(tool\) has image parts; a tool result is text only",
        ),
        (
            [pb.Message(role="assistant", tool_calls=[pb.ToolCall(id="c", name="f", arguments='{"a": "<image>"}')])],
            r"reserved string '<image>'",
        ),
        (
            [pb.Message(role="assistant", tool_calls=[CALL, pb.ToolCall(id="call-1", name="get_weather")])],
            r"tool_calls\[1\].id 'call-1' is also the id of an earlier call in this message",
        ),
        (
            [pb.Message(role="assistant", tool_calls=[pb.ToolCall(id="c" * 10_000, name="f")])],
            r"tool_calls\[0\].id is 10000 characters; at most 256",
        ),
        (
            [pb.Message(role="assistant", tool_calls=[pb.ToolCall(id="c\x00<|im_end|>", name="f")])],
            r"tool_calls\[0\].id .* holds the non-printable character U\+0000",
        ),
        (
            [pb.Message(role="assistant", tool_calls=[CALL]), pb.Message(role="assistant", tool_calls=[CALL])],
            r"messages\[1\].tool_calls\[0\].id 'call-1' is also the id of a call in messages\[0\]",
        ),
        (
            [
                pb.Message(role="assistant", tool_calls=[CALL]),
                pb.Message(role="tool", tool_call_id="call-1", parts=[pb.ContentPart(text="sunny")]),
                pb.Message(role="tool", tool_call_id="call-1", parts=[pb.ContentPart(text="rain")]),
            ],
            r"messages\[2\].tool_call_id 'call-1' was already answered by messages\[1\]",
        ),
        (
            [pb.Message(role="assistant", tool_calls=[pb.ToolCall(id="c", name="get weather;<|im_end|>")])],
            r"messages\[0\].tool_calls\[0\].name 'get weather;<\|im_end\|>' must be 1-64 characters",
        ),
        (
            [pb.Message(role="assistant", tool_calls=[pb.ToolCall(id="c", name="f" * 65)])],
            r"messages\[0\].tool_calls\[0\].name .* must be 1-64 characters",
        ),
        (
            [pb.Message(role="assistant", tool_calls=[pb.ToolCall(id="c", name="")])],
            r"messages\[0\].tool_calls\[0\].name '' must be 1-64 characters",
        ),
    ],
    ids=[
        "tool-no-id",
        "tool-unknown-id",
        "user-calls",
        "user-call-id",
        "system-reasoning",
        "bad-role",
        "args-not-json",
        "args-not-object",
        "call-no-id",
        "tool-image",
        "placeholder-in-args",
        "duplicate-call-ids",
        "call-id-too-long",
        "call-id-control-character",
        "call-id-in-two-messages",
        "call-answered-twice",
        "call-name-markup",
        "call-name-long",
        "call-name-empty",
    ],
)
def test_hostile_chat_messages_are_invalid_argument(messages, match, v3_parsers):
    with pytest.raises(InvalidArgument, match=match):
        _validate(_chat(*messages), v3_parsers)


@pytest.mark.parametrize("tools", [[WEATHER], []], ids=["other-tools", "no-tools"])
def test_history_calls_to_tools_not_offered_now_are_accepted(v3_parsers, tools):
    """An OpenAI-style history keeps calls to tools the request no longer offers (README,
    proto Message.tool_calls): accepted, with or without tools declared."""
    old_call = pb.ToolCall(id="call-9", name="get_time", arguments="{}")
    req = _validate(
        _chat(
            _user("time?"),
            pb.Message(role="assistant", tool_calls=[old_call]),
            pb.Message(role="tool", tool_call_id="call-9", parts=[pb.ContentPart(text="noon")]),
            _user("and the weather?"),
            tools=tools,
        ),
        v3_parsers,
    )
    assert req.messages[1].tool_calls[0].name == "get_time"


def test_a_tool_round_trip_validates_and_reaches_the_template(v3_parsers):
    req = _validate(
        _chat(
            _user("weather in Paris?"),
            pb.Message(role="assistant", tool_calls=[CALL], reasoning_text="look it up"),
            pb.Message(role="tool", tool_call_id="call-1", parts=[pb.ContentPart(text="sunny")]),
            tools=[WEATHER],
        ),
        v3_parsers,
    )
    assistant, tool = req.messages[1], req.messages[2]
    assert assistant.tool_calls[0].arguments == {"city": "Paris"} and assistant.reasoning == "look it up"
    assert tool.tool_call_id == "call-1" and tool.num_parts == 1
    assert req.chat_template_kwargs["tools"][0]["function"]["name"] == "get_weather"
    assert req.parsing is not None and req.parsing.request.tool_choice == "auto"


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (
            {"tool_choice": pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED)},
            r"When using `tool_choice`, `tools` must be set",
        ),
        (
            {"tools": [WEATHER], "tool_choice": pb.ToolChoice(function_name="get_time")},
            r"does not match any of the specified `tools`",
        ),
        (
            {"tools": [WEATHER], "chat_template": pb.ChatTemplateOptions(chat_template_kwargs={"tools": []})},
            r"either as the tools field or in chat_template_kwargs.tools",
        ),
        (
            {
                "chat_template": pb.ChatTemplateOptions(
                    enable_thinking=True, chat_template_kwargs={"enable_thinking": False}
                )
            },
            r"chat_template.enable_thinking is True but chat_template_kwargs.enable_thinking is False",
        ),
    ],
    ids=["choice-without-tools", "named-unknown", "tools-twice", "thinking-contradiction"],
)
def test_contradictory_tool_and_thinking_options_are_invalid_argument(fields, match, v3_parsers):
    with pytest.raises(InvalidArgument, match=match):
        _validate(_chat(_user(), **fields), v3_parsers)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"tools": [WEATHER]}, r"no tool-call parser: tools are refused"),
        ({"chat_template": pb.ChatTemplateOptions(enable_thinking=False)}, r"needs a reasoning model"),
        (
            {"sampling": pb.SamplingOptions(thinking_token_budget=8)},
            r"sampling.thinking_token_budget needs a reasoning",
        ),
    ],
    ids=["tools", "thinking", "budget"],
)
def test_reasoning_and_tool_options_on_a_server_without_parsers(fields, match):
    with pytest.raises(InvalidArgument, match=match):
        _validate(_chat(_user(), **fields))


def test_tools_with_tool_choice_none_are_rendered_without_a_parser():
    req = _validate(_chat(_user(), tools=[WEATHER], tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE)))
    assert req.chat_template_kwargs["tools"][0]["function"]["name"] == "get_weather" and req.parsing is None


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [WEATHER]},
        {"tool_choice": pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE)},
        {"chat_template": pb.ChatTemplateOptions(enable_thinking=True)},
        {"sampling": pb.SamplingOptions(thinking_token_budget=4)},
        {"chat_template": pb.ChatTemplateOptions(chat_template_kwargs={"enable_thinking": "yes"})},
        {"chat_template": pb.ChatTemplateOptions(chat_template_kwargs={})},
        {"chat_template": pb.ChatTemplateOptions(add_generation_prompt=True)},
    ],
    ids=["tools", "tool_choice", "thinking", "budget", "kwargs", "empty-kwargs", "add_generation_prompt"],
)
def test_chat_options_on_raw_parts_are_invalid_argument(fields, v3_parsers):
    """Every chat-only option on a raw-parts prompt (no template renders it, no parser
    reads its output) is refused, naming it, rather than ignored (verify-14c D7)."""
    with pytest.raises(InvalidArgument, match="apply to chat messages only") as err:
        _validate(pb.GenerateRequest(parts=[pb.ContentPart(text="hi")], **fields), v3_parsers)
    (name,) = fields
    assert name in str(err.value)


def test_thinking_maps_to_the_templates_enable_thinking_and_the_budget_to_sampling(v3_parsers):
    off = _validate(_chat(_user(), chat_template=pb.ChatTemplateOptions(enable_thinking=False)), v3_parsers)
    assert off.chat_template_kwargs["enable_thinking"] is False
    assert off.parsing is not None and off.parsing.chat_template_kwargs["enable_thinking"] is False
    on = _validate(
        _chat(
            _user(),
            chat_template=pb.ChatTemplateOptions(enable_thinking=True),
            sampling=pb.SamplingOptions(thinking_token_budget=7),
        ),
        v3_parsers,
    )
    assert on.chat_template_kwargs["enable_thinking"] is True and on.sampling.thinking_token_budget == 7


def test_required_tool_choice_constrains_the_output_to_the_call_format(v3_parsers):
    req = _validate(
        _chat(_user(), tools=[WEATHER], tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED)), v3_parsers
    )
    so = req.sampling.structured_outputs
    assert so is not None and (so.structural_tag or so.json)
    assert "get_weather" in (so.structural_tag or json.dumps(so.json))


def _video(raw: bool = False, flag: bool | None = True) -> pb.ContentPart:
    video = (
        pb.Video(raw_frames=pb.RawFrames(rgb24=b"\0" * 12, width=2, height=2, num_frames=1, fps=1))
        if raw
        else pb.Video(encoded=b"x")
    )
    if flag is not None:
        video.use_audio_in_video = flag
    return pb.ContentPart(video=video)


def test_audio_in_video_is_refused_precisely():
    with pytest.raises(InvalidArgument, match=r"sets use_audio_in_video on raw frames"):
        _validate(pb.GenerateRequest(parts=[_video(raw=True)]))
    with pytest.raises(InvalidArgument, match=r"gives the model no audio"):
        _validate(pb.GenerateRequest(parts=[_video()]), audio_in_video=False)
    with pytest.raises(InvalidArgument, match=r"2 audio items in one prompt, but this server allows at most 1"):
        _validate(pb.GenerateRequest(parts=[_video(), pb.ContentPart(audio=pb.Audio(encoded=b"x"))]))
    # Counted as an audio item when asked for; not when left to the server's default.
    assert _validate(pb.GenerateRequest(parts=[_video()])).item_counts == {"video": 1, "audio": 1}
    assert _validate(pb.GenerateRequest(parts=[_video(flag=None)])).item_counts == {"video": 1}


# ------------------------------------------------------------------ vLLM's parsers on a real tokenization

OUTPUT = (
    "let me think</think>Sure.\n"
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n"
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n</function>\n</tool_call>"
)


def _stream(parsing, tokenizer, text: str, prompt_ids: list[int]):
    """Feeds ``text`` a token at a time; the stream ends after its last token (however it
    ended: max_tokens, a stop string, end-of-sequence, the parsing is the same)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    deltas = [
        parsing.feed(tokenizer.decode([t]), [t], prompt_ids, finished=i == len(ids) - 1) for i, t in enumerate(ids)
    ]
    return ids, deltas


def test_the_stream_is_split_into_reasoning_answer_and_whole_tool_calls(v3_parsers, tokenizer):
    req = _validate(_chat(_user(), tools=[WEATHER]), v3_parsers)
    prompt_ids = tokenizer.encode("<|im_start|>assistant\n<think>\n", add_special_tokens=False)
    ids, deltas = _stream(req.parsing, tokenizer, OUTPUT, prompt_ids)
    assert "".join(d.reasoning_text for d in deltas) == "let me think"
    assert "".join(d.text for d in deltas).strip() == "Sure."
    calls = [(i, c) for i, d in enumerate(deltas) for c in d.tool_calls]
    assert [(c.name, json.loads(c.arguments)) for _, c in calls] == [
        ("get_weather", {"city": "Paris", "days": 3}),
        ("get_weather", {"city": "Rome"}),
    ]
    # Each call comes out once, as soon as its arguments are complete (before its closing tag).
    ends = [i for i, t in enumerate(ids) if t == tokenizer.convert_tokens_to_ids("</tool_call>")]
    assert calls[0][0] < ends[0] < calls[1][0] < ends[1]
    assert calls[0][1].id != calls[1][1].id and all(c.id for _, c in calls)
    assert req.parsing.tools_called
    assert req.parsing.reasoning_tokens(ids) == len(tokenizer.encode("let me think", add_special_tokens=False))


def test_with_thinking_off_everything_is_answer(v3_parsers, tokenizer):
    req = _validate(_chat(_user(), chat_template=pb.ChatTemplateOptions(enable_thinking=False)), v3_parsers)
    prompt_ids = tokenizer.encode("<|im_start|>assistant\n<think></think>", add_special_tokens=False)
    assert req.parsing.engine_kwargs(prompt_ids)["reasoning_ended"] is True
    _, deltas = _stream(req.parsing, tokenizer, "plain answer", prompt_ids)
    assert "".join(d.text for d in deltas) == "plain answer" and not any(d.reasoning_text for d in deltas)


def test_a_call_cut_off_anywhere_is_never_returned(v3_parsers, tokenizer):
    """The stream cut (max_tokens) after every token of two calls' markup: only calls whose
    arguments are whole come out, each exactly as in the whole output; never a call cut in
    its name or before its arguments (vLLM's own parse returns ``ge({})`` for
    ``<function=ge``: verify-14c D1)."""
    body = OUTPUT.split("</think>")[1]
    full = [("get_weather", {"city": "Paris", "days": 3}), ("get_weather", {"city": "Rome"})]
    prompt_ids = tokenizer.encode("<|im_start|>assistant\n<think></think>", add_special_tokens=False)
    ids = tokenizer.encode(body, add_special_tokens=False)
    for n in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:n])
        req = _validate(
            _chat(_user(), tools=[WEATHER], chat_template=pb.ChatTemplateOptions(enable_thinking=False)), v3_parsers
        )
        _, deltas = _stream(req.parsing, tokenizer, text, prompt_ids)
        calls = [(c.name, json.loads(c.arguments)) for d in deltas for c in d.tool_calls]
        closed = text.count("</function>")
        assert calls == full[: len(calls)] and closed <= len(calls) <= text.count("<function="), (text, calls)
        assert req.parsing.tools_called == bool(calls)


@pytest.mark.parametrize("body", ["hi <function=get_wea", "<tool_call>\n<function=get_weather>\n<parameter=ci"])
@pytest.mark.parametrize("eos", ["<|im_end|>", "</s>"])
def test_a_call_left_open_by_the_models_own_end_is_never_returned(v3_parsers, tokenizer, body, eos):
    """verify-14e D1: the model ended the output (an end-of-sequence token, finish STOP)
    inside a call's markup, and ``get_wea({})`` came back as a complete call."""
    req = _validate(
        _chat(_user(), tools=[WEATHER], chat_template=pb.ChatTemplateOptions(enable_thinking=False)), v3_parsers
    )
    prompt_ids = tokenizer.encode("<|im_start|>assistant\n<think></think>", add_special_tokens=False)
    ids = tokenizer.encode(body, add_special_tokens=False) + [tokenizer.convert_tokens_to_ids(eos)]
    deltas = [
        # The end-of-sequence token's text is not in the output (skip_special_tokens).
        req.parsing.feed(
            "" if i == len(ids) - 1 else tokenizer.decode([t]), [t], prompt_ids, finished=i == len(ids) - 1
        )
        for i, t in enumerate(ids)
    ]
    assert not [c for d in deltas for c in d.tool_calls]
    assert not req.parsing.tools_called


def test_a_call_without_arguments_is_returned_when_the_output_ends_naturally(v3_parsers, tokenizer):
    clock = pb.Tool(name="get_time", description="the time")
    body = "<tool_call>\n<function=get_time>\n</function>\n</tool_call>"
    prompt_ids = tokenizer.encode("<|im_start|>assistant\n<think></think>", add_special_tokens=False)
    req = _validate(
        _chat(_user(), tools=[clock], chat_template=pb.ChatTemplateOptions(enable_thinking=False)), v3_parsers
    )
    _, deltas = _stream(req.parsing, tokenizer, body, prompt_ids)
    assert [(c.name, json.loads(c.arguments)) for d in deltas for c in d.tool_calls] == [("get_time", {})]
    # Cut inside its markup: nothing.
    req = _validate(
        _chat(_user(), tools=[clock], chat_template=pb.ChatTemplateOptions(enable_thinking=False)), v3_parsers
    )
    _, deltas = _stream(req.parsing, tokenizer, "<tool_call>\n<function=get_time>\n", prompt_ids)
    assert not [c for d in deltas for c in d.tool_calls]


def test_tool_schemas_are_bounded_in_total_and_in_checking_cost(monkeypatch):
    """verify-10b D2: 128 schemas of 2500 properties (8.5 MB) held the validation threads for
    minutes; verify-10c E2: a 32 KB allOf of 10 800 empty objects still cost 8-12 s
    (jsonschema's meta-schema check costs per JSON value, not per byte)."""
    from nanovl.errors import ResourceExhausted
    from service import output_parsing
    from service.output_parsing import MAX_TOOL_SCHEMA_CHECK_VALUES, MAX_TOOLS_SCHEMA_BYTES

    def schema(n: int, bad: bool = False) -> str:
        props = {f"p{i}": {"type": 5 if bad else "string"} for i in range(n)}  # 5: not a JSON Schema type
        return json.dumps({"type": "object", "properties": props})

    big = schema(2500)
    assert len(big) * 128 > MAX_TOOLS_SCHEMA_BYTES
    with pytest.raises(ResourceExhausted, match="schemas take .* bytes together"):
        parse_tools([pb.Tool(name=f"t{i}", parameters=big) for i in range(128)])
    # Within the checking budget a schema is checked in full; past it, as an object only.
    small_bad = schema(3, bad=True)
    with pytest.raises(InvalidArgument, match="not a valid JSON Schema"):
        parse_tools([pb.Tool(name="f", parameters=small_bad)])
    large_bad = schema(3000, bad=True)
    (tool,) = parse_tools([pb.Tool(name="f", parameters=large_bad)])
    assert tool["function"]["parameters"]["type"] == "object"
    # The budget is shared by the request's tools and counted in JSON values: a small bad
    # schema after a large one is past it too; one within it is checked.
    parse_tools(
        [pb.Tool(name="a", parameters=schema(MAX_TOOL_SCHEMA_CHECK_VALUES)), pb.Tool(name="b", parameters=small_bad)]
    )
    with pytest.raises(InvalidArgument, match=r"tools\[1\].parameters is not a valid JSON Schema"):
        parse_tools([pb.Tool(name="a", parameters=schema(10)), pb.Tool(name="b", parameters=small_bad)])
    # Dense shapes (4 bytes a value, E2's) are past the budget, so never meta-checked;
    # the values checked per request stay within it whatever the tools hold.
    checked: list[int] = []
    real_check = output_parsing._check_schema

    def counting(where, schema_):
        checked.append(output_parsing._json_values(schema_, limit=10**9))
        real_check(where, schema_)

    monkeypatch.setattr(output_parsing, "_check_schema", counting)
    dense = json.dumps({"type": "object", "allOf": [{}] * 8000})
    parse_tools([pb.Tool(name=f"t{i}", parameters=dense) for i in range(4)])
    assert checked == []
    parse_tools([pb.Tool(name=f"t{i}", parameters=schema(i * 40)) for i in range(20)])
    assert 0 < sum(checked) <= MAX_TOOL_SCHEMA_CHECK_VALUES
    with pytest.raises(InvalidArgument, match="must describe an object"):
        parse_tools([pb.Tool(name="f", parameters=json.dumps({"type": "string", "x": "y" * 40000}))])


# ---------------------------------------------------------------- reasoning token count (verify-14 D2)

# Characters of one to four UTF-8 bytes: the tiny tokenizer has one token per byte, so a
# character of several bytes streams as tokens whose deltas carry no text until it is whole.
_CHARS = ["a", "b", "z", " ", "\n", ".", "é", "ü", "ß", "日", "本", "語", "€", "🙂", "𝄞"]


def _detokenized_deltas(tokenizer, ids: list[int]) -> list[str]:
    """Per-token text deltas as vLLM's incremental detokenizer sends them: a character is
    held back (empty delta) until its last byte arrives."""
    deltas, sent = [], ""
    for n in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:n]).rstrip("\ufffd")
        deltas.append(text[len(sent) :] if text.startswith(sent) else "")
        sent = text if text.startswith(sent) else sent
    return deltas


def _completion(rng: random.Random, tokenizer, think_end: int) -> list[int]:
    """Reasoning of random characters, then either ``</think>`` and an answer, or nothing
    (cut off while thinking, as by max_tokens)."""
    reasoning = "".join(rng.choice(_CHARS) for _ in range(rng.randint(0, 12)))
    ids = tokenizer.encode(reasoning, add_special_tokens=False)
    if rng.random() < 0.7:
        answer = "".join(rng.choice(_CHARS) for _ in range(rng.randint(0, 6)))
        ids += [think_end, *tokenizer.encode(answer, add_special_tokens=False)]
    return ids


@pytest.mark.parametrize("thinking", [True, False])
def test_reasoning_tokens_are_the_ids_before_the_end_of_thinking(v3_parsers, tokenizer, thinking):
    """usage.reasoning_tokens equals an independent count over the generated ids (thinking
    on: the tokens before </think>, or all of them when it never came; thinking off: 0),
    for seeded completions of multi-byte characters streamed as vLLM's detokenizer streams
    them. The streaming parser's own running count missed tokens whose delta had no text."""
    rng = random.Random(14)
    (think_end,) = tokenizer.encode("</think>", add_special_tokens=False)
    opener = "<|im_start|>assistant\n<think>\n" if thinking else "<|im_start|>assistant\n<think></think>"
    prompt_ids = tokenizer.encode(opener, add_special_tokens=False)
    held_back = 0
    for _ in range(60):
        ids = _completion(rng, tokenizer, think_end)
        req = _validate(_chat(_user(), chat_template=pb.ChatTemplateOptions(enable_thinking=thinking)), v3_parsers)
        deltas = _detokenized_deltas(tokenizer, ids)
        held_back += deltas.count("")
        parsed = [
            req.parsing.feed(d, [t], prompt_ids, finished=i == len(ids) - 1)
            for i, (d, t) in enumerate(zip(deltas, ids, strict=True))
        ]
        expected = (ids.index(think_end) if think_end in ids else len(ids)) if thinking else 0
        assert req.parsing.reasoning_tokens(ids, prompt_ids) == expected, (ids, deltas)
        if thinking:  # the count is of the tokens whose text the stream gave as reasoning
            assert "".join(p.reasoning_text for p in parsed).rstrip() == tokenizer.decode(ids[:expected]).rstrip()
        else:
            assert not any(p.reasoning_text for p in parsed)
    assert held_back > 50  # the generator did make deltas without text


# ---------------------------------------------------------------- contradictory options (verify-14 D4)

# Each request option that can conflict with another, and the values tried for it.
_OPTION_VALUES: dict[str, list] = {
    "tool_choice": [None, "auto", "none", "required", "get_weather"],
    "structured_output": [None, "json_schema", "regex", "choice", "grammar", "json_object"],
    "enable_thinking": [None, True, False],
    "kwargs.enable_thinking": ["absent", True, False, "yes", 1, None, [True]],
    "thinking_token_budget": [None, 0, 6],
}
_CONSTRAINTS = {
    "json_schema": pb.StructuredOutput(json_schema='{"type": "object"}'),
    "regex": pb.StructuredOutput(regex="[a-z]{4}"),
    "choice": pb.StructuredOutput(choice=pb.Choices(choices=["yes", "no"])),
    "grammar": pb.StructuredOutput(grammar='root ::= "a"'),
    "json_object": pb.StructuredOutput(json_object=True),
}
_MODES = {"auto": pb.TOOL_CHOICE_MODE_AUTO, "none": pb.TOOL_CHOICE_MODE_NONE, "required": pb.TOOL_CHOICE_MODE_REQUIRED}


def _pairwise_combinations(seed: int) -> list[dict]:
    """Every pair of values of every two options, each completed at random from ``seed``."""
    rng = random.Random(seed)
    names = list(_OPTION_VALUES)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for va in _OPTION_VALUES[a]:
                for vb in _OPTION_VALUES[b]:
                    combo = {n: rng.choice(v) for n, v in _OPTION_VALUES.items()}
                    combo[a], combo[b] = va, vb
                    out.append(combo)
    return out


def _request(combo: dict) -> pb.GenerateRequest:
    req = _chat(_user(), tools=[WEATHER])
    if (choice := combo["tool_choice"]) in _MODES:
        req.tool_choice.mode = _MODES[choice]
    elif choice is not None:
        req.tool_choice.function_name = choice
    if combo["structured_output"] is not None:
        req.sampling.structured_output.CopyFrom(_CONSTRAINTS[combo["structured_output"]])
    if combo["enable_thinking"] is not None:
        req.chat_template.enable_thinking = combo["enable_thinking"]
    if combo["kwargs.enable_thinking"] != "absent":
        req.chat_template.chat_template_kwargs.update({"enable_thinking": combo["kwargs.enable_thinking"]})
    if combo["thinking_token_budget"] is not None:
        req.sampling.thinking_token_budget = combo["thinking_token_budget"]
    return req


def _expected_refusal(combo: dict) -> tuple[str, ...] | None:
    """The fields the error must name, first rule broken first; None: accepted."""
    given = combo["kwargs.enable_thinking"]
    typed = combo["enable_thinking"]
    if given != "absent" and type(given) is not bool:
        return ("chat_template.chat_template_kwargs.enable_thinking", "true or false")
    if typed is not None and given != "absent" and given != typed:
        return ("chat_template.enable_thinking", "chat_template_kwargs.enable_thinking")
    thinking = typed if typed is not None else (given if given != "absent" else True)
    if combo["thinking_token_budget"] is not None and thinking is False:
        return ("sampling.thinking_token_budget", "enable_thinking is false")
    if combo["structured_output"] is not None and combo["tool_choice"] == "required":
        return (f"sampling.structured_output.{combo['structured_output']}", "tool_choice.mode REQUIRED")
    if combo["structured_output"] is not None and combo["tool_choice"] == "get_weather":
        return (f"sampling.structured_output.{combo['structured_output']}", "tool_choice.function_name")
    return None


def test_every_pair_of_conflicting_options_is_refused_precisely_or_accepted(v3_parsers):
    """verify-14 defect 4: options that contradict each other or cannot be read one way are
    INVALID_ARGUMENT at validation (before the engine), naming the fields; every other
    combination is accepted and reaches vLLM's SamplingParams as sent."""
    combos = _pairwise_combinations(seed=4)
    refused = 0
    for combo in combos:
        expected = _expected_refusal(combo)
        if expected is None:
            req = _validate(_request(combo), v3_parsers)
            budget = combo["thinking_token_budget"]
            assert req.sampling.thinking_token_budget == budget, combo
            if combo["structured_output"] is not None and combo["tool_choice"] in (None, "none"):
                assert getattr(req.sampling.structured_outputs, combo["structured_output"].replace("_schema", ""))
            continue
        with pytest.raises(InvalidArgument) as info:
            _validate(_request(combo), v3_parsers)
        refused += 1
        message = str(info.value)
        assert all(field in message for field in expected), (combo, message)
    assert 0 < refused < len(combos)


def test_structured_output_options_without_a_constraint_are_refused():
    so = pb.StructuredOutput(disable_any_whitespace=True)
    with pytest.raises(InvalidArgument, match="sets disable_any_whitespace but no constraint"):
        _validate(_chat(_user(), sampling=pb.SamplingOptions(structured_output=so)))
    # An empty StructuredOutput{} too (the proto: exactly one constraint), on the wire as well.
    for req in (
        _chat(_user(), sampling=pb.SamplingOptions(structured_output=pb.StructuredOutput())),
        pb.GenerateRequest(parts=[pb.ContentPart(text="hi")], sampling=pb.SamplingOptions(structured_output={})),
    ):
        wire = pb.GenerateRequest.FromString(req.SerializeToString())
        assert wire.sampling.HasField("structured_output")
        with pytest.raises(InvalidArgument, match="structured_output is set but holds no constraint"):
            _validate(wire)


@pytest.mark.parametrize(
    ("tools", "choice", "thinking", "refused_for"),
    [
        (True, None, True, ["tools", "thinking on"]),
        (True, None, False, ["tools"]),
        (True, pb.TOOL_CHOICE_MODE_REQUIRED, False, ["tools"]),
        (False, None, True, ["thinking on"]),
        (True, pb.TOOL_CHOICE_MODE_NONE, False, []),
        (False, None, False, []),
    ],
)
def test_detokenize_false_is_refused_where_the_output_is_parsed(v3_parsers, tools, choice, thinking, refused_for):
    """vLLM's parsers read the text: without it tool calls and the reasoning split would
    vanish silently (verify-14c D2)."""
    fields = {"chat_template": pb.ChatTemplateOptions(enable_thinking=thinking)}
    if tools:
        fields["tools"] = [WEATHER]
    if choice is not None:
        fields["tool_choice"] = pb.ToolChoice(mode=choice)
    for detokenize in (None, True, False):
        sampling = pb.SamplingOptions(max_tokens=4) if detokenize is None else pb.SamplingOptions(detokenize=detokenize)
        req = _chat(_user(), sampling=sampling, **fields)
        if detokenize is False and refused_for:
            with pytest.raises(InvalidArgument, match="sampling.detokenize is false") as err:
                _validate(req, v3_parsers)
            for reason in refused_for:
                assert reason in str(err.value)
        else:
            assert _validate(req, v3_parsers).sampling.detokenize == (detokenize is not False)


# ---------------------------------------------------------------- tool-call markup and lost text (verify-14c D3, D4)

_MARKUP = ("<tool_call>", "</tool_call>")
# Text that only looks like the start of the markup, and words.
_LOOKALIKES = ["<", "<t", "<tool", "<tool_", "<tool_call", "</", "</tool_cal", "<tool call>", " x<y ", "a>b"]
_WORDS = ["Sure.", " ", "\n", "the", "weather", "ok"]


def _without_markup(text: str) -> str:
    pattern = "|".join(re.escape(m) for m in _MARKUP)
    while (shorter := re.sub(pattern, "", text)) != text:
        text = shorter
    return text


def _spelled(rng: random.Random, tokenizer, markup: str) -> tuple[str, list[int]]:
    """``markup`` as its special token, as one token per byte, or as sub-word pieces."""
    how = rng.choice(["special", "bytes", "pieces"])
    if how == "special":
        pieces = [markup]
    elif how == "bytes":
        pieces = list(markup)
    else:
        cuts = sorted(rng.sample(range(1, len(markup)), rng.randint(1, 3)))
        pieces = [markup[a:b] for a, b in zip([0, *cuts], [*cuts, len(markup)], strict=True)]
    return how, [t for p in pieces for t in tokenizer.encode(p, add_special_tokens=False)]


def _text_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _deltas(rng: random.Random, tokenizer, ids: list[int]) -> list[tuple[str, list[int]]]:
    """The ids in deltas of 1-3 tokens, each with its text (ASCII: every token decodes alone)."""
    out, i = [], 0
    while i < len(ids):
        n = rng.randint(1, 3)
        out.append((tokenizer.decode(ids[i : i + n]), ids[i : i + n]))
        i += n
    return out


def _feed_all(parsing, deltas, prompt_ids):
    return [parsing.feed(text, ids, prompt_ids, finished=i == len(deltas) - 1) for i, (text, ids) in enumerate(deltas)]


def test_tool_call_markup_never_reaches_the_answer_text_however_it_is_spelled(v3_parsers, tokenizer):
    """Seeded outputs: text with markup lookalikes, then (usually) a call whose <tool_call>
    and </tool_call> are the special tokens, byte tokens or sub-word pieces, then more text,
    streamed in deltas of 1-3 tokens. Delta.text never holds the markup, is exactly the
    content vLLM's parser gave with the markup removed (nothing else held back or lost),
    keeps the text around the call, and the call comes out whatever the spelling."""
    rng = random.Random(3)
    prompt_ids = _text_ids(tokenizer, "<|im_start|>assistant\n<think></think>")
    spellings: dict[str, int] = {}
    for _ in range(150):
        before = "".join(rng.choice(_LOOKALIKES + _WORDS) for _ in range(rng.randint(0, 6)))
        if _without_markup(before) != before:
            continue
        ids, expected_calls, after = _text_ids(tokenizer, before), [], ""
        if rng.random() < 0.85:
            how_start, start = _spelled(rng, tokenizer, "<tool_call>")
            how_end, end = _spelled(rng, tokenizer, "</tool_call>")
            spellings[how_start] = spellings.get(how_start, 0) + 1
            city = rng.choice(["Paris", "Rome"])
            body = f"\n<function=get_weather>\n<parameter=city>\n{city}\n</parameter>\n</function>\n"
            ids += start + _text_ids(tokenizer, body) + end
            expected_calls = [("get_weather", {"city": city})]
            if how_end == "special":  # text after a </tool_call> spelled otherwise is vLLM's to drop (README)
                after = rng.choice(["\nDone.", "\n<tool but not a call", " <tool_ca"])
                ids += _text_ids(tokenizer, after)
        deltas = _deltas(rng, tokenizer, ids)
        runs = {}
        for filtered in (True, False):
            req = _validate(
                _chat(_user(), tools=[WEATHER], chat_template=pb.ChatTemplateOptions(enable_thinking=False)),
                v3_parsers,
            )
            if not filtered:
                req.parsing.markup = MarkupFilter(())
            runs[filtered] = _feed_all(req.parsing, deltas, prompt_ids)
        text = "".join(d.text for d in runs[True])
        raw = "".join(d.text for d in runs[False])
        assert text == _without_markup(raw), (tokenizer.decode(ids), text, raw)
        assert not any(m in text for m in _MARKUP), (tokenizer.decode(ids), text)
        assert before.strip() in text and after.strip() in text, (tokenizer.decode(ids), text)
        calls = [(c.name, json.loads(c.arguments)) for d in runs[True] for c in d.tool_calls]
        assert calls == expected_calls, tokenizer.decode(ids)
    assert spellings.keys() == {"special", "bytes", "pieces"}


def test_the_markup_is_read_from_vllms_tool_parsers(tokenizer):
    from vllm.tool_parsers import ToolParserManager

    for name in ("qwen3_coder", "hermes"):  # a ParserEngine adapter and a legacy parser
        assert set(tool_markup(ToolParserManager.get_tool_parser(name)(tokenizer))) == set(_MARKUP), name
    assert tool_markup(object()) == ()


def test_the_reported_byte_spelled_call_leaves_only_the_answer(v3_parsers, tokenizer):
    """verify-14c D3's stream: ``<tool_call>`` as byte tokens (as a grammar spells it)."""
    body = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n"
    ids = [t for ch in "Sure.\n" + body for t in _text_ids(tokenizer, ch)] + _text_ids(tokenizer, "</tool_call>")
    req = _validate(
        _chat(_user(), tools=[WEATHER], chat_template=pb.ChatTemplateOptions(enable_thinking=False)), v3_parsers
    )
    prompt_ids = _text_ids(tokenizer, "<|im_start|>assistant\n<think></think>")
    out = _feed_all(req.parsing, [(tokenizer.decode([t]), [t]) for t in ids], prompt_ids)
    assert "".join(d.text for d in out) == "Sure.\n\n"
    assert [(c.name, c.arguments) for d in out for c in d.tool_calls] == [("get_weather", '{"city": "Paris"}')]


# Reasoning markup the parser consumes, and where a stream may end while the reasoning
# parser still holds the start of a tag.
_REASONING_TAGS = ("<think>", "</think>", "<tool_call>", "</tool_call>")


def _expected_split(tokenizer, ids: list[int], thinking: bool) -> tuple[str, str]:
    """(reasoning_text, text) as README documents them for a request vLLM's tool parser does
    not run on: thinking off, everything is text; thinking on, the reasoning runs to the
    first </think> (consumed) or <tool_call> (kept, in the text) token, without its <think>
    tokens and its trailing whitespace (also before a tag start it ends with, when the
    stream ends while reasoning); the rest is text, as generated."""
    if not thinking:
        return "", tokenizer.decode(ids)
    think, think_end, call = (tokenizer.convert_tokens_to_ids(t) for t in ("<think>", "</think>", "<tool_call>"))
    k = next((i for i, t in enumerate(ids) if t in (think_end, call)), None)
    head = tokenizer.decode([t for t in (ids if k is None else ids[:k]) if t != think])
    rest = [] if k is None else ids[k + 1 :] if ids[k] == think_end else ids[k:]
    tail = ""
    if k is None:
        tail = max(
            (
                head[len(head) - n :]
                for n in range(1, 12)
                if any(t[:n] == head[len(head) - n :] for t in _REASONING_TAGS)
            ),
            key=len,
            default="",
        )
    return head[: len(head) - len(tail)].rstrip() + tail, tokenizer.decode(rest)


@pytest.mark.parametrize(
    "choice", [None, pb.TOOL_CHOICE_MODE_NONE, pb.TOOL_CHOICE_MODE_UNSPECIFIED], ids=["no-tools", "none", "unset"]
)
def test_without_tools_nothing_generated_is_lost(v3_parsers, tokenizer, choice):
    """verify-14c D4: seeded sequences of ordinary, <tool_call>, </tool_call>, <think> and
    </think> tokens (what allowed_token_ids would give), thinking on and off, no tools or
    tool_choice none: reasoning_text + text is the whole output but for the documented
    reasoning markup (``_expected_split``). vLLM's tool parser, run on such requests by
    vLLM's own server, dropped everything after a <tool_call> token."""
    rng = random.Random(4)
    special = [tokenizer.convert_tokens_to_ids(t) for t in _REASONING_TAGS]
    ordinary = [t for ch in "ab <\n" for t in _text_ids(tokenizer, ch)]
    for _ in range(120):
        thinking = rng.random() < 0.5
        fields = {"chat_template": pb.ChatTemplateOptions(enable_thinking=thinking)}
        if choice is not None:
            fields["tools"] = [WEATHER]
            if choice == pb.TOOL_CHOICE_MODE_NONE:
                fields["tool_choice"] = pb.ToolChoice(mode=choice)
        req = _validate(_chat(_user(), **fields), v3_parsers)
        if choice == pb.TOOL_CHOICE_MODE_UNSPECIFIED:  # tools offered: the tool parser runs (the control)
            assert req.parsing.parser.tool_parser is not None
            continue
        assert req.parsing.parser.tool_parser is None
        ids = [rng.choice(ordinary + special) for _ in range(rng.randint(1, 14))]
        opener = "<|im_start|>assistant\n<think>\n" if thinking else "<|im_start|>assistant\n<think></think>"
        out = _feed_all(
            req.parsing,
            [(tokenizer.decode([t]), [t]) for t in ids],
            _text_ids(tokenizer, opener),
        )
        got = ("".join(d.reasoning_text for d in out), "".join(d.text for d in out))
        assert got == _expected_split(tokenizer, ids, thinking), tokenizer.decode(ids)
        assert not any(d.tool_calls for d in out)


def test_the_reported_lost_text_comes_back(v3_parsers, tokenizer):
    """verify-14c D4's stream: b <tool_call> bcdbcd, no tools, thinking off and on."""
    ids = _text_ids(tokenizer, "b") + [tokenizer.convert_tokens_to_ids("<tool_call>")] + _text_ids(tokenizer, "bcdbcd")
    deltas = [(tokenizer.decode([t]), [t]) for t in ids]
    for thinking, opener, expected in (
        (False, "<|im_start|>assistant\n<think></think>", ("", "b<tool_call>bcdbcd")),
        (True, "<|im_start|>assistant\n<think>\n", ("b", "<tool_call>bcdbcd")),
    ):
        req = _validate(_chat(_user(), chat_template=pb.ChatTemplateOptions(enable_thinking=thinking)), v3_parsers)
        out = _feed_all(req.parsing, deltas, _text_ids(tokenizer, opener))
        assert ("".join(d.reasoning_text for d in out), "".join(d.text for d in out)) == expected


def test_tools_on_a_server_without_a_tool_parser_are_refused_before_their_schemas_are_read(monkeypatch):
    """verify-10d F2: the schema checks ran before the cheap refusal."""
    import service.request

    def never(*_a, **_k):
        raise AssertionError("the tools' schemas were read")

    monkeypatch.setattr(service.request, "parse_tools", never)
    with pytest.raises(InvalidArgument, match=r"no tool-call parser: tools are refused"):
        _validate(_chat(_user(), tools=[WEATHER]))


@pytest.mark.parametrize("seed", range(3))
def test_tool_schema_patterns_are_never_compiled_in_the_server(monkeypatch, seed, v3_parsers):
    """verify-10d F2: the meta-schema's regex format compiled every pattern with Python's re,
    holding the GIL (45 KB of wide character classes: seconds, and another call waited
    14.7 s). Patterns are checked as strings; a regex engine sees them only in a
    structured-output grammar, in the grammar checker's process."""
    rng = random.Random(seed)
    classes = ["[\u0100-\uffff]", "[^\x00-\x7f]", "(a|b)*", "\\w{1,9}", "[\u4e00-\u9fff]+"]
    pattern = "".join(rng.choice(classes) for _ in range(rng.randrange(500, 3000)))
    compiled: list[str] = []
    real_compile = re.compile

    def recording(p, *a, **k):
        compiled.append(p if isinstance(p, str) else "")
        return real_compile(p, *a, **k)

    monkeypatch.setattr(re, "compile", recording)
    params = {"type": "object", "properties": {"q": {"type": "string", "pattern": pattern}}}
    tool = pb.Tool(name="search", parameters=json.dumps(params))
    req = _validate(_chat(_user(), tools=[tool]), v3_parsers)
    assert req.chat_template_kwargs["tools"][0]["function"]["parameters"]["properties"]["q"]["pattern"] == pattern
    assert pattern not in compiled
    # The meta-schema still refuses what is not a schema.
    bad = pb.Tool(name="search", parameters=json.dumps({"type": "object", "properties": {"q": {"minLength": -1}}}))
    with pytest.raises(InvalidArgument, match=r"not a valid JSON Schema at properties/q/minLength"):
        _validate(_chat(_user(), tools=[bad]), v3_parsers)
