"""Seeded random prompts for the sizing checker: realistic and hostile item sizes.

Images: common and photo sizes, large ones, tiny ones, thin ones (1 to 40 px on one
side), sides at tile and patch multiples and one off. Videos: 1 to 256 frames, sizes
like the images', frame rates from 1 to 120 fps (fractional, and nanovl's 1000 Hz
millisecond clock), frame index patterns (from 0, from an offset, strided, uniform over a
long source, random). Audio: 1 sample to 600 s, clustered at the 30 s clip boundaries.
Multi-item prompts mix them; a share of items repeat earlier ones (same content), so a
processor cache hits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Kind = Literal["image", "video", "audio", "mixed"]
KINDS: tuple[Kind, ...] = ("image", "video", "audio", "mixed")

SAMPLE_RATE = 16_000
CLIP_SAMPLES = 30 * SAMPLE_RATE
MAX_IMAGE_PIXELS = 2_500_000  # vLLM resizes from the source: pixel work, not counts, grows with it
MAX_VIDEO_BYTES = 3 << 20
COMMON_FPS = (23.976, 24.0, 25.0, 29.97, 30.0, 50.0, 59.94, 60.0, 119.88, 120.0)


@dataclass(frozen=True)
class ImageSpec:
    width: int
    height: int
    content: int  # distinct content per id (equal ids: the same image)


@dataclass(frozen=True)
class VideoSpec:
    width: int
    height: int
    fps: float
    frame_indices: tuple[int, ...]
    content: int

    @property
    def num_frames(self) -> int:
        return len(self.frame_indices)


@dataclass(frozen=True)
class AudioSpec:
    num_samples: int
    content: int


Spec = ImageSpec | VideoSpec | AudioSpec


@dataclass(frozen=True)
class Case:
    kind: Kind
    index: int
    items: tuple[Spec, ...]  # in prompt order

    def modalities(self) -> list[str]:
        return [modality_of(s) for s in self.items]


def modality_of(spec: Spec) -> str:
    return "image" if isinstance(spec, ImageSpec) else "video" if isinstance(spec, VideoSpec) else "audio"


def _int(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi]."""
    return int(rng.integers(lo, hi + 1))


