"""GetBudget's view of ``--exact-mm-sizing``: vLLM's default encoder sizing beside the applied one.

The applied sizing is what the engine's worker built (``LiveBudget.encoder``, read through
``collective_rpc``). vLLM's default is computed here the way vLLM computes it
(``vllm/multimodal/encoder_budget.py::MultiModalBudget``) for the same engine settings
without the declaration (``hf_overrides`` minus ``model.item_maxima.HF_CONFIG_KEY``). The
declared items and their exact tokens come from ``model.vllm_exact_sizing.per_item_sizing``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from model.item_maxima import HF_CONFIG_KEY, AudioMaximum, ItemMaxima, VideoMaximum
from nanovl.modalities import Modality

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.engine.arg_utils import EngineArgs


@dataclass(frozen=True)
class EncoderSizing:
    """What ``MultiModalBudget`` builds from its per-item maxima (tokens; bytes = tokens x
    LLM hidden size x dtype bytes)."""

    max_tokens_per_item: Mapping[str, int]
    compute_budget_tokens: int
    cache_size_tokens: int
    cache_size_bytes: int
    profile_modality: Modality | None  # None: nothing to profile (text-only)
    profile_items: int


@dataclass(frozen=True)
class ItemMaximumReport:
    modality: Modality
    declared: str  # as the setting writes it
    derived: bool  # from the media limits
    video: VideoMaximum | None
    audio: AudioMaximum | None
    exact_tokens: int
    vllm_default_tokens: int
    applied_tokens: int


@dataclass(frozen=True)
class ExactSizingReport:
    setting: str  # "" when exact sizing is off
    vllm_default: EncoderSizing
    applied: EncoderSizing
    items: tuple[ItemMaximumReport, ...]


def encoder_sizing(mm_budget: Any, bytes_per_token: int) -> EncoderSizing:
    """An ``EncoderSizing`` from a vLLM ``MultiModalBudget``."""
    max_toks = {m: int(n) for m, n in mm_budget.mm_max_toks_per_item.items()}
    modality = mm_budget.get_modality_with_max_tokens() if max_toks and mm_budget.get_encoder_budget() > 0 else None
    return EncoderSizing(
        max_tokens_per_item=max_toks,
        compute_budget_tokens=int(mm_budget.encoder_compute_budget),
        cache_size_tokens=int(mm_budget.encoder_cache_size),
        cache_size_bytes=int(mm_budget.encoder_cache_size) * bytes_per_token,
        profile_modality=modality,
        profile_items=int(mm_budget.mm_max_items_per_batch.get(modality, 0)) if modality else 0,
    )


def without_declaration(engine_args: EngineArgs) -> EngineArgs:
    """The same engine settings with vLLM's own sizing (the declaration taken out)."""
    overrides = engine_args.hf_overrides
    if isinstance(overrides, Mapping) and HF_CONFIG_KEY in overrides:
        rest = {k: v for k, v in overrides.items() if k != HF_CONFIG_KEY}
        return dataclasses.replace(engine_args, hf_overrides=rest)
    return engine_args


def vllm_default_sizing(engine_args: EngineArgs, bytes_per_token: int) -> EncoderSizing:
    """vLLM's own encoder sizing for these settings. Blocking (vLLM builds its config and
    processor, about a second); not re-entrant (hold the planner's lock)."""
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.encoder_budget import MultiModalBudget

    config = without_declaration(engine_args).create_engine_config()
    return encoder_sizing(MultiModalBudget(config, MULTIMODAL_REGISTRY, enable_cache=False), bytes_per_token)


def item_reports(vllm_config: VllmConfig, limits: Mapping[str, int]) -> tuple[str, tuple[ItemMaximumReport, ...]]:
    """The setting (as applied) and one report per declared modality. Blocking."""
    from model.vllm_exact_sizing import declared_maxima, per_item_sizing

    maxima: ItemMaxima | None = declared_maxima(vllm_config.model_config.hf_config)
    if maxima is None:
        return "", ()
    enabled = {m: 1 for m, n in limits.items() if n > 0}
    sizing = per_item_sizing(vllm_config.model_config, enabled)
    reports = []
    for modality, item in (("video", maxima.video), ("audio", maxima.audio)):
        if item is None or modality not in sizing.exact:
            continue
        reports.append(
            ItemMaximumReport(
                modality=modality,  # type: ignore[arg-type]
                declared=item.spec(),
                derived=modality in maxima.derived,
                video=item if isinstance(item, VideoMaximum) else None,
                audio=item if isinstance(item, AudioMaximum) else None,
                exact_tokens=int(sizing.exact[modality]),
                vllm_default_tokens=int(sizing.vllm_default[modality]),
                applied_tokens=int(sizing.applied[modality]),
            )
        )
    return maxima.spec(), tuple(reports)
