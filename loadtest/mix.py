"""Workload mixes by modality: ``text=0.2,image=0.4,video=0.2,audio=0.2``.

An entry is a single modality or several media joined with ``+`` (``image+audio``: one
prompt carrying both); every prompt also has a text part. Weights are relative and
normalised; an entry without ``=weight`` weighs 1.

Two more kinds stand alone, for reasoning models (Nemotron 3): ``reasoning`` (a chat text
prompt with thinking on and a thinking budget) and ``tools`` (a chat text prompt declaring
a tool, tool choice auto).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from nanovl.errors import InvalidArgument
from nanovl.modalities import MODALITIES as MEDIA_MODALITIES

__all__ = ["CHAT_KINDS", "MEDIA_MODALITIES", "MODALITIES", "Mix", "MixEntry", "kind_schedule"]

MODALITIES = ("text", *MEDIA_MODALITIES)  # the kinds of request a mix names
CHAT_KINDS = ("reasoning", "tools")  # text prompts that use the server's reasoning / tool-call parser


@dataclass(frozen=True)
class MixEntry:
    kind: str  # "text", "image", "video", "audio", or media joined by "+" in canonical order
    weight: float  # normalised: the entries of a Mix sum to 1

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("text",) if self.kind in CHAT_KINDS else tuple(self.kind.split("+"))


def _canonical_kind(raw: str) -> str:
    names = [n.strip().lower() for n in raw.split("+")]
    if len(names) == 1 and names[0] in CHAT_KINDS:
        return names[0]
    for n in names:
        if n not in MODALITIES:
            raise InvalidArgument(
                f"--mix: unknown modality {n!r}; use {', '.join(MODALITIES)} (media may be joined with '+') "
                f"or, alone, {' or '.join(CHAT_KINDS)}"
            )
    if len(set(names)) != len(names):
        raise InvalidArgument(f"--mix: {raw!r} names a modality twice")
    if len(names) > 1 and "text" in names:
        raise InvalidArgument(f"--mix: {raw!r}: every prompt already has a text part; combine only media with '+'")
    return "+".join(sorted(names, key=MODALITIES.index))


@dataclass(frozen=True)
class Mix:
    entries: tuple[MixEntry, ...]

    @staticmethod
    def parse(spec: str) -> Mix:
        """Parse ``kind=weight,kind=weight,...`` (see the module doc)."""
        raw: list[tuple[str, float]] = []
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, value = item.partition("=")
            try:
                weight = float(value) if sep else 1.0
            except ValueError:
                raise InvalidArgument(f"--mix: weight of {name!r} must be a number, got {value!r}") from None
            if not weight >= 0 or weight == float("inf"):
                raise InvalidArgument(f"--mix: weight of {name!r} must be a finite number >= 0, got {value!r}")
            raw.append((_canonical_kind(name), weight))
        kinds = [k for k, _ in raw]
        if len(set(kinds)) != len(kinds):
            raise InvalidArgument(f"--mix: {spec!r} lists a kind twice")
        total = sum(w for _, w in raw)
        if not raw or total <= 0:
            raise InvalidArgument(f"--mix: {spec!r} has no kind with a positive weight, e.g. 'text=0.5,image=0.5'")
        return Mix(tuple(MixEntry(k, w / total) for k, w in raw if w > 0))

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(e.kind for e in self.entries)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Every modality any entry uses (text always: every prompt has a text part)."""
        used = {m for e in self.entries for m in e.modalities} | {"text"}
        return tuple(m for m in MODALITIES if m in used)

    @property
    def chat_kinds(self) -> tuple[str, ...]:
        """The reasoning / tools kinds the mix uses."""
        used = {e.kind for e in self.entries}
        return tuple(k for k in CHAT_KINDS if k in used)

    def __str__(self) -> str:
        return ",".join(f"{e.kind}={e.weight:.4g}" for e in self.entries)


def kind_schedule(mix: Mix, rng: np.random.Generator, block: int) -> Iterator[str]:
    """Endless sequence of request kinds in the mix's proportions.

    Each block of ``block`` requests is composed by largest deficit (after ``n`` requests
    every kind's count is within 1 of ``weight * n``) and then shuffled, so proportions are
    exact even for small runs while the order stays random.
    """
    if block < 1:
        raise InvalidArgument(f"block must be >= 1, got {block}")
    weights = np.array([e.weight for e in mix.entries])
    counts = np.zeros(len(weights))
    issued = 0
    while True:
        batch: list[str] = []
        for _ in range(block):
            issued += 1
            j = int(np.argmax(weights * issued - counts))
            counts[j] += 1
            batch.append(mix.entries[j].kind)
        rng.shuffle(batch)  # type: ignore[arg-type]
        yield from batch
