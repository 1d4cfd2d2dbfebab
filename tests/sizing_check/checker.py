"""nanovl's counts against vLLM's processor for streams of seeded random prompts.

One :class:`Reference` per (variant, max_model_len): vLLM's multimodal processor built
the way the engine builds it (``MULTIMODAL_REGISTRY.create_processor`` over the
checkpoint's ``ModelConfig``), an in-process processor cache of vLLM's own
(``MultiModalProcessorOnlyCache``, the same get/put as the server's sender cache), and
nanovl's geometry built independently from the checkpoint directory (what the planner
uses). Each prompt runs through vLLM twice in the same order, with the cache off and
with one cache for the whole stream, carrying the ``multi_modal_uuids`` nanovl's server
would attach (``model.processor_cache``). A prompt matches when every item's placeholder
length and embedding count, and the whole prompt's length, equal nanovl's prediction,
or when nanovl refuses it and vLLM's processor fails on it (processing all its items
together, with no cache: a refused prompt never reaches vLLM, so it neither fills nor
reads the stream's cache).

``baseline=True`` predicts as nanovl did before this checker existed: no item keys,
videos at 2 fps with frames 0..n-1 whatever their metadata, and no refusal of images
the dynamic tiler cannot process.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from model.processor_cache import multi_modal_uuids
from model.tiny import ensure_tiny_checkpoint
from model.token_accounting import (
    ItemTokens,
    ModelGeometry,
    audio_tokens,
    dummy_text_length,
    images_tokens,
    video_tokens,
)
from model.variants import V3_VARIANTS
from nanovl.errors import InvalidArgument
from tests.sizing_check.cases import (
    KINDS,
    SAMPLE_RATE,
    Case,
    CaseStream,
    ImageSpec,
    Kind,
    Spec,
    VideoSpec,
    modality_of,
)

TAGS = {"image": "<image>", "video": "<video>", "audio": "<so_embedding>"}
# The dynamic tiler's budget binds at small lengths; 300 and 512 are the cases.
MAX_MODEL_LENS = (300, 512, 1024, 2048, 8192)


@dataclass
class Reference:
    """vLLM's processor (and its cache) and nanovl's geometry for one setting."""

    variant: str
    max_model_len: int
    processor: Any
    cache: Any
    geometry: ModelGeometry

    @classmethod
    def build(cls, variant: str, max_model_len: int) -> Reference:
        from vllm.engine.arg_utils import EngineArgs
        from vllm.multimodal import MULTIMODAL_REGISTRY
        from vllm.multimodal.cache import MultiModalProcessorOnlyCache

        path = ensure_tiny_checkpoint(variant)  # type: ignore[arg-type]
        model_config = EngineArgs(
            model=str(path), trust_remote_code=True, max_model_len=max_model_len, mm_processor_cache_gb=1
        ).create_model_config()
        return cls(
            variant=variant,
            max_model_len=max_model_len,
            processor=MULTIMODAL_REGISTRY.create_processor(model_config),
            cache=MultiModalProcessorOnlyCache(model_config),
            geometry=ModelGeometry.from_checkpoint(path, max_model_len=max_model_len),
        )

    @property
    def supports_audio(self) -> bool:
        return self.geometry.supports_audio


@functools.cache
def reference(variant: str, max_model_len: int) -> Reference:
    """One :class:`Reference` per setting and process (building one takes seconds)."""
    return Reference.build(variant, max_model_len)


# ------------------------------------------------------------------------ media


def _media(spec: Spec) -> Any:
    """The item as vLLM's ``multi_modal_data`` takes it; its content follows ``spec.content``."""
    c = spec.content
    if isinstance(spec, ImageSpec):
        return Image.new("RGB", (spec.width, spec.height), (c & 255, (c >> 8) & 255, (c >> 16) & 255))
    if isinstance(spec, VideoSpec):
        frames = np.zeros((spec.num_frames, spec.height, spec.width, 3), np.uint8)
        frames[0, 0, 0] = (c & 255, (c >> 8) & 255, (c >> 16) & 255)
        last = spec.frame_indices[-1] + 1
        metadata = {
            "fps": spec.fps,
            "frames_indices": list(spec.frame_indices),
            "total_num_frames": last,
            "duration": last / spec.fps,
            "video_backend": "nanovl",
            "do_sample_frames": False,
        }
        return frames, metadata
    wave = np.zeros(spec.num_samples, np.float32)
    wave[0] = c * 1e-6
    return wave, SAMPLE_RATE


