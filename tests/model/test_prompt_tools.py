"""Prompt conventions for Nemotron 3 chat turns: tool calls and tool results through the
checkpoint's chat template, and a video's audio track placed as vLLM's
use_audio_in_video places it. Rendering only: no engine."""

from __future__ import annotations

import numpy as np
import pytest

from model.prompt import (
    ChatRenderer,
    MediaPart,
    Message,
    TextPart,
    ToolCallTurn,
    assemble_raw,
    check_rendered,
    video_item,
    with_video_audio,
)
from model.tiny import ensure_tiny_checkpoint
from nanovl.errors import InvalidArgument

FRAMES = np.zeros((2, 8, 8, 3), np.uint8)
VIDEO = video_item(FRAMES, fps=1.0, frames_indices=[0, 1], total_num_frames=2)
WAVE = (np.zeros(1600, np.float32), 16000)
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def chat() -> ChatRenderer:
    return ChatRenderer(str(ensure_tiny_checkpoint("omni-v3")))


def test_tool_calls_and_results_render_through_the_template(chat):
    call = ToolCallTurn(id="call-1", name="get_weather", arguments={"city": "Paris"})
    prompt = chat.render(
        [
            Message("user", (TextPart("Weather?"),)),
            Message("assistant", (), tool_calls=(call,), reasoning="Need the tool."),
            Message("tool", (TextPart("sunny"), TextPart("21 C")), tool_call_id="call-1"),
        ],
        chat_template_kwargs={"tools": TOOLS, "enable_thinking": False},
    ).prompt
    assert "<think>\nNeed the tool.\n</think>\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n" in prompt
    # A tool result's text parts are joined into one string, as vLLM joins them.
    assert "<|im_start|>user\n<tool_response>\nsunny\n21 C\n</tool_response>\n<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n<think></think>")


def test_placeholders_in_tool_calls_are_refused(chat):
    call = ToolCallTurn(id="<video>", name="f", arguments={})
    with pytest.raises(InvalidArgument, match="reserved string '<video>'"):
        chat.render([Message("assistant", (), tool_calls=(call,))])


def test_a_videos_audio_track_follows_the_video(chat):
    with_track = MediaPart("video", VIDEO, audio_track=WAVE)
    raw = assemble_raw(
        [TextPart("a "), with_track, TextPart(" b "), MediaPart("video", VIDEO), MediaPart("audio", WAVE)]
    )
    assert raw.prompt == "a <video><so_embedding> b <video><so_embedding>"
    # The n-th audio placeholder is the n-th audio item: the track first, then the audio part.
    assert raw.item_counts == {"video": 2, "audio": 2} and raw.multi_modal_data["audio"][0] is WAVE
    rendered = chat.render([Message("user", (with_track, TextPart("what is said?"), MediaPart("video", VIDEO)))])
    assert "<video><so_embedding>what is said?<video><|im_end|>" in rendered.prompt
    assert rendered.item_counts == {"video": 2, "audio": 1}


def test_audio_placement_needs_one_video_placeholder_per_video():
    assert with_video_audio("x<video>y", [False]) == "x<video>y"
    with pytest.raises(InvalidArgument, match="rendered 1 <video> placeholders for 2 videos"):
        with_video_audio("x<video>y", [True, False])


IMAGE = object()  # check_rendered counts items; it never looks at them


@pytest.mark.parametrize(
    ("template", "parts", "needle"),
    [
        ("{{ '<image>' * 3 }}", (TextPart("x"),), "3 <image> placeholders for 0 image"),
        ("x", (MediaPart("image", IMAGE),), "0 <image> placeholders for 1 image"),
        ("{{ '<video><video>' }}", (MediaPart("video", VIDEO),), "2 <video> placeholders for 1 video"),
        ("<so_embedding>", (TextPart("x"),), "1 <so_embedding> placeholders for 0 audio"),
        ("<image><img>", (MediaPart("image", IMAGE),), "rendered <img>"),
    ],
)
def test_a_request_template_writes_one_placeholder_per_media_part(chat, template, parts, needle):
    """verify-10b D7 (M9): raw text holding <image> was refused, a request's template that
    wrote 2000 of them for no image was served."""
    with pytest.raises(InvalidArgument, match=needle):
        chat.render([Message("user", parts)], chat_template_kwargs={"chat_template": template})


def test_the_checkpoints_template_passes_the_same_rule(chat):
    media = (MediaPart("image", IMAGE), MediaPart("video", VIDEO, audio_track=WAVE), MediaPart("audio", WAVE))
    prompt = chat.render([Message("user", (TextPart("look"), *media))])
    assert prompt.prompt.count("<image>") == 1 and prompt.prompt.count("<so_embedding>") == 2
    with pytest.raises(InvalidArgument, match="checkpoint's chat template rendered 1 <image> placeholders for 2"):
        check_rendered(prompt.prompt, {"image": (IMAGE, IMAGE)}, request_template=False)
    check_rendered("<img><image></img>", {"image": (IMAGE,)}, request_template=False)  # trusted markers
