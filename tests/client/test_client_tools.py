"""Client library: tools, tool choice, tool-call round trips, thinking options, the
audio-in-video flag, and the reasoning / tool-call fields of responses and ModelInfo.
Request building and response conversion only: no server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nanovl.client import (
    ChatTemplate,
    FinishReason,
    Message,
    Part,
    Prompt,
    Sampling,
    Tool,
    ToolCall,
    ToolChoice,
    build_generate_request,
    collect_result,
    event_from_proto,
    iter_stream_chunks,
    load_tools,
)
from nanovl.client.events import ModelInfo
from nanovl.errors import InvalidArgument
from nanovl.v1 import inference_pb2 as pb
from tests.client.test_client_unit import reassemble

WEATHER = Tool(
    "get_weather",
    "the weather",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CALL = ToolCall(id="call-1", name="get_weather", arguments='{"city": "Paris"}')


def _conversation(video: Part) -> Prompt:
    return Prompt.chat(
        [
            Message.user("weather where this was filmed?", video),
            Message.assistant(tool_calls=[CALL], reasoning_text="look it up"),
            Message.tool("call-1", "sunny"),
        ],
        tools=[WEATHER],
        tool_choice="required",
    )


def test_a_tool_conversation_becomes_the_request(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0" * 3000)
    prompt = _conversation(Part.video(clip, num_frames=2, use_audio_in_video=True))
    req = build_generate_request(
        prompt,
        sampling=Sampling(thinking_token_budget=16),
        chat_template=ChatTemplate(enable_thinking=True),
    )
    (tool,) = req.tools
    assert (tool.name, json.loads(tool.parameters)) == ("get_weather", WEATHER.parameters)
    assert not tool.HasField("strict")
    assert req.tool_choice.mode == pb.TOOL_CHOICE_MODE_REQUIRED
    user, assistant, result = req.messages
    assert user.parts[1].video.use_audio_in_video is True
    assert assistant.role == "assistant" and not assistant.parts and assistant.reasoning_text == "look it up"
    assert list(assistant.tool_calls) == [pb.ToolCall(id="call-1", name="get_weather", arguments='{"city": "Paris"}')]
    assert (result.role, result.tool_call_id, result.parts[0].text) == ("tool", "call-1", "sunny")
    assert req.sampling.thinking_token_budget == 16 and req.chat_template.enable_thinking is True
    # StreamGenerate carries the same in its header.
    chunks = list(iter_stream_chunks(prompt, chunk_size=1000, chat_template=ChatTemplate(enable_thinking=True)))
    assert reassemble(chunks) == build_generate_request(prompt, chat_template=ChatTemplate(enable_thinking=True))


def test_unset_options_stay_unset() -> None:
    req = build_generate_request([Message.user("hi", Part.video(b"\0" * 10))])
    assert not req.tools and not req.HasField("tool_choice")
    assert not req.messages[0].parts[1].video.HasField("use_audio_in_video")
    assert not req.sampling.HasField("thinking_token_budget")
    assert not ChatTemplate().to_proto().HasField("enable_thinking")


def test_tool_choice_forms() -> None:
    assert ToolChoice.parse("auto").to_proto().mode == pb.TOOL_CHOICE_MODE_AUTO
    assert ToolChoice.parse("none") == ToolChoice.NONE
    assert ToolChoice.parse("get_weather").to_proto().function_name == "get_weather"
    with pytest.raises(InvalidArgument, match="a mode .* or a function name"):
        ToolChoice()
    with pytest.raises(InvalidArgument, match="tools and tool_choice need a chat prompt"):
        Prompt(parts=(Part.text("hi"),), tools=(WEATHER,))


def test_tools_file_in_openai_shape(tmp_path: Path) -> None:
    path = tmp_path / "tools.json"
    path.write_text(json.dumps([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]))
    assert load_tools(path) == (Tool("f", "", {"type": "object"}),)
    path.write_text(json.dumps({"tools": [{"name": "g", "strict": True}]}))
    assert load_tools(path) == (Tool("g", strict=True),)
    for bad, match in (
        ("{", "is not JSON"),
        ('"x"', "must hold a JSON list"),
        ('[{"type": "web_search"}]', "only function tools"),
        ('[{"function": {"parameters": {}}}]', "needs a function name"),
        ('[{"name": "f", "parameters": []}]', "parameters must be a JSON object"),
    ):
        path.write_text(bad)
        with pytest.raises(InvalidArgument, match=match):
            load_tools(path)
    with pytest.raises(InvalidArgument, match="cannot read tools file"):
        load_tools(tmp_path / "missing.json")


def test_reasoning_and_tool_calls_fold_into_the_result_and_the_next_turn() -> None:
    responses = [
        pb.GenerateResponse(started=pb.Started(request_id="r")),
        pb.GenerateResponse(delta=pb.Delta(reasoning_text="hmm", token_ids=[1, 2])),
        pb.GenerateResponse(delta=pb.Delta(text="Sure.", token_ids=[3])),
        pb.GenerateResponse(delta=pb.Delta(token_ids=[4, 5], tool_calls=[CALL.to_proto()])),
        pb.GenerateResponse(
            final=pb.Final(
                finish_reason=pb.FINISH_REASON_TOOL_CALLS,
                usage=pb.Usage(completion_tokens=5, reasoning_tokens=2),
                request_id="r",
            )
        ),
    ]
    result = collect_result(event_from_proto(r) for r in responses)
    assert (result.reasoning_text, result.text, result.tool_calls) == ("hmm", "Sure.", (CALL,))
    assert result.finish_reason is FinishReason.TOOL_CALLS and result.usage.reasoning_tokens == 2
    assert CALL.parsed_arguments() == {"city": "Paris"}
    turn = result.assistant_message()
    assert (turn.role, turn.tool_calls, turn.reasoning_text, turn.parts[0].text_value) == (
        "assistant",
        (CALL,),
        "hmm",
        "Sure.",
    )


def test_model_info_reports_parsers_and_audio_in_video() -> None:
    info = ModelInfo.from_proto(
        pb.ModelInfo(
            reasoning_parser="nemotron_v3",
            tool_call_parser="qwen3_coder",
            supports_audio_in_video=True,
            default_use_audio_in_video=False,
        )
    )
    assert (info.reasoning_parser, info.tool_call_parser, info.supports_audio_in_video) == (
        "nemotron_v3",
        "qwen3_coder",
        True,
    )
    assert info.default_use_audio_in_video is False


def test_a_video_with_its_audio_track_describes_both() -> None:
    started = event_from_proto(
        pb.GenerateResponse(
            started=pb.Started(
                media=[
                    pb.MediaItemInfo(
                        video=pb.VideoItemInfo(
                            width=64,
                            height=48,
                            frame_timestamps_s=[0.0, 0.5],
                            source_frame_count=5,
                            duration_s=0.6,
                            audio=pb.AudioItemInfo(num_samples=24000, sample_rate=16000),
                        )
                    ),
                    pb.MediaItemInfo(video=pb.VideoItemInfo(width=8, height=8, frame_timestamps_s=[0.0])),
                ]
            )
        )
    )
    with_track, without = started.media
    assert with_track.details["audio"]["num_samples"] == 24000
    assert with_track.describe().endswith("with its audio track: 24000 samples at 16000 Hz")
    assert "audio" not in without.details and "audio track" not in without.describe()
