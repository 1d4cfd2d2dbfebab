"""The load tester against the real server (session engine): a short mixed run must
complete with zero errors and produce reports and plots that parse. Never a time."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from loadtest.report import load_result
from loadtest.smoke import run_smoke_async, smoke_config


@pytest.mark.parametrize("chunked", [False, True], ids=["generate", "stream_generate"])
async def test_mixed_smoke_run_against_the_real_server(grpc_target: str, tmp_path: Path, chunked: bool) -> None:
    requests = 12 if not chunked else 8
    outcome = await run_smoke_async(smoke_config(grpc_target, requests=requests, chunked=chunked), tmp_path)
    assert outcome.passed, outcome.problems

    result = outcome.result
    (level,) = result.levels
    assert level.overall.succeeded == requests and result.total_errors == 0
    assert {g.kind for g in level.by_kind} == {"text", "image", "video", "audio"}
    assert result.server is not None and result.server.architecture == "NemotronH_Nano_VL_V2"
    for r in level.requests:
        # ignore_eos: every request generates exactly max_tokens, counted by the server too.
        assert r.output_tokens == 8 and r.ttft_s is not None and r.prompt_tokens > 0
    by_kind = {g.kind: g for g in level.by_kind}
    # Media prompts carry their placeholder tokens: longer than the text-only ones.
    assert min(by_kind[k].prompt_tokens / by_kind[k].succeeded for k in ("image", "video")) > (
        by_kind["text"].prompt_tokens / by_kind["text"].succeeded
    )

    names = {p.name for p in outcome.files}
    assert {"results.json", "summary.csv", "requests.csv", "latency_cdf_c4.png", "concurrency_sweep.png"} <= names
    assert load_result(tmp_path / "results.json").levels[0].overall == level.overall
    assert json.loads((tmp_path / "results.json").read_text())["levels"][0]["overall"]["failed"] == 0
    with (tmp_path / "requests.csv").open() as f:
        assert len(list(csv.DictReader(f))) == requests