def _prompt(case: Case) -> str:
    return "Look: " + " and ".join(TAGS[modality_of(s)] for s in case.items) + ". Describe."


# ------------------------------------------------------------------------ both sides


@dataclass(frozen=True)
class Outcome:
    """Per item (prompt tokens, embeddings) in prompt order and the prompt's length; or an error."""

    items: tuple[tuple[int, int], ...] = ()
    prompt_length: int = 0
    error: str = ""


def _by_modality(case: Case) -> dict[str, list[Spec]]:
    out: dict[str, list[Spec]] = defaultdict(list)
    for spec in case.items:
        out[modality_of(spec)].append(spec)
    return out


def _legacy_images(geom: ModelGeometry, sizes: list[tuple[int, int]], text: int) -> list[ItemTokens]:
    """nanovl before the thin-image rule: vLLM's tiler called as is (ZeroDivisionError
    escaped as an internal error; 0-patch images counted as 0 tokens, accepted)."""
    from model import token_accounting as ta

    tiler = geom.processor.dynamic_tiler
    if tiler is None:
        return images_tokens(geom, sizes)
    budget = tiler.max_num_tokens_available(text_prompt_length=text)
    params = tiler.compute_params([ta._SizeOnlyImage(w, h) for w, h in sizes], budget)
    out = []
    for p in params:
        prompt, embeds = ta._count(geom.processor.get_image_repl(p.num_embeddings, None))
        out.append(ItemTokens("image", prompt, embeds, p.num_embeddings, None))  # type: ignore[arg-type]
    return out


def predict(ref: Reference, case: Case, media: dict[str, list[Any]], *, baseline: bool) -> tuple[Outcome, Any]:
    """nanovl's counts for the case and the ``multi_modal_uuids`` its server would send."""
    geom = ref.geometry
    by = _by_modality(case)
    uuids = None
    try:
        if not baseline:
            uuids = multi_modal_uuids(geom, media, nonce=f"case{case.index}")
        text = dummy_text_length(geom, num_videos=len(by["video"]), num_audios=len(by["audio"]))
        sizes = [(s.width, s.height) for s in by["image"]]  # type: ignore[union-attr]
        if not sizes:
            images: list[ItemTokens] = []
        elif baseline:
            images = _legacy_images(geom, sizes, text)
        else:
            images = images_tokens(geom, sizes, text_prompt_length=text)
        counted = {"image": iter(images)}
        items = []
        for spec in case.items:
            if isinstance(spec, ImageSpec):
                it = next(counted["image"])
            elif isinstance(spec, VideoSpec):
                if baseline:
                    it = video_tokens(geom, spec.num_frames, spec.width, spec.height)
                else:
                    it = video_tokens(
                        geom, spec.num_frames, spec.width, spec.height, fps=spec.fps, frame_indices=spec.frame_indices
                    )
            else:
                it = audio_tokens(geom, num_samples=spec.num_samples)
            items.append((it.prompt_tokens, it.encoder_tokens))
    except InvalidArgument as exc:
        return Outcome(error=f"refused: {exc}"), uuids
    except Exception as exc:  # the baseline's ZeroDivisionError, or a bug
        return Outcome(error=f"crashed: {type(exc).__name__}: {exc}"), uuids
    tok = geom.processor.tokenizer
    prompt = _prompt(case)
    tags = sum(len(tok(TAGS[modality_of(s)], add_special_tokens=False).input_ids) for s in case.items)
    text_tokens = len(tok(prompt, add_special_tokens=False).input_ids) - tags
    return Outcome(tuple(items), text_tokens + sum(p for p, _ in items)), uuids


