"""``--exact-mm-sizing`` declarations: parsing, limits, the JSON form vLLM carries, messages."""

from __future__ import annotations

import pytest

from model.item_maxima import DERIVED_VIDEO_SECONDS, HF_CONFIG_KEY, SETTING, ItemMaxima, parse
from nanovl.errors import InvalidArgument

LIMITS = {"max_video_frames": 256, "max_audio_seconds": 600.0, "frame_side": 224}


def test_declared_video_and_audio():
    m = parse("video=32x640x480@2,audio=60", **LIMITS)
    assert (m.video.num_frames, m.video.width, m.video.height, m.video.fps) == (32, 640, 480, 2.0)
    assert m.video.last_frame_s == 15.5  # (frames - 1) / fps
    assert m.audio.seconds == 60.0 and m.derived == ()
    assert m.spec() == "video=32x640x480@2,audio=60"
    assert parse(m.spec(), **LIMITS) == m


def test_limits_and_undeclared_modalities_come_from_the_media_limits():
    m = parse("limits", **LIMITS)
    assert (m.video.num_frames, m.video.width, m.video.last_frame_s) == (256, 224, DERIVED_VIDEO_SECONDS)
    assert m.audio.seconds == 600.0 and m.derived == ("video", "audio")
    only_audio = parse("audio=30", **LIMITS)
    assert only_audio.derived == ("video",) and only_audio.audio.seconds == 30.0
    assert "--max-video-frames" in only_audio.setting("video") and "audio=30" in only_audio.setting("audio")
    assert parse("video=8x64x64@1", **LIMITS, supports_audio=False).audio is None


def test_round_trip_through_the_model_config():
    m = parse("video=8x320x240@0.5,audio=12.5", **LIMITS)
    overrides = m.hf_overrides({"some_operator_key": 1})
    assert overrides["some_operator_key"] == 1
    assert ItemMaxima.from_config(overrides[HF_CONFIG_KEY]) == m
    assert ItemMaxima.from_config(None) is None


@pytest.mark.parametrize(
    "spec, says",
    [
        ("", "limits"),
        ("image=640x480", "images are sized exactly"),
        ("video=8x320x240", "needs a frame rate"),
        ("video=8x320@2", "3 positive integers"),
        ("video=0x320x240@2", "positive integers"),
        ("video=8x320x240@0", "positive number"),
        ("video=8x320x240@nan", "positive number"),
        ("video=300x320x240@2", "--max-video-frames"),
        ("audio=601", "--max-audio-seconds"),
        ("audio=-1", "positive number"),
        ("audio=inf", "positive number"),
        ("audio=5,audio=6", "declared twice"),
        ("video=8x320x240@2;audio=5", "expected"),
    ],
)
def test_bad_declarations_name_the_setting(spec, says):
    with pytest.raises(InvalidArgument) as err:
        parse(spec, **LIMITS)
    assert SETTING in str(err.value) and says in str(err.value), str(err.value)


def test_audio_on_a_checkpoint_without_audio_is_refused():
    with pytest.raises(InvalidArgument, match="no audio encoder"):
        parse("audio=5", **LIMITS, supports_audio=False)
