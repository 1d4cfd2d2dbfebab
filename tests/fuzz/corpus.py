"""Seeded generators of hostile requests, one per kind of malformed input (issue 10).

A :class:`Case` is the bytes a client sends (already serialized: the harness never lets a
client library tidy them up) plus how to send them. ``build(kind, seed)`` is
deterministic, so a failure is replayed from its kind and seed alone.
"""

from __future__ import annotations

import functools
import io
import json
import math
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import soundfile
from grpc_health.v1 import health_pb2

from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import profiling_pb2
from tests import media_fixtures as mf
from tests.fuzz import wire

GENERATE = "/nanovl.v1.Inference/Generate"
STREAM_GENERATE = "/nanovl.v1.Inference/StreamGenerate"
GET_MODEL_INFO = "/nanovl.v1.Inference/GetModelInfo"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
PROFILING = [f"/nanovl.v1.Profiling/{m.name}" for m in profiling_pb2.DESCRIPTOR.services_by_name["Profiling"].methods]
STREAMING = {
    GENERATE: (False, True),
    STREAM_GENERATE: (True, True),
    HEALTH_WATCH: (False, True),
    REFLECTION: (True, True),
}

MAX_TOKENS = 2  # every generation the fuzzer starts is short


@dataclass(frozen=True)
class Case:
    kind: str
    seed: int
    method: str
    messages: tuple[bytes, ...]
    # Streaming requests: half-close after the messages (else hold the stream open until
    # the server answers, as a client that is still uploading would).
    half_close: bool = True
    # The server must refuse this (OK is a failure); False where a mutation may still be valid.
    must_reject: bool = True
    # Pause before the last message (a slow client), or cancel after sending (a client leaving).
    cancel_after_s: float | None = None
    note: str = ""
    # Send with plain grpc.aio (no nanovl client): what a client in any language sees,
    # "Internal error from Core" included.
    raw_client: bool = False
    # "health": the plaintext health-only port (--health-port), when the run has one.
    port: str = "main"
    # Between messages, pause this long (a client trickling its upload).
    pause_s: float = 0.0
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def streams(self) -> tuple[bool, bool]:
        return STREAMING.get(self.method, self.extra.get("streams", (False, False)))


# ------------------------------------------------------------------ media corpus (valid)


@functools.cache
def media_corpus() -> dict[str, tuple[str, bytes]]:
    """Small valid media of every accepted kind: name → (modality, bytes)."""
    return {
        "png": ("image", mf.make_png(32, 32, seed=1)),
        "jpeg": ("image", mf.make_jpeg(32, 32, seed=2)),
        "webp": ("image", mf.make_webp(32, 32, seed=3)),
        "gif": ("image", mf.make_gif(32, 32, seed=4)),
        "bmp": ("image", mf.make_bmp(32, 32, seed=5)),
        "mp4": ("video", mf.make_mp4(8, 64, 32, fps=8, seed=6)),
        "webm": ("video", mf.make_webm(8, 64, 32, fps=8, seed=7)),
        "mkv": ("video", mf.make_mkv(8, 64, 32, fps=8, seed=8)),
        "mov": ("video", mf.make_mov(8, 64, 32, fps=8, seed=9)),
        "wav": ("audio", mf.make_wav(0.5, 16000, 1, seed=10)),
        "flac": ("audio", mf.make_flac(0.5, seed=11)),
        "ogg": ("audio", mf.make_ogg(0.5, seed=12)),
        "mp3": ("audio", mf.make_mp3(0.5, seed=13)),
    }


def media_part(modality: str, data: bytes, **video: object) -> pb.ContentPart:
    if modality == "image":
        return pb.ContentPart(image=pb.Image(data=data))
    if modality == "video":
        return pb.ContentPart(video=pb.Video(encoded=data, **video))
    return pb.ContentPart(audio=pb.Audio(encoded=data))


def header_part(part: pb.ContentPart) -> pb.ContentPart:
    """The part as a StreamGenerate header declares it: payload left out."""
    kind = part.WhichOneof("kind")
    out = pb.ContentPart()
    out.CopyFrom(part)
    if kind == "image":
        out.image.data = b""
    elif kind == "video":
        if out.video.WhichOneof("source") == "raw_frames":
            out.video.raw_frames.rgb24 = b""
        else:
            out.video.encoded = b""
    elif kind == "audio":
        if out.audio.WhichOneof("source") == "pcm":
            out.audio.pcm.data = b""
        else:
            out.audio.encoded = b""
    return out


def _sampling(**kw: object) -> pb.SamplingOptions:
    return pb.SamplingOptions(max_tokens=MAX_TOKENS, **kw)


def _generate(kind: str, seed: int, req: pb.GenerateRequest, *, must_reject: bool = True, note: str = "") -> Case:
    return Case(kind, seed, GENERATE, (req.SerializeToString(),), must_reject=must_reject, note=note)


def _stream(kind: str, seed: int, msgs: list[pb.GenerateChunk | bytes], *, half_close: bool, **kw: object) -> Case:
    raw = tuple(m if isinstance(m, bytes) else m.SerializeToString() for m in msgs)
    return Case(kind, seed, STREAM_GENERATE, raw, half_close=half_close, **kw)  # type: ignore[arg-type]


def _text(rng: random.Random) -> pb.ContentPart:
    return pb.ContentPart(text=rng.choice(["Hello", "Describe this.", "x", "What happens?"]))


# ------------------------------------------------------------------ kind 1: undecodable bytes

