"""``nanovl serve``'s parser defaults: the checkpoint's reasoning and tool-call parsers
(Nemotron 3: nemotron_v3 + qwen3_coder with auto tool choice; V2: none), the operator's
overrides, and the operator errors (exit 2 through ``InvalidArgument``). No engine."""

from __future__ import annotations

import argparse

import pytest

from model.output_format import output_format_for, output_format_of
from model.tiny import ensure_tiny_checkpoint
from nanovl.cli.serve import build_parser, resolve_output_format
from nanovl.errors import InvalidArgument


def _args(model: str, *flags: str, reasoning: str | None = None, limits: dict | None = None) -> argparse.Namespace:
    args, rest = build_parser().parse_known_args(list(flags))
    assert not rest
    args.model, args.reasoning_parser, args.limit_mm_per_prompt = model, reasoning, limits or {}
    return args


@pytest.fixture(scope="module")
def v3() -> str:
    return str(ensure_tiny_checkpoint("omni-v3"))


@pytest.fixture(scope="module")
def v2() -> str:
    return str(ensure_tiny_checkpoint("full"))


def test_defaults_follow_the_architecture(v3, v2):
    assert output_format_for(["NemotronH_Nano_Omni_Reasoning_V3"]).tool_call_parser == "qwen3_coder"
    assert output_format_for(["NemotronH_Omni_Reasoning_V3"]).reasoning_parser == "nemotron_v3"
    assert output_format_for(["NemotronH_Nano_VL_V2"]) == output_format_of("nvidia/some-hub-id")
    args = _args(v3)
    resolve_output_format(args)
    assert (args.reasoning_parser, args.tool_call_parser) == ("nemotron_v3", "qwen3_coder")
    args = _args(v2)
    resolve_output_format(args)
    assert (args.reasoning_parser, args.tool_call_parser) == ("", "")


def test_operator_overrides(v3, v2):
    args = _args(v3, "--tool-call-parser", "none", reasoning="none")
    resolve_output_format(args)
    assert (args.reasoning_parser, args.tool_call_parser) == ("", "")
    args = _args(v3, "--no-enable-auto-tool-choice")
    resolve_output_format(args)
    assert args.tool_call_parser == ""  # tools off, reasoning kept
    args = _args(v2, "--enable-auto-tool-choice", "--tool-call-parser", "hermes", reasoning="qwen3")
    resolve_output_format(args)
    assert (args.reasoning_parser, args.tool_call_parser) == ("qwen3", "hermes")


@pytest.mark.parametrize(
    ("flags", "reasoning", "match"),
    [
        (("--tool-call-parser", "hermes"), None, r"--tool-call-parser hermes needs --enable-auto-tool-choice"),
        (("--enable-auto-tool-choice",), None, r"--enable-auto-tool-choice needs a --tool-call-parser"),
        (("--enable-auto-tool-choice", "--tool-call-parser", "nope"), None, r"--tool-call-parser 'nope' is not one"),
        ((), "nope", r"--reasoning-parser 'nope' is not one of vLLM's parsers: .*nemotron_v3"),
    ],
    ids=["parser-without-auto", "auto-without-parser", "unknown-tool-parser", "unknown-reasoning-parser"],
)
def test_operator_errors(v2, flags, reasoning, match):
    with pytest.raises(InvalidArgument, match=match):
        resolve_output_format(_args(v2, *flags, reasoning=reasoning))


def test_audio_in_video_default_needs_audio(v3):
    with pytest.raises(InvalidArgument, match="needs a checkpoint with an audio encoder"):
        resolve_output_format(_args(v3, "--use-audio-in-video"), has_audio=False)
    with pytest.raises(InvalidArgument, match=r"needs audio enabled \(--limit-mm-per-prompt audio=0"):
        resolve_output_format(_args(v3, "--use-audio-in-video", limits={"audio": 0}), has_audio=True)
    args = _args(v3, "--use-audio-in-video")
    resolve_output_format(args, has_audio=True)
    assert args.use_audio_in_video
