"""Validates a ``NemotronH_Nano_VL_V2`` (or Nemotron 3 Omni V3) checkpoint directory before vLLM sees it.

vLLM reports a missing config field as an ``AttributeError`` deep inside engine
start-up, tens of seconds in; this check names the field in milliseconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.config import MODEL_TYPE, SOUND_KEYS_OWNED_BY_VLLM
from nanovl.errors import FailedPrecondition


class CheckpointError(FailedPrecondition, ValueError):
    """The checkpoint cannot be served; the message names what is wrong."""


# The Nemotron 3 Omni architectures vLLM serves with the same NemotronH_Nano_VL_V2 class.
V3_ARCHITECTURES = (
    "NemotronH_Nano_Omni_Reasoning_V3",
    "NemotronH_Super_Omni_Reasoning_V3",
    "NemotronH_Omni_Reasoning_V3",  # the V3 family's no-audio name
)
SERVED_ARCHITECTURES = (MODEL_TYPE, *V3_ARCHITECTURES)


# Every field vLLM's NemotronH_Nano_VL_V2 code and processor read.
REQUIRED_TOP = (
    "force_image_size",
    "patch_size",
    "downsample_ratio",
    "use_thumbnail",
    "template",
    "ps_version",
    "image_tag_type",
    "vit_hidden_size",
    "projector_hidden_size",
    "norm_mean",
    "norm_std",
    "text_config",
    "vision_config",
)
REQUIRED_TEXT = (
    "hidden_size",
    "vocab_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "mamba_num_heads",
    "mamba_head_dim",
    "n_groups",
    "ssm_state_size",
    "conv_kernel",
    "chunk_size",
)
REQUIRED_TEXT_ONE_OF = (("hybrid_override_pattern", "layers_block_type"),)
# Only dense MLP ("-") blocks read it; an all-MoE V3 LLM does not.
REQUIRED_TEXT_MLP = ("intermediate_size",)
# What vLLM's NemotronHMoE reads for MoE ("E") blocks. transformers' NemotronHConfig has
# defaults for all of them (8 experts, 7688 wide, ...), so a missing one would load as the
# wrong shape tens of seconds into start-up, or silently change routing
# (routed_scaling_factor). n_group / topk_group / norm_topk_prob default to the plain
# top-k routing the V3 models use and are not required.
REQUIRED_TEXT_MOE = (
    "n_routed_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "n_shared_experts",
    "moe_shared_expert_intermediate_size",
    "routed_scaling_factor",
)
_BLOCK_TYPE_CODES = {
    "mamba": "M",
    "linear_attention": "M",
    "attention": "*",
    "full_attention": "*",
    "mlp": "-",
    "moe": "E",
}
REQUIRED_VISION = ("args", "patch_size")
REQUIRED_VISION_ARGS = ("model",)
REQUIRED_SOUND = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "subsampling_factor",
    "subsampling_conv_kernel_size",
    "subsampling_conv_stride",
    "num_mel_bins",
    "sampling_rate",
    "projection_hidden_size",
    "projection_bias",
)


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    has_audio: bool
    dynamic_resolution: bool
    video_temporal_patch_size: int
    llm_hidden_size: int
    architecture: str = MODEL_TYPE
    layer_pattern: str = ""  # vLLM's hybrid_override_pattern: M Mamba, * attention, - MLP, E MoE
    num_experts: int = 0  # routed experts per MoE block (0: no MoE blocks)

    @property
    def moe(self) -> bool:
        return "E" in self.layer_pattern


def _layer_pattern(text: dict[str, Any], config_file: Path) -> str:
    pattern = text.get("hybrid_override_pattern")
    if pattern is None:
        types = text["layers_block_type"]
        unknown = sorted({t for t in types if t not in _BLOCK_TYPE_CODES})
        if unknown:
            raise CheckpointError(f"{config_file}: text_config.layers_block_type has unknown block types {unknown}")
        pattern = "".join(_BLOCK_TYPE_CODES[t] for t in types)
    unknown = sorted(set(pattern) - set("M*-E"))
    if unknown:
        raise CheckpointError(f"{config_file}: text_config.hybrid_override_pattern has unknown block codes {unknown}")
    return pattern


def _require(node: dict[str, Any], keys: tuple[str, ...], where: str, config_file: Path) -> None:
    for key in keys:
        if key not in node:
            raise CheckpointError(f"{config_file} is missing required field {where}{key}")


def validate_checkpoint(path: str | Path) -> CheckpointInfo:
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} is not a checkpoint directory: no config.json")
    try:
        cfg = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_file} is not valid JSON: {exc}") from exc
    architectures = cfg.get("architectures") or []
    architecture = next((a for a in architectures if a in SERVED_ARCHITECTURES), None)
    if architecture is None:
        raise CheckpointError(
            f"{config_file}: architectures is {architectures}; "
            f"nanovl serves {', '.join(SERVED_ARCHITECTURES)} checkpoints"
        )
    _require(cfg, REQUIRED_TOP, "", config_file)
    text = cfg["text_config"]
    _require(text, REQUIRED_TEXT, "text_config.", config_file)
    for options in REQUIRED_TEXT_ONE_OF:
        if not any(k in text for k in options):
            raise CheckpointError(
                f"{config_file} is missing required field text_config.{options[0]} (or text_config.{options[1]})"
            )
    pattern = _layer_pattern(text, config_file)
    if "-" in pattern:
        _require(text, REQUIRED_TEXT_MLP, "text_config.", config_file)
    if "E" in pattern:
        _require(text, REQUIRED_TEXT_MOE, "text_config.", config_file)
        if not 0 < int(text["num_experts_per_tok"]) <= int(text["n_routed_experts"]):
            raise CheckpointError(
                f"{config_file}: text_config.num_experts_per_tok ({text['num_experts_per_tok']}) must be between 1 "
                f"and text_config.n_routed_experts ({text['n_routed_experts']})"
            )
    vision = cfg["vision_config"]
    _require(vision, REQUIRED_VISION, "vision_config.", config_file)
    _require(vision["args"], REQUIRED_VISION_ARGS, "vision_config.args.", config_file)
    if "sound_config" not in cfg:
        raise CheckpointError(
            f"{config_file} is missing required field sound_config (set it to null for a checkpoint without audio)"
        )
    sound = cfg["sound_config"]
    if sound is not None:
        _require(sound, REQUIRED_SOUND, "sound_config.", config_file)
        for key in SOUND_KEYS_OWNED_BY_VLLM:
            if key in sound:
                raise CheckpointError(
                    f"{config_file} must not set sound_config.{key}: vLLM sets it itself "
                    "and a second value breaks engine start-up; remove the field"
                )
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(f"{path} has no *.safetensors weights")
    return CheckpointInfo(
        path=path,
        has_audio=sound is not None,
        dynamic_resolution="min_num_patches" in vision["args"],
        video_temporal_patch_size=int(vision.get("video_temporal_patch_size", 1)),
        llm_hidden_size=int(text["hidden_size"]),
        architecture=architecture,
        layer_pattern=pattern,
        num_experts=int(text["n_routed_experts"]) if "E" in pattern else 0,
    )