GUARANTEED_GARBAGE = [v for k, v in wire.UNDECODABLE.items() if k != "field number 0"]


def _garbage(rng: random.Random, *, generate_request: bool = False) -> bytes:
    choice = rng.randrange(6 if generate_request else 3)
    if choice == 0:
        return rng.choice(GUARANTEED_GARBAGE)
    if choice == 1:
        return rng.choice(GUARANTEED_GARBAGE) + rng.randbytes(rng.randrange(0, 64))
    if choice == 2:  # a valid message cut inside a length-delimited field
        msg = pb.GenerateRequest(parts=[pb.ContentPart(text="hello world " * rng.randint(1, 20))]).SerializeToString()
        return msg[: rng.randrange(2, len(msg) - 1)]
    if choice == 3:
        return wire.invalid_utf8_text_part() if rng.random() < 0.5 else wire.invalid_utf8_request_id()
    if choice == 4:
        return wire.generate_request_with_kwargs(wire.nested_struct(rng.randint(33, 200)))
    return wire.field_len(2, wire.tag(1, 7) + rng.randbytes(4))  # bad wire type inside a part


def raw_generate(seed: int, rng: random.Random) -> Case:
    return Case("raw.generate", seed, GENERATE, (_garbage(rng, generate_request=True),))


def raw_random_bytes(seed: int, rng: random.Random) -> Case:
    # Random bytes may happen to decode: any precise status (or OK) will do.
    return Case(
        "raw.random_bytes",
        seed,
        rng.choice([GENERATE, GET_MODEL_INFO]),
        (rng.randbytes(rng.randrange(1, 200)),),
        must_reject=False,
    )


def raw_stream_first(seed: int, rng: random.Random) -> Case:
    return _stream("raw.stream_first", seed, [rng.choice(GUARANTEED_GARBAGE)], half_close=rng.random() < 0.5)


def raw_stream_after_header(seed: int, rng: random.Random) -> Case:
    header = pb.GenerateChunk(
        header=pb.StreamGenerateHeader(
            parts=[pb.DeclaredPart(part=pb.ContentPart(image=pb.Image()))], sampling=_sampling()
        )
    )
    chunk = pb.GenerateChunk(media=pb.MediaChunk(part_index=0, data=b"\x89PNG", last=False)).SerializeToString()
    msgs: list = [header] + ([chunk] if rng.random() < 0.5 else []) + [rng.choice(GUARANTEED_GARBAGE)]
    return _stream("raw.stream_after_header", seed, msgs, half_close=rng.random() < 0.5)


def raw_other_services(seed: int, rng: random.Random) -> Case:
    method = rng.choice([GET_MODEL_INFO, HEALTH_CHECK, HEALTH_WATCH, REFLECTION, *PROFILING])
    return Case("raw.other_services", seed, method, (rng.choice(GUARANTEED_GARBAGE),), half_close=False)


def junk_other_services(seed: int, rng: random.Random) -> Case:
    """Valid but odd messages to the side services: unknown fields, unknown services."""
    unknown = wire.field_varint(rng.randint(100, 5000), rng.randrange(1 << 30))
    choice = rng.randrange(4)
    if choice == 0:
        return Case("junk.other_services", seed, GET_MODEL_INFO, (unknown,), must_reject=False)
    if choice == 1:
        service = rng.choice(["no.such.Service", "", "x" * 3000, "nanovl.v1.Inference\x00"])
        msg = health_pb2.HealthCheckRequest(service=service).SerializeToString()
        return Case("junk.other_services", seed, HEALTH_CHECK, (msg,), must_reject=False)
    from grpc_reflection.v1alpha import reflection_pb2

    req = rng.choice(
        [
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Symbol"),
            reflection_pb2.ServerReflectionRequest(file_by_filename="../../etc/passwd"),
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(),
        ]
    )
    return Case("junk.other_services", seed, REFLECTION, (req.SerializeToString(), unknown), must_reject=False)


# ------------------------------------------------------------------ kinds 2-3: media


def _mutated_media(rng: random.Random, mutate: Callable[[bytes, random.Random], bytes]) -> tuple[str, bytes, str]:
    name = rng.choice(sorted(media_corpus()))
    modality, data = media_corpus()[name]
    return modality, mutate(data, rng), name


def _truncate(data: bytes, rng: random.Random) -> bytes:
    cut = rng.choice([rng.randint(0, 24), rng.randrange(0, len(data)), len(data) - rng.randint(1, 16)])
    return data[: max(0, cut)]


def _bitflip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([1, 2, 8, 64])):
        i = rng.randrange(min(len(out), rng.choice([64, 512, len(out)])))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _magic_garbage(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randint(4, 16)] + rng.randbytes(rng.randrange(0, 4096))


def media_corrupt(kind: str, mutate: Callable[[bytes, random.Random], bytes]) -> Callable[[int, random.Random], Case]:
    def build(seed: int, rng: random.Random) -> Case:
        modality, data, name = _mutated_media(rng, mutate)
        if not data:
            data = b"\0"
        req = pb.GenerateRequest(parts=[media_part(modality, data), _text(rng)], sampling=_sampling())
        # A bit flip in a lossy payload can still decode, and decoders (as players do)
        # accept a file missing only its trailer.
        return _generate(kind, seed, req, must_reject=kind == "media.magic_garbage", note=name)

    return build


