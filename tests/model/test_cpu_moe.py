"""nanovl's CPU experts for non-gated MoE (model/cpu_moe.py), without an engine.

The expert math is checked against transformers' NemotronHExperts (the Hugging Face
reference for Nemotron 3's relu2 experts) on the same weights and routing; routing,
routed scaling and shared experts are vLLM's own and run in the engine test."""

from __future__ import annotations

import types

import pytest
import torch

from model import cpu_moe


def test_install_adds_the_experts_once_as_the_last_cpu_choice():
    from vllm.model_executor.layers.fused_moe.oracle import unquantized

    assert cpu_moe.install() and cpu_moe.install()  # idempotent
    kernels = unquantized.backend_to_kernel_cls(unquantized.UnquantizedMoeBackend.CPU)
    assert kernels[-1] is cpu_moe._experts_class()
    assert kernels.count(kernels[-1]) == 1


@pytest.mark.parametrize("expert_map", [False, True])
def test_experts_match_transformers_reference(expert_map):
    from transformers import NemotronHConfig
    from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHExperts
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation, apply_moe_activation

    experts, hidden, inter, tokens, top_k = 8, 64, 32, 11, 2
    g = torch.Generator().manual_seed(0)
    ref = NemotronHExperts(
        NemotronHConfig(
            n_routed_experts=experts, hidden_size=hidden, moe_intermediate_size=inter, mlp_hidden_act="relu2"
        )
    )
    with torch.no_grad():
        ref.up_proj.copy_(torch.randn(experts, inter, hidden, generator=g) * 0.1)
        ref.down_proj.copy_(torch.randn(experts, hidden, inter, generator=g) * 0.1)
    x = torch.randn(tokens, hidden, generator=g)
    ids = torch.stack([torch.randperm(experts, generator=g)[:top_k] for _ in range(tokens)]).to(torch.int32)
    weights = torch.rand(tokens, top_k, generator=g)
    want = ref(x, ids.long(), weights)

    cls = cpu_moe._experts_class()
    fake = types.SimpleNamespace(
        w1_bias=None,
        w2_bias=None,
        activation=lambda act, out, inp: apply_moe_activation(act, out, inp),
    )
    # With an expert map (expert parallelism), global ids map to local ones; -1 = not here.
    emap = torch.arange(experts, dtype=torch.int32) if expert_map else None
    out = torch.empty(tokens, hidden)
    cls.apply(
        fake, out, x, ref.up_proj.data, ref.down_proj.data, weights, ids, MoEActivation.RELU2_NO_MUL,
        experts, emap, None, None, None, None, None, False,
    )  # fmt: skip
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


def test_only_non_gated_activations_are_claimed():
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    cls = cpu_moe._experts_class()
    assert cls._supports_activation(MoEActivation.RELU2_NO_MUL)
    assert not cls._supports_activation(MoEActivation.SILU)  # vLLM's own CPU kernels keep those
