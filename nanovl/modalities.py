"""The modality vocabulary, defined once.

``Modality`` names the media modalities as vLLM's ``limit_mm_per_prompt`` and
``multi_modal_data`` key them (``"image"``, ``"video"``, ``"audio"``); text is not a
multimodal item there. The protobuf enum ``nanovl.v1.Modality`` adds ``TEXT`` and
``UNSPECIFIED``; the maps below convert both ways.
"""

from __future__ import annotations

from typing import Literal

from nanovl.v1 import inference_pb2 as pb

Modality = Literal["image", "video", "audio"]
MODALITIES: tuple[Modality, ...] = ("image", "video", "audio")

# Token accounting and usage are reported per modality including text.
TokenModality = Literal["text", "image", "video", "audio"]
TOKEN_MODALITIES: tuple[TokenModality, ...] = ("text", "image", "video", "audio")

MODALITY_TO_PB: dict[str, int] = {
    "text": pb.MODALITY_TEXT,
    "image": pb.MODALITY_IMAGE,
    "video": pb.MODALITY_VIDEO,
    "audio": pb.MODALITY_AUDIO,
}
MODALITY_FROM_PB: dict[int, str] = {v: k for k, v in MODALITY_TO_PB.items()}


def modality_to_pb(modality: str | None) -> int:
    """``"image"`` → ``MODALITY_IMAGE``; None or unknown → ``MODALITY_UNSPECIFIED``."""
    return MODALITY_TO_PB.get(modality or "", pb.MODALITY_UNSPECIFIED)


def modality_name(value: int, unspecified: str = "-") -> str:
    """``MODALITY_IMAGE`` → ``"image"``; ``MODALITY_UNSPECIFIED`` (or unknown) → ``unspecified``."""
    return MODALITY_FROM_PB.get(value, unspecified)