def media_streamed_corrupt(seed: int, rng: random.Random) -> Case:
    mutate = rng.choice([_truncate, _magic_garbage])
    modality, data, name = _mutated_media(rng, mutate)
    data = data or b"\0"
    part = media_part(modality, data)
    declared = pb.DeclaredPart(part=header_part(part), size_bytes=len(data))
    msgs = [
        pb.GenerateChunk(
            header=pb.StreamGenerateHeader(parts=[declared, pb.DeclaredPart(part=_text(rng))], sampling=_sampling())
        )
    ]
    size = max(1, len(data) // rng.randint(1, 4))
    for off in range(0, len(data), size):
        msgs.append(
            pb.GenerateChunk(
                media=pb.MediaChunk(part_index=0, data=data[off : off + size], last=off + size >= len(data))
            )
        )
    msgs.append(pb.GenerateChunk(end=pb.End()))
    return _stream(
        "media.streamed_corrupt", seed, msgs, half_close=True, note=name, must_reject=mutate is _magic_garbage
    )


def media_wav_header(seed: int, rng: random.Random) -> Case:
    wav = mf.make_wav(0.25, rng.choice([8000, 16000, 44100]), rng.choice([1, 2]), seed=seed % 100)
    mutate = rng.choice(
        [
            lambda w: mf.with_wav_bits_per_sample(w, rng.choice([0, 1, 7, 12, 63, 255])),
            lambda w: mf.with_wav_data_size(w, rng.choice([0, 1, 0xFFFFFFFF, 3])),
            lambda w: mf.with_wav_riff_size(w, rng.choice([0, 4, 0xFFFFFFFF])),
            lambda w: w[:22] + struct.pack("<H", rng.choice([0, 255, 65535])) + w[24:],  # channels
            lambda w: w[:24] + struct.pack("<I", rng.choice([0, 1, 0xFFFFFFFF])) + w[28:],  # sample rate
            lambda w: w[:20] + struct.pack("<H", rng.choice([0, 2, 0xFFFE, 85])) + w[22:],  # format tag
        ]
    )
    req = pb.GenerateRequest(parts=[pb.ContentPart(audio=pb.Audio(encoded=mutate(wav)))], sampling=_sampling())
    return _generate("media.wav_header", seed, req, must_reject=False)


def media_audio_layouts(seed: int, rng: random.Random) -> Case:
    """Valid audio of every channel count a container holds (verify-10e D1: 7.1 and more
    crashed the decoder), at odd rates, in WAV (some streamed: data size 0, which FFmpeg
    reads) and FLAC (at most 8 channels); Matroska is in the media tests (its muxer writes
    a random UID, so its bytes are not deterministic). Accepted, downmixed to mono, or
    refused with a precise status."""
    rate = rng.choice([8000, 11025, 16000, 22050, 44100, 48000, 96000])
    container = rng.choice(["wav", "streamed-wav", "flac"])
    channels = rng.randint(1, 8 if container == "flac" else 24)
    wave = mf.waveform(rng.choice([0.05, 0.25, 1.0]), rate, channels, seed=seed % 100)
    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format="FLAC" if container == "flac" else "WAV", subtype="PCM_16")
    data = mf.with_wav_data_size(buf.getvalue(), 0) if container == "streamed-wav" else buf.getvalue()
    req = pb.GenerateRequest(parts=[pb.ContentPart(audio=pb.Audio(encoded=data))], sampling=_sampling())
    return _generate("media.audio_layouts", seed, req, must_reject=False, note=f"{container} {channels}ch {rate} Hz")


def media_raw_frames(seed: int, rng: random.Random) -> Case:
    w, h, n = (rng.choice([0, 1, 2, 8, 65535, 1 << 20, (1 << 32) - 1]) for _ in range(3))
    fps = rng.choice([0.0, -1.0, math.nan, math.inf, 1e308, 1e-308, 24.0])
    size = rng.choice([0, 1, 3 * 8 * 8 * 2, 1 << 16])
    raw = pb.RawFrames(rgb24=b"\x80" * size or b"\0", width=w, height=h, num_frames=n, fps=fps)
    req = pb.GenerateRequest(parts=[pb.ContentPart(video=pb.Video(raw_frames=raw))], sampling=_sampling())
    return _generate("media.raw_frames", seed, req, must_reject=False)


def media_pcm(seed: int, rng: random.Random) -> Case:
    pcm = pb.Pcm(
        data=rng.randbytes(rng.choice([1, 2, 3, 4, 7, 16000])),
        encoding=rng.choice([0, 1, 2, 3, 99, 2**31 - 1]),
        sample_rate=rng.choice([0, 1, 16000, 44100, 2**32 - 1]),
        channels=rng.choice([0, 1, 2, 3, 255, 2**32 - 1]),
    )
    req = pb.GenerateRequest(parts=[pb.ContentPart(audio=pb.Audio(pcm=pcm))], sampling=_sampling())
    return _generate("media.pcm", seed, req, must_reject=False)


def media_video_controls(seed: int, rng: random.Random) -> Case:
    _, data = media_corpus()[rng.choice(["mp4", "webm", "mkv", "mov"])]
    video: dict = {}
    if rng.random() < 0.7:
        video["num_frames"] = rng.choice([0, 1, 8, 100, 10_000, 2**32 - 1])
    if rng.random() < 0.5:
        video["fps"] = rng.choice([0.0, -2.0, math.nan, math.inf, -math.inf, 1e-9, 241.0, 1e300])
    if rng.random() < 0.5:
        video["max_frames"] = rng.choice([0, 1, 2**32 - 1])
    req = pb.GenerateRequest(parts=[media_part("video", data, **video), _text(rng)], sampling=_sampling())
    return _generate("media.video_controls", seed, req, must_reject=False)


