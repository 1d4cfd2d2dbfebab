"""The embedded tiny checkpoints by name (a module of its own so a command line can list
them without importing torch, as ``model.tiny`` does)."""

from __future__ import annotations

from typing import Literal

Variant = Literal["full", "no-audio", "dynamic", "omni-v3", "omni-v3-no-audio"]
VARIANTS: tuple[Variant, ...] = ("full", "no-audio", "dynamic", "omni-v3", "omni-v3-no-audio")
# Nemotron 3 Omni (MoE LLM) variants; the others are NemotronH_Nano_VL_V2.
V3_VARIANTS: tuple[Variant, ...] = ("omni-v3", "omni-v3-no-audio")
