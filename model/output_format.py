"""How a checkpoint's output is read: which of vLLM's reasoning and tool-call parsers fit it.

Nemotron 3 (the ``*_Omni_Reasoning_V3`` architectures) answers as ``<think>…</think>``
followed by the answer, and calls tools as
``<tool_call><function=NAME><parameter=K>V</parameter></function></tool_call>``:

- reasoning: vLLM's ``nemotron_v3`` reasoning parser (``vllm/parser/nemotron_v3.py``:
  the Qwen3 ``<think>`` format with ChatML turn boundaries; it reads ``enable_thinking``
  from the chat template kwargs);
- tool calls: vLLM's ``qwen3_coder`` tool-call parser, with auto tool choice.

Both are what NVIDIA's vLLM deployment cookbook for Nemotron-3-Nano-Omni passes
(NVIDIA-NeMo/Nemotron ``usage-cookbook/Nemotron-3-Nano-Omni/vllm_cookbook.ipynb``:
``--enable-auto-tool-choice --tool-call-parser qwen3_coder --reasoning-parser
nemotron_v3``), as does the vLLM recipe for the text-only Nemotron 3 Nano
(``--tool-call-parser qwen3_coder``; ``qwen3_xml`` is the same vLLM class).

``NemotronH_Nano_VL_V2`` checkpoints get no default: their reasoning and tool formats
differ by release, so an operator names parsers explicitly.

Pure data, no vLLM import: ``nanovl serve`` decides before vLLM loads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from model.checkpoint import V3_ARCHITECTURES

NEMOTRON_V3_REASONING_PARSER = "nemotron_v3"
NEMOTRON_V3_TOOL_CALL_PARSER = "qwen3_coder"
# What an operator passes to turn a default off (vLLM's flags have no word for it).
NO_PARSER = "none"


@dataclass(frozen=True)
class OutputFormat:
    """The parsers a checkpoint's architecture implies ("" = none)."""

    reasoning_parser: str = ""
    tool_call_parser: str = ""


def output_format_for(architectures: list[str] | tuple[str, ...]) -> OutputFormat:
    """Default parsers for a checkpoint with these ``config.json`` architectures: the
    Nemotron 3 ones for a V3 architecture, none otherwise (see the module docstring)."""
    if any(a in V3_ARCHITECTURES for a in architectures):
        return OutputFormat(NEMOTRON_V3_REASONING_PARSER, NEMOTRON_V3_TOOL_CALL_PARSER)
    return OutputFormat()


def output_format_of(model: str | os.PathLike[str]) -> OutputFormat:
    """Default parsers for a local checkpoint directory (its ``config.json``); none for a
    hub id or a directory without a readable config (vLLM reports those itself)."""
    config = Path(model) / "config.json"
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return OutputFormat()
    return output_format_for([a for a in architectures if isinstance(a, str)])


def resolve_parser(given: str | None, default: str) -> str:
    """The parser in effect: ``given`` (``"none"`` or ``""`` for none), else ``default``."""
    if given is None:
        return default
    return "" if given in (NO_PARSER, "") else given