def media_counts_and_empties(seed: int, rng: random.Random) -> Case:
    choice = rng.randrange(5)
    png = media_corpus()["png"][1]
    if choice == 0:
        parts = [media_part("image", png)] * rng.randint(5, 64)  # over --limit-mm-per-prompt (if set that low)
    elif choice == 1:
        parts = [pb.ContentPart()]  # a part with no kind
    elif choice == 2:
        parts = [
            rng.choice(
                [pb.ContentPart(image=pb.Image()), pb.ContentPart(video=pb.Video()), pb.ContentPart(audio=pb.Audio())]
            )
        ]
    elif choice == 3:
        parts = [pb.ContentPart(video=pb.Video(raw_frames=pb.RawFrames()))]
    else:
        parts = [pb.ContentPart(text="")]
    return _generate(
        "media.counts_and_empties",
        seed,
        pb.GenerateRequest(parts=parts, sampling=_sampling()),
        must_reject=choice not in (0, 4),
    )


# ------------------------------------------------------------------ sampling and structured output

FLOAT_FIELDS = ["temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"]


def sampling_non_finite(seed: int, rng: random.Random) -> Case:
    bad = rng.choice([math.nan, math.inf, -math.inf])
    if rng.random() < 0.25:
        opts = _sampling(logit_bias={rng.randrange(100): bad})
    else:
        opts = _sampling(**{rng.choice(FLOAT_FIELDS): bad})
    return _generate("sampling.non_finite", seed, pb.GenerateRequest(parts=[_text(rng)], sampling=opts))


def sampling_out_of_range(seed: int, rng: random.Random) -> Case:
    name = rng.choice(FLOAT_FIELDS + ["top_k", "min_tokens", "logprobs", "prompt_logprobs", "max_tokens", "seed"])
    if name in FLOAT_FIELDS:
        value: object = rng.choice([-1e308, -5.0, -1e-9, 1.5, 3.0, 1e308, 0.0])
    elif name == "top_k":
        value = rng.choice([-2, -(2**31), 2**31 - 1, 1_000_000])
    elif name == "seed":
        value = rng.choice([-(2**63), 2**63 - 1])
    elif name == "max_tokens":
        value = 0  # a huge max_tokens is valid: it generates until the context is full
    else:
        value = rng.choice([21, 1000, 2**32 - 1])
    opts = _sampling()
    setattr(opts, name, value)
    return _generate(
        "sampling.out_of_range", seed, pb.GenerateRequest(parts=[_text(rng)], sampling=opts), must_reject=False
    )


def sampling_token_ids(seed: int, rng: random.Random) -> Case:
    ids = rng.choice([[2**32 - 1], [10**6], list(range(rng.choice([0, 10, 50_000, 200_000])))])
    opts = _sampling()
    field_ = rng.choice(["stop_token_ids", "allowed_token_ids", "logit_bias"])
    if field_ == "logit_bias":
        for i in ids[:50_000]:
            opts.logit_bias[i] = rng.choice([1e9, -1e9, 100.0, 0.0])
    else:
        getattr(opts, field_).extend(ids)
    return _generate(
        "sampling.token_ids", seed, pb.GenerateRequest(parts=[_text(rng)], sampling=opts), must_reject=False
    )


def sampling_strings(seed: int, rng: random.Random) -> Case:
    opts = _sampling()
    choice = rng.randrange(3)
    if choice == 0:
        opts.stop.extend([""] * rng.randint(1, 5))
    elif choice == 1:
        opts.stop.extend(["x" * rng.choice([1, 10_000, 1_000_000])] * rng.randint(1, 3))
    else:
        opts.bad_words.extend(rng.choice([[""], ["<image>"], ["a" * 100_000], [" "] * 1000]))
    return _generate("sampling.strings", seed, pb.GenerateRequest(parts=[_text(rng)], sampling=opts), must_reject=False)


def structured_junk(seed: int, rng: random.Random) -> Case:
    so = pb.StructuredOutput()
    choice = rng.randrange(7)
    if choice == 0:
        so.json_schema = rng.choice(["{", "[]", "null", '{"type": "nope"}', '{"$ref": "#/x"}', "x" * 1000, ""])
    elif choice == 1:
        so.regex = rng.choice(["(", "[a-", "*", "(?P<x"])
    elif choice == 2:
        so.choice.SetInParent()  # an empty choice
    elif choice == 3:
        so.grammar = rng.choice(["::=", "root ::= (", "x" * 100])
    elif choice == 4:
        so.json_object = False
    elif choice == 5:
        so.json_schema = '{"type": "object"}'
        so.whitespace_pattern = rng.choice(["(", "[", "*"])
    else:
        so.disable_any_whitespace = True  # no constraint set at all
    opts = _sampling(structured_output=so)
    # whitespace_pattern is backend-specific (xgrammar ignores it): not always rejected.
    req = pb.GenerateRequest(parts=[_text(rng)], sampling=opts)
    return _generate("structured.junk", seed, req, must_reject=choice not in (5, 6))


def _many_properties(n: int) -> str:
    names = [f"p{i:05d}" for i in range(n)]
    return json.dumps({"type": "object", "properties": {k: {"type": "string"} for k in names}, "required": names})


