"""What a router reads from a replica: one scrape of the session server's /metrics shows vLLM's
own ``vllm:`` series (labelled with the served model name, as llm-d's and the Gateway API
Inference Extension's scorers expect) beside nanovl's in-flight and queue counts; /ready and
/live answer beside them.

vLLM registers its series in the process's global registry when an ``AsyncLLM`` starts, and
the last engine started in a process owns them (``unregister_vllm_metrics``). This module runs
before ``tests/service/test_engine_v3.py`` starts a second engine in this process; a real
server has one engine.
"""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from nanovl.client import AsyncInferenceClient, Sampling
from tests.conftest import TEST_SERVED_MODEL_NAME

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


async def _scrape(metrics_url: str) -> Samples:
    _, text = await asyncio.to_thread(_get, f"{metrics_url}/metrics")
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


async def test_one_scrape_shows_vllm_series_with_the_served_model_name_and_nanovl_load(
    metrics_url, grpc_target, engine
):
    assert engine.summary.served_model_name == TEST_SERVED_MODEL_NAME != engine.summary.model
    async with AsyncInferenceClient(grpc_target) as client:
        long = asyncio.create_task(client.generate_text(["count"], sampling=Sampling(max_tokens=200, ignore_eos=True)))
        while True:  # scrape while the request is generating
            during = await _scrape(metrics_url)
            if any(v >= 1 for labels, v in during.get("nanovl_requests_in_flight", []) if labels["rpc"] == "Generate"):
                break
            assert not long.done(), "the request ended before a scrape saw it in flight"
            await asyncio.sleep(0.02)
        await long
    after = await _scrape(metrics_url)

    # vLLM's scheduler gauges, per engine (data-parallel rank), named by the served model name.
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"):
        assert name in after, sorted(n for n in after if n.startswith("vllm:"))
        assert {labels["model_name"] for labels, _ in after[name]} == {TEST_SERVED_MODEL_NAME}, after[name]
        assert {labels["engine"] for labels, _ in after[name]} == {"0"}
    assert any(n.startswith("vllm:request_success") for n in after)
    # nanovl's own counts beside them: in flight by RPC, its queue before the engine, admission.
    assert ({"rpc": "Generate"}, 0.0) in after["nanovl_requests_in_flight"]
    assert after["nanovl_requests_queued"] == [({}, 0.0)]
    assert after["nanovl_requests_admitted"] == [({}, 0.0)]
    assert after["nanovl_requests_uploading"] == [({}, 0.0)]
    assert after["nanovl_requests_admission_limit"] == [({}, 512.0)]
    assert during["nanovl_requests_admitted"] == [({}, 1.0)]

    assert await asyncio.to_thread(_get, f"{metrics_url}/ready") == (200, "ready\n")
    assert await asyncio.to_thread(_get, f"{metrics_url}/live") == (200, "live\n")