def actual(ref: Reference, case: Case, media: dict[str, list[Any]], uuids: Any, *, cache: bool) -> Outcome:
    """What vLLM's processor does with the case (``cache``: through the stream's cache)."""
    import torch

    proc = ref.processor
    try:
        with torch.compiler.set_stance("force_eager"):
            out = proc(
                _prompt(case),
                proc.info.parse_mm_data(media),
                mm_uuid_items=uuids,
                cache=ref.cache if cache else None,
            )
    except Exception as exc:
        root = exc
        while root.__cause__ is not None:  # vLLM wraps the processor's own error
            root = root.__cause__
        return Outcome(error=f"{type(root).__name__}: {root}")
    per = {m: [(int(r.length), int(r.get_num_embeds())) for r in rs] for m, rs in out["mm_placeholders"].items()}
    order = {m: iter(v) for m, v in per.items()}
    items = tuple(next(order[modality_of(s)]) for s in case.items)
    return Outcome(items, len(out["prompt_token_ids"]))


def agree(predicted: Outcome, real: Outcome) -> bool:
    if predicted.error or real.error:
        return predicted.error.startswith("refused") and bool(real.error)
    return predicted == real


# ------------------------------------------------------------------------ runs


@dataclass
class Row:
    variant: str
    kind: Kind
    cache: bool
    cases: int = 0
    mismatches: int = 0
    refused: int = 0
    seconds: float = 0.0


@dataclass
class Mismatch:
    variant: str
    max_model_len: int
    cache: bool
    case: Case
    predicted: Outcome
    real: Outcome

    def describe(self) -> str:
        items = ", ".join(_describe(s) for s in self.case.items)
        return (
            f"{self.variant} max_model_len={self.max_model_len} cache={'on' if self.cache else 'off'} "
            f"{self.case.kind} #{self.case.index}: [{items}]\n    nanovl: {_outcome(self.predicted)}\n"
            f"    vLLM:   {_outcome(self.real)}"
        )


def _describe(spec: Spec) -> str:
    if isinstance(spec, ImageSpec):
        return f"image {spec.width}x{spec.height}#{spec.content}"
    if isinstance(spec, VideoSpec):
        idx = spec.frame_indices
        shown = ",".join(map(str, idx[:4])) + (",...," + str(idx[-1]) if len(idx) > 4 else "")
        return f"video {spec.num_frames}x{spec.width}x{spec.height}@{spec.fps:g}fps[{shown}]#{spec.content}"
    return f"audio {spec.num_samples} samples#{spec.content}"


def _outcome(o: Outcome) -> str:
    return o.error[:300] if o.error else f"items {list(o.items)}, prompt {o.prompt_length} tokens"


@dataclass
class Report:
    rows: dict[tuple[str, Kind, bool], Row] = field(default_factory=dict)
    mismatches: list[Mismatch] = field(default_factory=list)

    def row(self, variant: str, kind: Kind, cache: bool) -> Row:
        return self.rows.setdefault((variant, kind, cache), Row(variant, kind, cache))

    def merge(self, other: Report) -> None:
        for key, row in other.rows.items():
            mine = self.row(*key)
            mine.cases += row.cases
            mine.mismatches += row.mismatches
            mine.refused += row.refused
            mine.seconds += row.seconds
        self.mismatches.extend(other.mismatches)

    @property
    def total_mismatches(self) -> int:
        return sum(r.mismatches for r in self.rows.values())

    def table(self) -> str:
        lines = [
            f"{'variant':<18} {'modality':<8} {'cache':<5} {'cases':>6} {'refused':>7} {'mismatches':>10} {'s':>7}"
        ]
        variants = list(dict.fromkeys(v for v, _, _ in self.rows))
        ordered = sorted(self.rows.values(), key=lambda r: (variants.index(r.variant), KINDS.index(r.kind), r.cache))
        for r in ordered:
            lines.append(
                f"{r.variant:<18} {r.kind:<8} {'on' if r.cache else 'off':<5} {r.cases:>6} {r.refused:>7} "
                f"{r.mismatches:>10} {r.seconds:>7.1f}"
            )
        cases = sum(r.cases for r in self.rows.values())
        lines.append(f"{'total':<18} {'':<8} {'':<5} {cases:>6} {'':>7} {self.total_mismatches:>10}")
        return "\n".join(lines)