# Constraints that are cheap to send and expensive to compile (or over a size limit). A few
# fixed sizes, so the server's verdict cache is exercised as well as its compile check.
HOSTILE_CONSTRAINTS: dict[str, Callable[[], pb.StructuredOutput]] = {
    "enum_100k": lambda: pb.StructuredOutput(json_schema=json.dumps({"enum": [str(i) for i in range(100_000)]})),
    "enum_16k": lambda: pb.StructuredOutput(json_schema=json.dumps({"enum": [f"{i:05d}" for i in range(16_000)]})),
    "properties_3000": lambda: pb.StructuredOutput(json_schema=_many_properties(3000)),
    "properties_20000": lambda: pb.StructuredOutput(json_schema=_many_properties(20_000)),
    "choices_5000": lambda: pb.StructuredOutput(choice=pb.Choices(choices=[f"c{i}" for i in range(5000)])),
    "choice_huge": lambda: pb.StructuredOutput(choice=pb.Choices(choices=["x" * 200_000])),
    "regex_alternation": lambda: pb.StructuredOutput(regex="(" + "|".join(f"w{i:05d}" for i in range(12_000)) + ")"),
    "grammar_rules": lambda: pb.StructuredOutput(grammar="root ::= " + " | ".join(f'"{i:05d}"' for i in range(12_000))),
    "small_ok": lambda: pb.StructuredOutput(json_schema='{"type": "object"}'),
}
# Over --max-structured-output-bytes / -choices at their defaults: always refused.
HOSTILE_OVER_LIMITS = frozenset({"enum_100k", "properties_20000", "choices_5000", "choice_huge"})


def structured_hostile(seed: int, rng: random.Random) -> Case:
    """Schemas, regexes, grammars and choices built to stall grammar compilation for every
    user: over a size limit (RESOURCE_EXHAUSTED), too slow to compile (RESOURCE_EXHAUSTED
    naming --structured-output-compile-timeout-s) or, on a fast machine, compiled (OK)."""
    name = rng.choice(sorted(HOSTILE_CONSTRAINTS))
    req = pb.GenerateRequest(parts=[_text(rng)], sampling=_sampling(structured_output=HOSTILE_CONSTRAINTS[name]()))
    case = _generate("structured.hostile", seed, req, must_reject=name in HOSTILE_OVER_LIMITS, note=name)
    if rng.random() < 0.3:  # and as a StreamGenerate header (checked before any upload slot)
        header = pb.GenerateChunk(
            header=pb.StreamGenerateHeader(parts=[pb.DeclaredPart(part=_text(rng))], sampling=req.sampling)
        )
        return _stream(
            "structured.hostile", seed, [header, END], half_close=True, must_reject=case.must_reject, note=name
        )
    return case


# ------------------------------------------------------------------ prompts and chat

PLACEHOLDERS = [
    "<image>",
    "<video>",
    "<audio>",
    "<img>",
    "</img>",
    "<so_embedding>",
    "<|im_start|>",
    "<s>",
    "</s>",
    "<IMG_CONTEXT>",
]


def prompt_placeholders(seed: int, rng: random.Random) -> Case:
    text = f"look {rng.choice(PLACEHOLDERS)} here"
    if rng.random() < 0.5:
        req = pb.GenerateRequest(parts=[pb.ContentPart(text=text)], sampling=_sampling())
    else:
        req = pb.GenerateRequest(
            messages=[pb.Message(role="user", parts=[pb.ContentPart(text=text)])], sampling=_sampling()
        )
    return _generate("prompt.placeholders", seed, req, must_reject=False)


def prompt_shape(seed: int, rng: random.Random) -> Case:
    choice = rng.randrange(5)
    if choice == 0:
        req = pb.GenerateRequest(sampling=_sampling())  # neither parts nor messages
    elif choice == 1:
        req = pb.GenerateRequest(
            parts=[_text(rng)], messages=[pb.Message(role="user", parts=[_text(rng)])], sampling=_sampling()
        )
    elif choice == 2:  # over max_model_len when the server's is short: OUT_OF_RANGE or OK
        req = pb.GenerateRequest(parts=[pb.ContentPart(text="y" * rng.choice([2100, 100_000]))], sampling=_sampling())
        return _generate("prompt.shape", seed, req, must_reject=False)
    elif choice == 3:
        req = pb.GenerateRequest(
            request_id="r" * rng.choice([0, 10_000, 1_000_000]), parts=[_text(rng)], sampling=_sampling()
        )
        return _generate("prompt.shape", seed, req, must_reject=False)
    else:
        req = pb.GenerateRequest(parts=[_text(rng)] * 5000, sampling=_sampling())
        return _generate("prompt.shape", seed, req, must_reject=False)
    return _generate("prompt.shape", seed, req)


def chat_messages(seed: int, rng: random.Random) -> Case:
    role = rng.choice(["", "tool", "function", "SYSTEM", "user\n", "ü" * 3, "x" * 10_000, "assistant"])
    parts = rng.choice([[], [_text(rng)], [pb.ContentPart(text="")], [media_part("image", media_corpus()["png"][1])]])
    msgs = [pb.Message(role=role, parts=parts)]
    if rng.random() < 0.3:
        msgs.append(pb.Message(role="assistant", parts=[_text(rng)]))
    req = pb.GenerateRequest(messages=msgs, sampling=_sampling())
    if rng.random() < 0.3:
        req.chat_template.add_generation_prompt = False
    return _generate("chat.messages", seed, req, must_reject=False)