def _log_int(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Log-uniform integer in [lo, hi]."""
    return int(min(hi, max(lo, round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))))


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    r = rng.random()
    if r < 0.45:
        w, h = _int(rng, 16, 1600), _int(rng, 16, 1600)
    elif r < 0.5:  # large: the pixel cap keeps the aspect ratio
        w, h = _int(rng, 1000, 6000), _int(rng, 1000, 6000)
    elif r < 0.65:  # thin: the dynamic tiler's hard case
        short, long = _int(rng, 1, 40), _log_int(rng, 60, 10000)
        w, h = (short, long) if rng.random() < 0.5 else (long, short)
    elif r < 0.72:
        w, h = _int(rng, 1, 32), _int(rng, 1, 32)
    elif r < 0.86:
        aw, ah = [(4, 3), (3, 2), (16, 9), (21, 9), (1, 1), (9, 16), (3, 4), (2, 3)][_int(rng, 0, 7)]
        k = _int(rng, 8, 250)
        w, h = aw * k, ah * k
    else:  # at and one off the tile (224) and patch (16) grids
        unit = 224 if rng.random() < 0.5 else 16
        w = unit * _int(rng, 1, 20) + _int(rng, -1, 1)
        h = unit * _int(rng, 1, 20) + _int(rng, -1, 1)
    w, h = max(1, w), max(1, h)
    while w * h > MAX_IMAGE_PIXELS:
        w, h = max(1, w * 3 // 4), max(1, h * 3 // 4)
    return w, h


def _fps(rng: np.random.Generator) -> float:
    r = rng.random()
    if r < 0.35:
        return float(rng.uniform(1.0, 120.0))
    if r < 0.65:
        return float(COMMON_FPS[_int(rng, 0, len(COMMON_FPS) - 1)])
    if r < 0.8:
        return float(_int(rng, 1, 120))
    return 1000.0  # nanovl's server: indices are milliseconds on a 1000 Hz clock


def frame_indices(rng: np.random.Generator, n: int, fps: float) -> tuple[int, ...]:
    if fps == 1000.0:  # frames sampled at some rate, times in ms
        rate = float(rng.uniform(0.05, 60.0))
        start = 0.0 if rng.random() < 0.6 else float(rng.uniform(0, 3600))
        return tuple(round((start + i / rate) * 1000) for i in range(n))
    r = rng.random()
    if r < 0.3:
        return tuple(range(n))
    if r < 0.45:
        start = _log_int(rng, 1, 500_000)
        return tuple(range(start, start + n))
    if r < 0.7:
        stride, start = _log_int(rng, 1, 2000), _int(rng, 0, 1000)
        return tuple(start + i * stride for i in range(n))
    if r < 0.85:  # uniform over a source of up to 10 hours
        total = _log_int(rng, n, int(fps * 36000))
        return tuple(int(x) for x in np.linspace(0, total - 1, n).round())
    total = _log_int(rng, n, 1_000_000)
    return tuple(sorted(int(x) for x in rng.choice(total, size=n, replace=False)))


def video_spec(rng: np.random.Generator, content: int) -> VideoSpec:
    n = _int(rng, 1, 24) if rng.random() < 0.97 else _int(rng, 25, 256)
    if rng.random() < 0.15:
        w, h = image_size(rng)
    else:
        w, h = _int(rng, 16, 640), _int(rng, 16, 640)
    while n * w * h * 3 > MAX_VIDEO_BYTES:
        w, h = max(1, w * 3 // 4), max(1, h * 3 // 4)
    fps = _fps(rng)
    return VideoSpec(w, h, fps, frame_indices(rng, n, fps), content)


def audio_samples(rng: np.random.Generator) -> int:
    r = rng.random()
    if r < 0.4:
        return _int(rng, 1600, 40 * SAMPLE_RATE)
    if r < 0.75:  # around the 30 s clip boundaries
        return max(1, _int(rng, 1, 4) * CLIP_SAMPLES + _int(rng, -800, 800))
    if r < 0.94:
        return _int(rng, 1, 1600)
    if r < 0.99:
        return _int(rng, 40 * SAMPLE_RATE, 600 * SAMPLE_RATE)
    return 600 * SAMPLE_RATE - _int(rng, 0, 3)


@dataclass
class CaseStream:
    """Prompts for one variant, in order; earlier items may come back (cache hits)."""

    seed: int
    supports_audio: bool
    reuse: float = 0.3
    _pool: dict[str, list[Spec]] = field(default_factory=lambda: {"image": [], "video": [], "audio": []})
    _next_content: int = 1

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def _item(self, modality: str) -> Spec:
        rng, pool = self._rng, self._pool[modality]
        if pool and rng.random() < self.reuse:
            return pool[_int(rng, 0, len(pool) - 1)]
        content, self._next_content = self._next_content, self._next_content + 1
        if modality == "image":
            spec: Spec = ImageSpec(*image_size(rng), content)
        elif modality == "video":
            spec = video_spec(rng, content)
        else:
            spec = AudioSpec(audio_samples(rng), content)
        pool.append(spec)
        if len(pool) > 64:
            pool.pop(0)
        return spec

    def case(self, kind: Kind, index: int) -> Case:
        rng = self._rng
        if kind == "image":
            n = 1 if rng.random() < 0.5 else _int(rng, 2, 8)  # several: the dynamic tiler's shared budget
            items = [self._item("image") for _ in range(n)]
        elif kind in ("video", "audio"):
            n = 1 if rng.random() < 0.6 else _int(rng, 2, 3)
            items = [self._item(kind) for _ in range(n)]
        else:
            modalities = ["image", "video", "audio"] if self.supports_audio else ["image", "video"]
            n = _int(rng, 2, 5)
            chosen = [modalities[_int(rng, 0, len(modalities) - 1)] for _ in range(n)]
            if len(set(chosen)) < 2:
                chosen[0] = next(m for m in modalities if m != chosen[-1])
            items = [self._item(m) for m in chosen]
        return Case(kind, index, tuple(items))
