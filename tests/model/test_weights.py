"""The weight-equality guard's checkpoint → vLLM mapping for MoE experts (no engine)."""

from __future__ import annotations

import pytest
import torch

from model.tiny import TinySpec, checkpoint_tensors
from model.weights import compare, expected_vllm_tensors, vllm_name

BLOCK = "language_model.backbone.layers.1.mixer."
FUSED = "language_model.model.layers.1.mixer.experts.routed_experts."


@pytest.fixture(scope="module")
def v3_tensors() -> dict[str, torch.Tensor]:
    return checkpoint_tensors(TinySpec("omni-v3"))


def test_experts_map_to_vllms_fused_layout(v3_tensors):
    assert vllm_name(BLOCK + "experts.3.up_proj.weight") == FUSED + "w13_weight"
    assert vllm_name(BLOCK + "experts.3.down_proj.weight") == FUSED + "w2_weight"
    assert (
        vllm_name(BLOCK + "gate.e_score_correction_bias")
        == "language_model.model.layers.1.mixer.gate.e_score_correction_bias"
    )
    expected = expected_vllm_tensors(v3_tensors)
    w13, w2 = expected[FUSED + "w13_weight"], expected[FUSED + "w2_weight"]
    assert w13.shape == (8, 128, 256) and w2.shape == (8, 256, 128)  # [E, out, in]
    for i in range(8):
        assert torch.equal(w13[i], v3_tensors[BLOCK + f"experts.{i}.up_proj.weight"])
        assert torch.equal(w2[i], v3_tensors[BLOCK + f"experts.{i}.down_proj.weight"])
    assert not any(".experts." in n and "routed_experts" not in n for n in expected)


def test_experts_in_the_wrong_order_are_caught(v3_tensors):
    engine = expected_vllm_tensors(v3_tensors)
    assert not compare(engine, {}, v3_tensors)["mismatched"]
    swapped = dict(engine)
    swapped[FUSED + "w13_weight"] = engine[FUSED + "w13_weight"][[1, 0, *range(2, 8)]]
    assert [n for n, _ in compare(swapped, {}, v3_tensors)["mismatched"]] == [FUSED + "w13_weight"]


def test_a_missing_expert_is_named(v3_tensors):
    partial = {k: v for k, v in v3_tensors.items() if k != BLOCK + "experts.5.up_proj.weight"}
    with pytest.raises(ValueError, match=r"lacks experts \[5\]"):
        expected_vllm_tensors(partial)