def _junk_schema(rng: random.Random) -> str:
    return rng.choice(
        [
            "{",
            "[]",
            '"object"',
            '{"type": "string"}',
            '{"type": "object", "properties": 7}',
            '{"type": "object", "required": "x"}',
            "[" * 3000 + "]" * 3000,
            '{"type": "object", "properties": {"a": {"type": "' + "x" * 300_000 + '"}}}',
            '{"type": "object", "properties": {"a": {"type": "string"}}}',  # valid: refused for want of a parser
        ]
    )


def chat_tools(seed: int, rng: random.Random) -> Case:
    """Tools, tool choices, tool messages and thinking options, hostile or merely not
    served: the fuzz server (the V2 tiny checkpoint) has no reasoning or tool-call parser,
    so every one is refused."""
    user = pb.Message(role="user", parts=[_text(rng)])
    req = pb.GenerateRequest(messages=[user], sampling=_sampling())
    choice = rng.randrange(6)
    if choice == 0:
        name = rng.choice(["get_weather", "", "a b", "x" * 65, "ü", "f"])
        req.tools.extend([pb.Tool(name=name, parameters=_junk_schema(rng))] * rng.choice([1, 2, 129]))
    elif choice == 1:  # a choice without tools, or naming an unknown one
        req.tool_choice.CopyFrom(
            rng.choice([pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED), pb.ToolChoice(function_name="nope")])
        )
        if req.tool_choice.function_name and rng.random() < 0.5:
            req.tools.append(pb.Tool(name="other"))
    elif choice == 2:  # a tool result answering nothing, or carrying media
        tool = pb.Message(role="tool", tool_call_id=rng.choice(["", "call-9", "<video>"]), parts=[_text(rng)])
        if rng.random() < 0.3:
            tool.parts.append(media_part("image", media_corpus()["png"][1]))
        req.messages.append(tool)
    elif choice == 3:  # calls that are not calls
        call = pb.ToolCall(
            id=rng.choice(["", "c1"]), name=rng.choice(["", "f"]), arguments=rng.choice(["{", "[1]", "7", '"x"'])
        )
        req.messages.append(pb.Message(role=rng.choice(["assistant", "user", "system"]), tool_calls=[call]))
    elif choice == 4:  # thinking options on a model without a reasoning parser
        if rng.random() < 0.5:
            req.chat_template.enable_thinking = rng.random() < 0.5
        else:
            req.sampling.thinking_token_budget = rng.choice([0, 1, 1 << 31])
    else:  # a raw-frames video (no track) asking for its audio track
        raw = pb.RawFrames(rgb24=bytes(2 * 2 * 3), width=2, height=2, num_frames=1, fps=1.0)
        user.parts.append(pb.ContentPart(video=pb.Video(raw_frames=raw, use_audio_in_video=True)))
        req = pb.GenerateRequest(messages=[user], sampling=_sampling())
    return _generate("chat.tools", seed, req)


def _kwargs_value(rng: random.Random) -> object:
    return rng.choice([None, True, 1.5, "x", [], [1, "a"], {"a": {"b": []}}, "y" * 10_000])


def chat_template_kwargs(seed: int, rng: random.Random) -> Case:
    req = pb.GenerateRequest(messages=[pb.Message(role="user", parts=[_text(rng)])], sampling=_sampling())
    kwargs = req.chat_template.chat_template_kwargs
    choice = rng.randrange(4)
    if choice == 0:
        kwargs.update(
            {
                rng.choice(["messages", "add_generation_prompt", "tokenize", "continue_final_message"]): _kwargs_value(
                    rng
                )
            }
        )
    elif choice == 1:
        kwargs.update({rng.choice(["tools", "documents"]): rng.choice([1, "x", True, {"a": 1}, [1, 2], [[["x"]]]])})
    elif choice == 2:
        kwargs.update(
            {"chat_template": rng.choice(["{{ raise_exception('boom') }}", "{% for %}", "{{ x.y.z() }}", "{{"])}
        )
    else:
        kwargs.update({f"k{i}": _kwargs_value(rng) for i in range(rng.randint(1, 20))})
        return _generate("chat.template_kwargs", seed, req, must_reject=False)
    return _generate("chat.template_kwargs", seed, req, must_reject=False)


REQUEST_TEMPLATES = {
    "raise": "{{ raise_exception('boom') }}",
    "loop_1e8": "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
    "memory": "{{ 'a' * 10**10 }}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "dunder": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "syntax": "{% for %}",
    "undefined_call": "{{ x.y.z() }}",
    "placeholder": "<image>{% for m in messages %}{{ m.content }}{% endfor %}",
    "plain": "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:",
}


def chat_request_template(seed: int, rng: random.Random) -> Case:
    """Per-request chat templates: client code, rendered in the sandbox when the server
    allows them (--allow-request-chat-template), PERMISSION_DENIED otherwise."""
    name = rng.choice(sorted(REQUEST_TEMPLATES))
    req = pb.GenerateRequest(messages=[pb.Message(role="user", parts=[_text(rng)])], sampling=_sampling())
    req.chat_template.chat_template_kwargs.update({"chat_template": REQUEST_TEMPLATES[name]})
    # A template emitting a placeholder is another rule's business: any precise status will do.
    return _generate("chat.request_template", seed, req, must_reject=name not in ("plain", "placeholder"), note=name)


def chat_template_kwargs_deep(seed: int, rng: random.Random) -> Case:
    depth = rng.randint(20, 32)  # still decodes (protobuf's limit is about 32 Structs)
    raw = wire.generate_request_with_kwargs(wire.nested_struct(depth))
    msg = pb.GenerateRequest(
        messages=[pb.Message(role="user", parts=[pb.ContentPart(text="hi")])], sampling=_sampling()
    )
    return Case("chat.template_kwargs_deep", seed, GENERATE, (msg.SerializeToString() + raw,), must_reject=False)


