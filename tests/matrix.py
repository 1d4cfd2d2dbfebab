"""Issue 14's test matrix: every modality a tiny variant has, through both inference RPCs.

One check, run against an engine a module already starts (no engine of its own):
``full`` on the session server (tests/service/test_grpc_service.py), ``dynamic`` and
``no-audio`` on the fleet's replica2 and spare (tests/deploy/test_balancer.py), ``omni-v3``
and ``omni-v3-no-audio`` on the V3 module's engines (tests/service/test_engine_v3.py).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from loadtest.media import make_jpeg, make_mp4, make_wav
from model.token_accounting import (
    ModelGeometry,
    audio_num_samples,
    audio_tokens,
    dummy_text_length,
    images_tokens,
    video_tokens,
    video_with_audio_tokens,
)
from nanovl.client import AsyncInferenceClient, InferenceRpcError, Part, Result, Sampling, Started
from nanovl.client.events import collect_result
from tests.media_fixtures import make_video_with_audio

IMAGE_SIZE = (500, 300)  # width, height: not a multiple of any patch or tile size
VIDEO = (12, 320, 240, 8)  # frames, width, height, fps: 1.5 s, of which the server samples 5
VIDEO_SAMPLED = 5
AUDIO_S, AUDIO_RATE = 1.5, 44_100  # stereo: the server down-mixes and resamples to 16 kHz
GREEDY = Sampling(max_tokens=3, temperature=0.0, ignore_eos=True)


async def _served(client: AsyncInferenceClient, prompt: list, upload: str) -> tuple[Started, Result]:
    """``prompt`` through Generate (``"unary"``) or StreamGenerate (``"stream"``, 4 KiB
    chunks): what the model received (``Started``) and the whole result."""
    if upload == "unary":
        call = client.generate(prompt, sampling=GREEDY)
    else:
        call = client.stream_generate(prompt, sampling=GREEDY, chunk_size=4096)
    async with call:
        events = [e async for e in call]
    (started,) = [e for e in events if isinstance(e, Started)]
    return started, collect_result(events)


async def check_every_modality_through_both_rpcs(
    client: AsyncInferenceClient, checkpoint: Path, max_model_len: int
) -> None:
    """A JPEG, an MP4 and (if the checkpoint has a sound encoder) a stereo 44.1 kHz WAV in
    one prompt, and then an MKV whose audio track is given to the model
    (``use_audio_in_video``), through Generate and StreamGenerate. Both RPCs give the model the same items
    and the same greedy answer; what the model received is the media as sent (size, frame
    times, samples at 16 kHz); the prompt's tokens per modality are what nanovl's token
    accounting computes from ``checkpoint`` (vLLM's processor rules: tiles or the dynamic
    tiler's shared budget, tubelets and frame separators, Parakeet clips). A checkpoint
    without a sound encoder refuses audio on both RPCs with INVALID_ARGUMENT naming it."""
    geom = ModelGeometry.from_checkpoint(checkpoint, max_model_len=max_model_len)
    has_audio = geom.supports_audio
    frames, width, height, fps = VIDEO
    prompt: list = [
        "Compare ",
        Part.image(make_jpeg(*IMAGE_SIZE, seed=1)),
        " with ",
        Part.video(make_mp4(frames, width, height, fps=fps, seed=2), num_frames=VIDEO_SAMPLED),
    ]
    if has_audio:
        prompt += [" and ", Part.audio(make_wav(AUDIO_S, AUDIO_RATE, channels=2, seed=3))]

    (started, result), (started_s, result_s) = [await _served(client, prompt, u) for u in ("unary", "stream")]
    assert started.media == started_s.media  # the same items reached the model
    assert result.token_ids == result_s.token_ids and len(result.token_ids) == GREEDY.max_tokens
    assert result.usage.prompt_tokens_by_modality == result_s.usage.prompt_tokens_by_modality

    image, video = started.media[0].details, started.media[1].details
    assert (image["width"], image["height"], image["format"]) == (*IMAGE_SIZE, "jpeg")
    assert (video["width"], video["height"]) == (width, height)
    times_ms = [round(t * 1000) for t in video["frame_timestamps_s"]]
    assert len(times_ms) == VIDEO_SAMPLED and times_ms[0] == 0 and times_ms == sorted(times_ms)
    assert times_ms[-1] <= round((frames - 1) * 1000 / fps)
    counts = started.prompt_tokens_by_modality
    assert counts is not None
    # The dynamic tiler's budget is shared with the dummy text vLLM processes beside the
    # image: one tag per other media item (model.token_accounting.images_tokens).
    tags = dummy_text_length(geom, num_videos=1, num_audios=int(has_audio))
    (expected_image,) = images_tokens(geom, [IMAGE_SIZE], text_prompt_length=tags)
    assert counts.image == expected_image.prompt_tokens
    # Frames sit on the server's millisecond clock (model.prompt.video_item_at_times).
    expected_video = video_tokens(geom, VIDEO_SAMPLED, width, height, fps=1000.0, frame_indices=times_ms)
    assert counts.video == expected_video.prompt_tokens
    if has_audio:
        audio = started.media[2].details
        assert (audio["sample_rate"], audio["source_sample_rate"], audio["source_channels"]) == (16000, AUDIO_RATE, 2)
        assert audio["num_samples"] == audio_num_samples(geom, AUDIO_S)
        assert counts.audio == audio_tokens(geom, num_samples=audio["num_samples"]).prompt_tokens
        await _check_audio_in_video(client, geom)
        return
    assert counts.audio == 0
    for upload in ("unary", "stream"):
        with pytest.raises(InferenceRpcError) as err:
            await _served(client, ["Hear ", Part.audio(make_wav(1.0, seed=4))], upload)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "audio" in err.value.details, err.value


async def _check_audio_in_video(client: AsyncInferenceClient, geom: ModelGeometry) -> None:
    """A video's audio track as the model's audio (``use_audio_in_video``): an MKV whose
    track is 1.5 s of 44.1 kHz stereo PCM, through both RPCs; the track reaches the model as
    16 kHz mono, counted as vLLM's use_audio_in_video counts it."""
    frames, width, height = 2 * VIDEO_SAMPLED, 160, 120
    clip = make_video_with_audio(
        frames, width, height, audio_seconds=AUDIO_S, sample_rate=AUDIO_RATE, channels=2, container="matroska", seed=5
    )
    prompt = [Part.video(clip, num_frames=VIDEO_SAMPLED, use_audio_in_video=True), "What is said?"]
    (started, result), (started_s, result_s) = [await _served(client, prompt, u) for u in ("unary", "stream")]
    assert started.media == started_s.media and result.token_ids == result_s.token_ids
    video = started.media[0].details
    track = video["audio"]
    assert (track["sample_rate"], track["num_samples"]) == (16000, audio_num_samples(geom, AUDIO_S))
    times_ms = [round(t * 1000) for t in video["frame_timestamps_s"]]
    expected_video, expected_audio = video_with_audio_tokens(
        geom, VIDEO_SAMPLED, width, height, num_samples=track["num_samples"], fps=1000.0, frame_indices=times_ms
    )
    counts = started.prompt_tokens_by_modality
    assert counts is not None
    assert (counts.video, counts.audio) == (expected_video.prompt_tokens, expected_audio.prompt_tokens)
