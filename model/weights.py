"""Where each checkpoint tensor of a ``NemotronH_Nano_VL_V2`` (or V3) checkpoint lives inside vLLM's model.

Used to prove that what vLLM loaded is exactly what the checkpoint holds (the guard
against silent weight corruption during loading). The mapping is written out here
independently of vLLM's own loaders on purpose: a check that reused the loader's
mapping could not catch the loader's mistakes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

# (pattern, replacement) applied in order to a checkpoint name.
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^language_model\.backbone\.", "language_model.model."),
    (r"^(language_model\.model\.)embeddings\.", r"\1embed_tokens."),
    (r"\.mixer\.A_log$", ".mixer.A"),
    (r"\.mixer\.[qkv]_proj\.weight$", ".mixer.qkv_proj.weight"),
    (r"^vision_model\.radio_model\.model\.blocks\.", "vision_model.model.encoder.layers."),
    (r"^vision_model\.radio_model\.model\.", "vision_model.model."),
    (r"^sound_projection\.", "sound_encoder.projection."),
)


# A routed expert's linear weight in a Hugging Face MoE checkpoint (Nemotron 3 / V3).
# vLLM's fused MoE holds all experts of a block in one tensor per projection, expert
# index first: up_proj → w13_weight[i] (non-gated MoE: w13 holds only the "w1" half),
# down_proj → w2_weight[i]; the router (gate.weight, gate.e_score_correction_bias)
# keeps its checkpoint names.
_EXPERT = re.compile(r"^(?P<block>.*\.mixer\.experts)\.(?P<index>\d+)\.(?P<proj>up|down)_proj\.weight$")
_FUSED_EXPERT_PARAM = {"up": "routed_experts.w13_weight", "down": "routed_experts.w2_weight"}


def vllm_name(checkpoint_name: str) -> str:
    name = checkpoint_name
    for pattern, repl in _RENAMES:
        name = re.sub(pattern, repl, name)
    expert = _EXPERT.match(name)
    if expert:
        return f"{expert['block']}.{_FUSED_EXPERT_PARAM[expert['proj']]}"
    return name


def expected_vllm_tensors(checkpoint_tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """vLLM parameter name → the value it must hold, derived from checkpoint tensors."""
    expected: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    experts: dict[str, dict[int, torch.Tensor]] = {}
    for name, tensor in checkpoint_tensors.items():
        target = vllm_name(name)
        expert = _EXPERT.match(name)
        if expert:
            experts.setdefault(target, {})[int(expert["index"])] = tensor
        elif name.endswith(("_proj.weight",)) and target.endswith(".qkv_proj.weight"):
            qkv.setdefault(target, {})[name.rsplit(".", 2)[-2][0]] = tensor
        elif name.endswith(".mixer.A_log"):
            expected[target] = -torch.exp(tensor.float())  # vLLM stores A, not log(-A)
        elif name.endswith(".mixer.conv1d.weight"):
            expected[target] = tensor.squeeze(1)  # [C, 1, K] → [C, K]
        else:
            expected[target] = tensor
    for target, parts in qkv.items():
        expected[target] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    for target, by_index in experts.items():
        if sorted(by_index) != list(range(len(by_index))):
            missing = sorted(set(range(max(by_index) + 1)) - set(by_index))
            raise ValueError(f"checkpoint lacks experts {missing} of {target}")
        expected[target] = torch.stack([by_index[i] for i in range(len(by_index))])  # [E, out, in]
    return expected


def load_checkpoint_tensors(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(Path(checkpoint).glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


@dataclass(frozen=True)
class WeightReport:
    matched: tuple[str, ...]
    mismatched: tuple[tuple[str, float], ...]  # (name, max abs difference)
    missing_in_engine: tuple[str, ...]  # in the checkpoint, absent from the engine
    not_in_checkpoint: tuple[str, ...]  # engine parameters the checkpoint does not provide
    skipped: tuple[str, ...] = field(default=())  # checkpoint tensors vLLM ignores by design

    @property
    def ok(self) -> bool:
        return not self.mismatched and not self.missing_in_engine

    def summary(self) -> str:
        return (
            f"{len(self.matched)} matched, {len(self.mismatched)} mismatched, "
            f"{len(self.missing_in_engine)} missing in engine, {len(self.not_in_checkpoint)} derived/unset, "
            f"{len(self.skipped)} skipped"
        )

    @classmethod
    def from_wire(cls, data: Mapping[str, list]) -> WeightReport:
        return cls(
            matched=tuple(data["matched"]),
            mismatched=tuple((n, float(d)) for n, d in data["mismatched"]),
            missing_in_engine=tuple(data["missing_in_engine"]),
            not_in_checkpoint=tuple(data["not_in_checkpoint"]),
            skipped=tuple(data["skipped"]),
        )


# Checkpoint tensors vLLM deliberately does not load (BatchNorm bookkeeping).
_IGNORED_BY_VLLM = re.compile(r"\.num_batches_tracked$")


def compare(
    engine_parameters: Mapping[str, torch.Tensor],
    engine_buffers: Mapping[str, torch.Tensor],
    checkpoint_tensors: Mapping[str, torch.Tensor],
) -> dict[str, list]:
    """Compare what the engine holds with what the checkpoint says (wire form: plain lists).

    Buffers are looked up only for checkpoint tensors (BatchNorm statistics); the engine's
    other buffers are runtime state, not weights."""
    engine_tensors = {**engine_buffers, **engine_parameters}
    expected = expected_vllm_tensors(checkpoint_tensors)
    matched, mismatched, missing, skipped = [], [], [], []
    for name, want in sorted(expected.items()):
        if _IGNORED_BY_VLLM.search(name):
            skipped.append(name)
            continue
        got = engine_tensors.get(name)
        if got is None:
            missing.append(name)
            continue
        got = got.detach().to("cpu")
        if tuple(got.shape) != tuple(want.shape):
            # vLLM pads vocabularies; the checkpoint must match the leading rows.
            if got.dim() == want.dim() and all(g >= w for g, w in zip(got.shape, want.shape, strict=False)):
                got = got[tuple(slice(0, w) for w in want.shape)]
            else:
                mismatched.append((name, float("inf")))
                continue
        diff = (got.float() - want.to(got.dtype).float()).abs().max().item() if want.numel() else 0.0
        (matched if diff == 0.0 else mismatched).append(name if diff == 0.0 else (name, diff))
    not_in_checkpoint = sorted(set(engine_parameters) - set(expected))
    return {
        "matched": matched,
        "mismatched": mismatched,
        "missing_in_engine": missing,
        "not_in_checkpoint": not_in_checkpoint,
        "skipped": skipped,
    }
