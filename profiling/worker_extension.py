"""Methods nanovl adds to vLLM's GPU/CPU worker (``--worker-extension-cls``).

They run inside the worker process, where the model's tensors live, and are called from
the front end through ``AsyncLLM.collective_rpc("<method name>")``. Return values are
plain lists/dicts/numbers because they cross vLLM's RPC serialization.
"""

from __future__ import annotations

import torch


def _unpacked_weight(module: torch.nn.Module) -> torch.Tensor | None:
    """The weight of a linear layer whose weight vLLM's CPU path repacked.

    On CPU, vLLM moves linear weights into oneDNN / SGL packed handles and leaves an
    empty ``weight``. Applying the layer to an identity matrix returns ``W.T`` exactly
    (each output is one weight times 1, summed with zeros), so the loaded values can
    still be read back and checked.
    """
    # Causal-conv weights repacked for the CPU kernel keep the original beside them.
    stashed = getattr(module, "_cpu_unpacked_conv_weight", None)
    if stashed is not None:
        return stashed
    weight = getattr(module, "weight", None)
    if weight is None or weight.numel() != 0 or not hasattr(module, "cpu_linear"):
        return None
    in_features = getattr(module, "input_size_per_partition", None) or module.input_size
    eye = torch.eye(in_features, dtype=weight.dtype)
    with torch.no_grad():
        return module.cpu_linear(eye, weight, None).t().contiguous()


class NanovlWorkerExtension:
    """Mixed into vLLM's worker class; ``self`` is the worker."""

    def nanovl_engine_parameters(self) -> dict[str, torch.Tensor]:
        model = self.model_runner.model
        tensors: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        for name, param in model.named_parameters():
            if name.endswith(".weight"):
                owner = modules.get(name.rsplit(".", 1)[0])
                unpacked = _unpacked_weight(owner) if owner is not None else None
                if unpacked is not None:
                    tensors[name] = unpacked
                    continue
            tensors[name] = param.data
        return tensors

    def nanovl_check_weights(self, checkpoint: str) -> dict[str, list]:
        from model.weights import compare, load_checkpoint_tensors

        buffers = dict(self.model_runner.model.named_buffers())
        return compare(self.nanovl_engine_parameters(), buffers, load_checkpoint_tensors(checkpoint))