# ------------------------------------------------------------------ StreamGenerate protocol


def _image_header(rng: random.Random, n: int = 1, sizes: list[int | None] | None = None, **kw) -> pb.GenerateChunk:
    declared = []
    for i in range(n):
        d = pb.DeclaredPart(part=pb.ContentPart(image=pb.Image()))
        if sizes and sizes[i] is not None:
            d.size_bytes = sizes[i]
        declared.append(d)
    declared.append(pb.DeclaredPart(part=_text(rng)))
    return pb.GenerateChunk(header=pb.StreamGenerateHeader(parts=declared, sampling=_sampling(), **kw))


def _chunk(i: int, data: bytes, last: bool) -> pb.GenerateChunk:
    return pb.GenerateChunk(media=pb.MediaChunk(part_index=i, data=data, last=last))


END = pb.GenerateChunk(end=pb.End())


def _png() -> bytes:
    return media_corpus()["png"][1]


STREAM_STEPS: dict[str, Callable[[random.Random], tuple[list, bool]]] = {
    # name → (messages, half-close after them?)
    "no_header": lambda r: ([_chunk(0, _png(), True), END], r.random() < 0.5),
    "empty_stream": lambda r: ([], True),
    "end_only": lambda r: ([END], r.random() < 0.5),
    "two_headers": lambda r: ([_image_header(r), _image_header(r)], r.random() < 0.5),
    "header_after_chunks": lambda r: ([_image_header(r), _chunk(0, _png()[:10], False), _image_header(r)], False),
    "wrong_part": lambda r: ([_image_header(r, 2), _chunk(1, _png(), True)], False),
    "text_part_index": lambda r: ([_image_header(r), _chunk(1, b"abc", True)], False),
    "index_out_of_range": lambda r: ([_image_header(r), _chunk(r.choice([7, 2**32 - 1]), b"abc", True)], False),
    "interleaved": lambda r: ([_image_header(r, 2), _chunk(0, _png()[:10], False), _chunk(1, _png(), True)], False),
    "missing_payload": lambda r: ([_image_header(r), END], True),
    "no_end": lambda r: ([_image_header(r), _chunk(0, _png(), True)], True),
    "size_over": lambda r: ([_image_header(r, sizes=[5]), _chunk(0, _png(), True)], False),
    "size_under": lambda r: ([_image_header(r, sizes=[len(_png()) + 100]), _chunk(0, _png(), True), END], True),
    "huge_declared": lambda r: ([_image_header(r, sizes=[r.choice([2**40, 2**64 - 1, 10**12])])], False),
    "chunk_after_end": lambda r: ([_image_header(r), _chunk(0, _png(), True), END, _chunk(0, b"x", True)], True),
    "two_ends": lambda r: ([_image_header(r), _chunk(0, _png(), True), END, END], True),
    "empty_not_last": lambda r: (
        [_image_header(r), _chunk(0, b"", False), _chunk(0, _png(), True), END],
        True,
    ),
    "payload_in_header": lambda r: (
        [
            pb.GenerateChunk(
                header=pb.StreamGenerateHeader(
                    parts=[pb.DeclaredPart(part=pb.ContentPart(image=pb.Image(data=_png())))], sampling=_sampling()
                )
            ),
            END,
        ],
        True,
    ),
    "text_only_with_chunk": lambda r: (
        [
            pb.GenerateChunk(
                header=pb.StreamGenerateHeader(parts=[pb.DeclaredPart(part=_text(r))], sampling=_sampling())
            ),
            _chunk(0, b"abc", True),
            END,
        ],
        True,
    ),
    "bad_header": lambda r: ([_bad_header(r), _chunk(0, _png(), True), END], False),
}


def _bad_header(rng: random.Random) -> pb.GenerateChunk:
    header = _image_header(rng)
    header.header.sampling.top_p = rng.choice([1.5, math.nan, -1.0])
    return header


# Steps that today's server may still accept with OK (proto says rejected; fixed in _receive).
def stream_protocol(step: str) -> Callable[[int, random.Random], Case]:
    def build(seed: int, rng: random.Random) -> Case:
        msgs, half_close = STREAM_STEPS[step](rng)
        return _stream(f"stream.{step}", seed, msgs, half_close=half_close)

    return build


def stream_cancel_mid_upload(seed: int, rng: random.Random) -> Case:
    msgs = [_image_header(rng), _chunk(0, _png()[:100], False)]
    return _stream(
        "stream.cancel_mid_upload",
        seed,
        msgs,
        half_close=False,
        cancel_after_s=rng.choice([0.0, 0.05, 0.2]),
        must_reject=False,
    )


def stream_raw_client(seed: int, rng: random.Random) -> Case:
    """A StreamGenerate the server rejects while a plain grpc.aio client is still writing:
    a header it refuses (bad sampling, a declared size over the limit) or a protocol
    violation, then chunks. The client must see the server's status, never grpc.aio's
    "Internal error from Core"."""
    png = media_corpus()["png"][1]
    chunks = [_chunk(0, png[i : i + 64], False) for i in range(0, len(png), 64)] + [_chunk(0, b"", True), END]
    choice = rng.randrange(4)
    if choice == 0:
        header = _image_header(rng)
        header.header.sampling.top_p = rng.choice([1.5, -1.0, 0.0])
    elif choice == 1:
        header = _image_header(rng, sizes=[2**40])
    elif choice == 2:
        header = _image_header(rng, sizes=[3])  # more bytes arrive than declared
    else:
        header = _image_header(rng)
        chunks.insert(0, _chunk(1, b"x", False))  # a chunk for the text part
    return _stream("stream.raw_client", seed, [header, *chunks], half_close=rng.random() < 0.7, raw_client=True)


