"""ENGINE-BACKED: ``nanovl serve --exact-mm-sizing`` end to end, over real sockets.

One server process for the module (eager mode, no warm-up), started with a declared
largest video (8 frames of 320x240 at 2 fps) and audio (5 s), chunked prefill on with a
512-token batch so the applied encoder budget differs from vLLM's default:

- GetBudget reports vLLM's default sizing (the whole context for video and audio) beside
  the applied one, read from the engine's worker;
- an item exactly at the declared maximum is served, and its encoder tokens are the
  applied per-item maximum (audio) or within it (video, whose frames are earlier than the
  worst-case timestamps);
- an item over it (one frame more, the same frames further apart in time, half a second
  more audio) is refused OUT_OF_RANGE before the engine, naming the setting.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from nanovl.client import Part
from nanovl.client.sampling import Sampling
from nanovl.client.sync import InferenceClient
from nanovl.modalities import modality_to_pb
from nanovl.v1 import profiling_pb2 as ppb
from nanovl.v1 import profiling_pb2_grpc as ppb_grpc

pytestmark = pytest.mark.engine  # starts its own server

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 600
SETTING = "video=8x320x240@2,audio=5"
MAX_MODEL_LEN = 2048
BATCH_TOKENS = 512
RATE = 16_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    port, admin = _free_port(), _free_port()
    log = tmp_path_factory.mktemp("exact") / "serve.log"
    cmd = [sys.executable, "-m", "nanovl.cli", "serve", "--port", str(port), "--admin-port", str(admin)]
    cmd += ["--metrics-port", "0", "--no-warmup", "--exact-mm-sizing", SETTING, "--max-model-len", str(MAX_MODEL_LEN)]
    cmd += ["--limit-mm-per-prompt", '{"image": 1, "video": 1, "audio": 1}', "--max-num-seqs", "8"]
    cmd += ["--enable-chunked-prefill", "--max-num-batched-tokens", str(BATCH_TOKENS)]
    env = {**os.environ, "NANOVL_CACHE_DIR": os.environ.get("NANOVL_CACHE_DIR", str(REPO / ".cache"))}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "serving on" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(1)
        yield f"127.0.0.1:{port}", f"127.0.0.1:{admin}"
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def budget(served) -> ppb.Budget:
    with grpc.insecure_channel(served[1]) as channel:
        return ppb_grpc.ProfilingStub(channel).GetBudget(ppb.GetBudgetRequest(), timeout=120)


@pytest.fixture(scope="module")
def client(served):
    with InferenceClient(served[0]) as c:
        yield c


def _video(num_frames: int, fps: float) -> Part:
    frames = np.random.default_rng(num_frames).integers(0, 255, (num_frames, 240, 320, 3), dtype=np.uint8)
    return Part.video_frames(frames, fps=fps, num_frames=num_frames)


def _audio(seconds: float) -> Part:
    wave = (np.random.default_rng(7).standard_normal(int(seconds * RATE)) * 0.1).astype(np.float32)
    return Part.pcm(wave, sample_rate=RATE)


GREEDY = Sampling(max_tokens=2, temperature=0.0)


def test_get_budget_shows_vllm_default_beside_applied(budget):
    x = budget.exact_sizing
    assert x.setting == SETTING
    default, applied = x.vllm_default, x.applied
    # vLLM's own answer for this model: the whole context per video / audio item.
    assert default.max_tokens_per_item["video"] == MAX_MODEL_LEN
    assert default.max_tokens_per_item["audio"] == MAX_MODEL_LEN
    assert default.compute_budget_tokens == default.cache_size_tokens == MAX_MODEL_LEN
    items = {it.modality: it for it in x.items}
    video, audio = items[modality_to_pb("video")], items[modality_to_pb("audio")]
    assert (video.num_frames, video.width, video.height, video.last_frame_s) == (8, 320, 240, 3.5)
    assert audio.seconds == 5.0 and not video.derived_from_media_limits
    # The engine's worker applies the exact per-item maxima, and builds its budget from them.
    assert applied.max_tokens_per_item["video"] == video.applied_tokens == video.exact_tokens < MAX_MODEL_LEN
    assert applied.max_tokens_per_item["audio"] == audio.applied_tokens == audio.exact_tokens < MAX_MODEL_LEN
    assert applied.max_tokens_per_item["image"] == default.max_tokens_per_item["image"]
    largest = max(applied.max_tokens_per_item.values())
    assert applied.compute_budget_tokens == applied.cache_size_tokens == max(BATCH_TOKENS, largest)
    assert applied.cache_size_tokens < default.cache_size_tokens
    assert budget.encoder.cache_size_tokens == applied.cache_size_tokens  # the worker's own numbers
    assert applied.profile_items >= 1


def test_items_at_the_declared_maximum_are_served(client, budget):
    applied = budget.exact_sizing.applied.max_tokens_per_item
    result = client.generate_text(["Describe ", _video(8, fps=2.0), " and ", _audio(5.0)], sampling=GREEDY)
    by_modality = result.usage.prompt_tokens_by_modality
    assert result.usage.completion_tokens >= 1
    assert 0 < by_modality.video <= applied["video"]
    assert 0 < by_modality.audio  # prompt tokens: the audio's embeddings plus its two wrappers


@pytest.mark.parametrize(
    "part, says",
    [
        (lambda: _video(9, fps=2.0), "9 frames"),  # one frame more than declared
        (lambda: _video(8, fps=0.1), "encoder tokens"),  # same frames, timestamps up to 70 s
        (lambda: _audio(5.5), "5.50 s"),
    ],
    ids=["more-frames", "later-timestamps", "longer-audio"],
)
def test_items_over_the_declared_maximum_are_refused_naming_the_setting(client, part, says):
    with pytest.raises(Exception) as err:
        client.generate_text(["Describe ", part()], sampling=GREEDY)
    assert err.value.code == grpc.StatusCode.OUT_OF_RANGE, err.value
    assert "--exact-mm-sizing" in err.value.details and says in err.value.details, err.value.details