def kinds_for(ref_supports_audio: bool) -> tuple[Kind, ...]:
    return tuple(k for k in KINDS if k != "audio" or ref_supports_audio)


def variant_supports_audio(variant: str) -> bool:
    import json

    path = ensure_tiny_checkpoint(variant)  # type: ignore[arg-type]
    return json.loads((path / "config.json").read_text()).get("sound_config") is not None


def split_cases(total: int, chosen: Sequence[str]) -> dict[str, dict[Kind, int]]:
    """``total`` prompts of each kind spread evenly over the ``chosen`` variants that
    support it (audio: only those with an audio encoder)."""
    audio = [v for v in chosen if variant_supports_audio(v)]
    out: dict[str, dict[Kind, int]] = {}
    for v in chosen:
        out[v] = {k: -(-total // len(chosen)) for k in KINDS if k != "audio"}
        if v in audio:
            out[v]["audio"] = -(-total // len(audio))
    return out


def check_variant(
    variant: str,
    *,
    cases_per_kind: int | dict[Kind, int],
    seed: int,
    report: Report,
    baseline: bool = False,
    max_model_lens: Sequence[int] = MAX_MODEL_LENS,
    progress: Any = None,
) -> None:
    """``cases_per_kind`` prompts of each kind (image, video, audio, mixed), spread over
    ``max_model_lens``, cache off then on, into ``report``."""
    refs = [reference(variant, n) for n in max_model_lens]
    supports_audio = refs[0].supports_audio
    kinds = kinds_for(supports_audio)
    # One stream per setting, so that its cache sees the items come back.
    streams = [CaseStream(seed=seed * 1000 + i, supports_audio=supports_audio) for i in range(len(refs))]
    cases: list[tuple[Reference, Case]] = []
    counts = cases_per_kind if isinstance(cases_per_kind, dict) else dict.fromkeys(kinds, cases_per_kind)
    for k, kind in enumerate(kinds):
        for i in range(counts.get(kind, 0)):
            j = (i + k) % len(refs)
            cases.append((refs[j], streams[j].case(kind, len(cases))))
    order = np.random.default_rng(seed).permutation(len(cases))  # kinds interleaved in each stream
    for cache in (False, True):
        for ref in refs:
            ref.cache.clear_cache()
        for n, idx in enumerate(order):
            ref, case = cases[int(idx)]
            t0 = time.perf_counter()
            media: dict[str, list[Any]] = defaultdict(list)
            for spec in case.items:
                media[modality_of(spec)].append(_media(spec))
            predicted, uuids = predict(ref, case, media, baseline=baseline)
            # A prompt nanovl refuses never reaches vLLM; what decides is whether vLLM's
            # processor can process its items at all (all of them together, as on a
            # fresh server), not whether a cache that already holds some of them hides
            # the failure, and the refused prompt must not fill the stream's cache.
            refused = predicted.error.startswith("refused")
            real = actual(ref, case, media, uuids, cache=cache and not refused)
            row = report.row(variant, case.kind, cache)
            row.cases += 1
            row.seconds += time.perf_counter() - t0
            if predicted.error and agree(predicted, real):
                row.refused += 1
            if not agree(predicted, real):
                row.mismatches += 1
                report.mismatches.append(Mismatch(variant, ref.max_model_len, cache, case, predicted, real))
            if progress is not None:
                progress(variant, cache, n + 1, len(cases))


def variants(include_v3: bool = True) -> Iterable[str]:
    yield from ("full", "no-audio", "dynamic")
    if include_v3:
        yield from V3_VARIANTS