def stream_trickle(seed: int, rng: random.Random) -> Case:
    """A header, then a few bytes now and then: never idle, too slow; the server's
    minimum upload rate must end it (DEADLINE_EXCEEDED naming --min-upload-bytes-per-s)."""
    msgs = [_image_header(rng)] + [_chunk(0, b"\x89", False) for _ in range(40)]
    return _stream("stream.trickle", seed, msgs, half_close=False, pause_s=0.5)


def health_port(seed: int, rng: random.Random) -> Case:
    """The plaintext health port (--health-port) gets the same hostile bytes as the others."""
    method = rng.choice([HEALTH_CHECK, HEALTH_WATCH])
    if rng.random() < 0.7:
        msg = rng.choice(GUARANTEED_GARBAGE)
        return Case("health.port", seed, method, (msg,), half_close=False, port="health")
    service = rng.choice(["", "nanovl.v1.Inference", "no.such.Service", "x" * 3000])
    msg = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    return Case("health.port", seed, HEALTH_CHECK, (msg,), must_reject=False, port="health")


def raw_unknown_methods(seed: int, rng: random.Random) -> Case:
    """A method the port does not serve (a made-up service, a made-up method of a real one,
    reflection on the health-only port), from a plain grpc.aio streaming client still
    writing or holding its stream open: UNIMPLEMENTED, never grpc.aio's "Internal error
    from Core" (verify-10e D3)."""
    port = rng.choice(["main", "health"])
    method = rng.choice(
        [
            f"/no.such.Service{rng.randrange(1000)}/Method",
            "/nanovl.v1.Inference/NoSuchMethod",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo" if port == "health" else "/x/y",
            REFLECTION if port == "health" else "/nanovl.v1.Profiling/NoSuch",
            "/" + "a" * rng.randrange(1, 2000) + "/b",
        ]
    )
    messages = tuple(rng.randbytes(rng.choice([0, 10, 4000, 60_000])) for _ in range(rng.randrange(1, 6)))
    return Case(
        "raw.unknown_methods",
        seed,
        method,
        messages,
        half_close=rng.random() < 0.5,
        raw_client=True,
        port=port,
        extra={"streams": (True, True)},
    )


def stream_stall(seed: int, rng: random.Random) -> Case:
    """Header and one chunk, then silence: the server's upload idle timeout must end it."""
    msgs = [_image_header(rng), _chunk(0, _png()[:100], False)]
    return _stream("stream.stall", seed, msgs, half_close=False)


# ------------------------------------------------------------------ registry

KINDS: dict[str, Callable[[int, random.Random], Case]] = {
    "raw.generate": raw_generate,
    "raw.random_bytes": raw_random_bytes,
    "raw.stream_first": raw_stream_first,
    "raw.stream_after_header": raw_stream_after_header,
    "raw.other_services": raw_other_services,
    "junk.other_services": junk_other_services,
    "raw.unknown_methods": raw_unknown_methods,
    "media.truncated": media_corrupt("media.truncated", _truncate),
    "media.bitflip": media_corrupt("media.bitflip", _bitflip),
    "media.magic_garbage": media_corrupt("media.magic_garbage", _magic_garbage),
    "media.streamed_corrupt": media_streamed_corrupt,
    "media.wav_header": media_wav_header,
    "media.audio_layouts": media_audio_layouts,
    "media.raw_frames": media_raw_frames,
    "media.pcm": media_pcm,
    "media.video_controls": media_video_controls,
    "media.counts_and_empties": media_counts_and_empties,
    "sampling.non_finite": sampling_non_finite,
    "sampling.out_of_range": sampling_out_of_range,
    "sampling.token_ids": sampling_token_ids,
    "sampling.strings": sampling_strings,
    "structured.junk": structured_junk,
    "structured.hostile": structured_hostile,
    "prompt.placeholders": prompt_placeholders,
    "prompt.shape": prompt_shape,
    "chat.messages": chat_messages,
    "chat.template_kwargs": chat_template_kwargs,
    "chat.template_kwargs_deep": chat_template_kwargs_deep,
    "chat.request_template": chat_request_template,
    "chat.tools": chat_tools,
    **{f"stream.{step}": stream_protocol(step) for step in STREAM_STEPS},
    "stream.cancel_mid_upload": stream_cancel_mid_upload,
    "stream.stall": stream_stall,
    "stream.trickle": stream_trickle,
    "stream.raw_client": stream_raw_client,
    "health.port": health_port,
}


def build(kind: str, seed: int) -> Case:
    """The case of ``kind`` for ``seed`` (deterministic: replay a failure with it)."""
    return KINDS[kind](seed, random.Random(f"{kind}:{seed}"))


def cases(seed: int, n: int, kinds: list[str] | None = None) -> list[Case]:
    """``n`` cases, every kind in turn, each with its own seed derived from ``seed``."""
    names = kinds or list(KINDS)
    rng = random.Random(seed)
    return [build(names[i % len(names)], rng.randrange(1 << 31)) for i in range(n)]
