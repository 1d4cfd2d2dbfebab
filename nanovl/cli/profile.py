"""``nanovl profile``: the Profiling service from a terminal (rich tables, or ``--json``).

    nanovl profile budget --target HOST:PORT
    nanovl profile plan   --target HOST:PORT --limit image=2,video=1 --video 16x640x360
    nanovl profile plan   --model CKPT --max-model-len 2048 --limit image=4,video=1,audio=2 --memory 4GiB
    nanovl profile dummy  --target HOST:PORT --image 640x480:2 --video 8x320x240 --audio 30
    nanovl profile cpu    --target HOST:PORT --duration 10 --output-dir profiles/
    nanovl profile torch  start|stop --target HOST:PORT

``--target`` is the server's admin (operator) port (``nanovl serve --admin-port``; default
$NANOVL_ADMIN_TARGET or 127.0.0.1:50052); TLS flags as for ``generate``, the operator token
from ``--token-file`` or $NANOVL_ADMIN_TOKEN.

``plan --model`` runs offline (checkpoint config and tokenizer only: no server, no
weights, no device, none of the checkpoint's Python: its config is read with nanovl's own
class), so a GPU deployment can be planned from a laptop.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from nanovl import units
from nanovl.cli.common import ADMIN_TOKEN_ENV, add_connection_args, connection_from_args, default_admin_target
from nanovl.errors import InvalidArgument
from nanovl.media_specs import parse_dims, parse_seconds, split_count, split_rate
from nanovl.modalities import modality_name
from nanovl.units import format_bytes
from nanovl.v1 import profiling_pb2 as pb

T = TypeVar("T")
ROLE_NAMES = {
    pb.PROCESS_ROLE_SERVER: "server",
    pb.PROCESS_ROLE_ENGINE_CORE: "engine_core",
    pb.PROCESS_ROLE_WORKER: "worker",
    pb.PROCESS_ROLE_UNSPECIFIED: "-",
}


class CliError(Exception):
    """A usage or RPC failure, printed as one line."""


# ------------------------------------------------------------------------ parsing


def _argument_type(fn: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type=`` from a core parser: its ``InvalidArgument`` becomes argparse's
    one-line usage error."""

    @functools.wraps(fn)
    def parse(text: str) -> T:
        try:
            return fn(text)
        except InvalidArgument as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


parse_bytes = _argument_type(units.parse_bytes)


def _integer(text: str, *, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}")
    if value >= 1 << 32:
        raise argparse.ArgumentTypeError(f"{text!r} is too large (at most {(1 << 32) - 1})")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (and < 2**32: the API's uint32)."""
    return _integer(text, least=1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (and < 2**32)."""
    return _integer(text, least=0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def parse_limits(text: str) -> dict[str, int]:
    """``image=4,video=1,audio=2``."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in ("image", "video", "audio") or not re.fullmatch(r"[0-9]+", value):
            raise argparse.ArgumentTypeError(f"bad limit {part!r}: use image=N,video=N,audio=N")
        if int(value) >= 1 << 32:
            raise argparse.ArgumentTypeError(f"bad limit {part!r}: at most {(1 << 32) - 1}")
        out[name] = int(value)
    return out


@_argument_type
def parse_image(text: str) -> tuple[int, int, int]:
    """``WIDTHxHEIGHT[:COUNT]`` -> (width, height, count)."""
    size, count = split_count(text, "image")
    width, height = parse_dims(size, 2, "image size (WIDTHxHEIGHT[:COUNT], e.g. 1024x768)")
    return width, height, count


@_argument_type
def parse_video(text: str) -> tuple[int, int, int, float | None, int]:
    """``FRAMESxWIDTHxHEIGHT[@FPS][:COUNT]`` -> (frames, width, height, fps or None, count)."""
    spec = "video (FRAMESxWIDTHxHEIGHT[@FPS][:COUNT], e.g. 16x640x360@30)"
    size, count = split_count(text, "video")
    size, fps = split_rate(size, spec)
    frames, width, height = parse_dims(size, 3, spec)
    return frames, width, height, fps, count


def video_item(frames: int, width: int, height: int, fps: float | None) -> pb.VideoItem:
    """A ``VideoItem``; with ``fps``, frames 1/fps seconds apart from 0 s, as nanovl's
    server samples a video at ``fps`` and times its frames (default: vLLM's 2 fps)."""
    if fps is None:
        return pb.VideoItem(num_frames=frames, width=width, height=height)
    return pb.VideoItem(num_frames=frames, width=width, height=height, frame_times_s=[i / fps for i in range(frames)])


@_argument_type
def parse_audio(text: str) -> tuple[float, int]:
    """``SECONDS[:COUNT]`` -> (seconds, count)."""
    size, count = split_count(text, "audio")
    return parse_seconds(size, "audio length (SECONDS[:COUNT], e.g. 30)"), count


# ------------------------------------------------------------------------ requests


def plan_request(args: argparse.Namespace) -> pb.PlanBudgetRequest:
    """The PlanBudget request for ``plan``'s flags: counts from --limit (a size flag alone
    means one item), sizes from --image/--video/--audio (none: the largest item that
    fits the context alone)."""
    limits = dict(args.limit or {})
    sizes = {"image": args.image, "video": args.video, "audio": args.audio}
    req = pb.PlanBudgetRequest()
    for modality in ("image", "video", "audio"):
        count = limits.get(modality, 1 if sizes[modality] else 0)
        if modality not in limits and not sizes[modality]:
            continue
        item = req.items.add(count=count)
        size = sizes[modality]
        if modality == "image":
            item.image.CopyFrom(pb.ImageItem(width=size[0], height=size[1]) if size else pb.ImageItem())
        elif modality == "video":
            item.video.CopyFrom(video_item(*size[:4]) if size else pb.VideoItem())
        else:
            item.audio.CopyFrom(pb.AudioItem(seconds=size[0]) if size else pb.AudioItem())
    for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "text_tokens"):
        value = getattr(args, name)
        if value is not None:
            setattr(req, name, value)
    if args.memory is not None:
        req.memory_budget_bytes = args.memory
    if getattr(args, "model", None):
        req.model_path = os.path.abspath(args.model)
    return req


def dummy_request(args: argparse.Namespace) -> pb.RunDummyProfileRequest:
    req = pb.RunDummyProfileRequest()
    for w, h, n in args.image or ():
        req.items.add(count=n, image=pb.ImageItem(width=w, height=h))
    for f, w, h, fps, n in args.video or ():
        req.items.add(count=n, video=video_item(f, w, h, fps))
    for s, n in args.audio or ():
        req.items.add(count=n, audio=pb.AudioItem(seconds=s))
    if not req.items:
        raise CliError("give at least one --image, --video or --audio item to profile")
    return req


def plan_offline(request: pb.PlanBudgetRequest) -> pb.BudgetPlan:
    """PlanBudget without a server: the same planner and conversion the server uses."""
    from profiling.proto import plan_request_from_pb, plan_to_pb
    from profiling.sizing.budget import plan_budget
    from profiling.sizing.live_budget import resolve_unsized

    plan_req, order = plan_request_from_pb(request)
    plan_req = resolve_unsized(plan_req, request.model_path)
    return plan_to_pb(plan_budget(plan_req, request.model_path), order)


# ------------------------------------------------------------------------ rendering


def describe_item(m: pb.MediaItems) -> str:
    kind = m.WhichOneof("item")
    if kind == "image":
        return f"{m.image.width}x{m.image.height}"
    if kind == "video":
        return f"{m.video.num_frames} frames {m.video.width}x{m.video.height} {describe_timing(m.video)}"
    if kind == "audio":
        return f"{m.audio.seconds:g} s"
    return "-"


def describe_timing(v: pb.VideoItem) -> str:
    """``at 0-7.50 s`` for frame times on nanovl's 1 ms clock, ``@ 29.97 fps`` (plus the
    frame indices when they are not 0, 1, 2, ...) in vLLM's terms."""
    from_times = list(v.frame_times_s)
    indices = list(v.frame_indices)
    fps = v.fps if v.HasField("fps") else 2.0
    if not from_times and fps == 1000.0 and indices:
        from_times = [i / 1000 for i in indices]
    if from_times:
        return f"at {from_times[0]:g}-{from_times[-1]:g} s"
    if indices and indices != list(range(len(indices))):
        shown = ",".join(map(str, indices[:3])) + (f",...,{indices[-1]}" if len(indices) > 3 else "")
        return f"@ {fps:g} fps, frames {shown}"
    return f"@ {fps:g} fps"


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    return table


def render_budget(b: pb.Budget) -> list[Any]:
    out = [
        _table(
            "Engine settings",
            ["setting", "value"],
            [
                ["max_model_len", b.max_model_len],
                ["max_num_seqs", b.max_num_seqs],
                ["max_num_batched_tokens", b.max_num_batched_tokens],
                ["limit_mm_per_prompt", json.dumps(dict(b.limit_mm_per_prompt))],
            ],
        )
    ]
    out.append(
        _table(
            "Encoder tokens per item: vLLM reserves vs the largest item that fits (exact)",
            ["modality", "limit", "vLLM max/item", "nanovl exact max/item", "largest item"],
            [
                [
                    modality_name(m.modality),
                    m.item_limit,
                    m.vllm_max_tokens_per_item,
                    m.nanovl_max_tokens_per_item,
                    describe_item(m.largest_item) if m.HasField("largest_item") else "-",
                ]
                for m in b.modalities
            ],
        )
    )
    if b.HasField("encoder"):
        e = b.encoder
        profiled = (
            f"{e.profiled_items} x {modality_name(e.profiled_modality)}"
            if e.profiled_modality
            else f"no ({e.profile_note})"
        )
        out.append(
            _table(
                "Encoder budget",
                ["", "tokens", "bytes"],
                [
                    ["compute budget / step", e.compute_budget_tokens, format_bytes(e.compute_budget_bytes)],
                    ["encoder cache", e.cache_size_tokens, format_bytes(e.cache_size_bytes)],
                    ["vLLM profile uses", f"{e.vllm_profile_items} x {modality_name(e.vllm_profile_modality)}", ""],
                    ["profiled at start-up", profiled, ""],
                ],
            )
        )
    if b.HasField("exact_sizing"):
        out.append(render_exact_sizing(b.exact_sizing))
    kv = b.kv_cache
    out.append(
        _table(
            "Memory",
            ["", "value"],
            [
                ["KV cache blocks x block size", f"{kv.num_blocks} x {kv.block_size} = {kv.tokens} tokens"],
                [
                    "KV cache capacity (Mamba set aside)",
                    f"{kv.capacity_tokens} tokens, {kv.max_concurrency:.1f} x max_model_len",
                ],
                ["KV cache allocation", format_bytes(kv.bytes)],
                ["Mamba state per sequence", format_bytes(b.mamba_state_bytes_per_seq)],
                ["weights", format_bytes(b.weights_bytes)],
                *(
                    [
                        [
                            "GPU allocated / reserved / peak / total",
                            " / ".join(
                                format_bytes(x)
                                for x in (
                                    b.gpu.allocated_bytes,
                                    b.gpu.reserved_bytes,
                                    b.gpu.peak_allocated_bytes,
                                    b.gpu.total_bytes,
                                )
                            ),
                        ]
                    ]
                    if b.HasField("gpu")
                    else []
                ),
            ],
        )
    )
    out.append(
        _table(
            "Processes",
            ["role", "pid", "name", "RSS"],
            [[ROLE_NAMES[p.role], p.pid, p.name, format_bytes(p.rss_bytes)] for p in b.processes],
        )
    )
    return out


def render_exact_sizing(x: pb.ExactSizing) -> Any:
    """vLLM's default encoder sizing beside the applied one (``--exact-mm-sizing``)."""

    def profile(e: pb.EncoderSizing) -> str:
        return f"{e.profile_items} x {modality_name(e.profile_modality)}" if e.profile_modality else "-"

    d, a = x.vllm_default, x.applied
    rows = [
        [f"max tokens per {m} item", d.max_tokens_per_item[m], a.max_tokens_per_item.get(m, "-")]
        for m in d.max_tokens_per_item
    ]
    rows += [
        ["encoder compute budget", d.compute_budget_tokens, a.compute_budget_tokens],
        ["encoder cache", format_bytes(d.cache_size_bytes), format_bytes(a.cache_size_bytes)],
        ["start-up profile encodes", profile(d), profile(a)],
    ]
    rows += [
        [f"declared largest {modality_name(it.modality)}", "-", f"{it.declared}: {it.exact_tokens} tokens"]
        for it in x.items
    ]
    title = f"Encoder sizing: vLLM default vs applied (--exact-mm-sizing {x.setting or 'off'})"
    return _table(title, ["", "vLLM default", "applied"], rows)


def render_plan(p: pb.BudgetPlan) -> list[Any]:
    out = [
        _table(
            f"Per item (max_model_len {p.max_model_len}, max_num_seqs {p.max_num_seqs}, "
            f"max_num_batched_tokens {p.max_num_batched_tokens})",
            [
                "modality",
                "count",
                "item",
                "prompt tok/item",
                "encoder tok/item (exact)",
                "vLLM tok/item",
                "prompt tokens",
            ],
            [
                [
                    modality_name(m.modality),
                    m.count,
                    describe_item(m.item),
                    m.prompt_tokens_per_item,
                    m.encoder_tokens_per_item,
                    m.vllm_max_tokens_per_item,
                    m.prompt_tokens,
                ]
                for m in p.modalities
            ],
        )
    ]
    c = p.encoder_cache
    out.append(
        _table(
            "Encoder cache",
            ["", "tokens", "bytes"],
            [
                ["nanovl: needed by one maximal prompt", c.needed_tokens, format_bytes(c.needed_bytes)],
                ["nanovl: largest single item", c.min_tokens, ""],
                ["vLLM: allocates", c.vllm_tokens, format_bytes(c.vllm_bytes)],
                ["vLLM: start-up profile", f"{p.vllm_profiled_items} x {modality_name(p.vllm_profiled_modality)}", ""],
            ],
        )
    )
    vllm = {m.component: m.bytes for m in p.vllm_memory}
    out.append(
        _table(
            "Predicted memory",
            ["component", "nanovl", "vLLM sizing", "how"],
            [
                *[
                    [m.component, format_bytes(m.bytes), format_bytes(vllm.get(m.component, 0)), m.note]
                    for m in p.memory
                ],
                ["total", format_bytes(p.predicted_total_bytes), format_bytes(p.vllm_predicted_total_bytes), ""],
            ],
        )
    )
    verdict = "accepted" if p.accepted else f"rejected: {p.reason}"
    rows = [
        ["prompt tokens (media + text)", f"{p.prompt_tokens} ({p.media_prompt_tokens} media)"],
        ["a prompt with this mix", verdict],
    ]
    if p.binding_constraints:
        rows.append(["what binds", ", ".join(CONSTRAINT_NAMES[c] for c in p.binding_constraints)])
        if p.admitting_max_model_len:
            rows.append(["smallest max_model_len that fits it", p.admitting_max_model_len])
        if p.admitting_memory_bytes:
            rows.append(["memory it needs", format_bytes(p.admitting_memory_bytes)])
        if p.admitting_max_num_batched_tokens:
            rows.append(["max_num_batched_tokens it needs", p.admitting_max_num_batched_tokens])
        rows.append(["what would admit it", p.recommendation_note])
    rows.append(["recommended --limit-mm-per-prompt", p.recommended_limit_mm_per_prompt])
    rows += [[f"largest {describe_kind(m)} that fits", describe_item(m)] for m in p.largest_items_that_fit]
    out.append(_table("Verdict", ["", "value"], rows))
    return out


CONSTRAINT_NAMES = {
    pb.PLAN_CONSTRAINT_TOKENS: "tokens (max_model_len)",
    pb.PLAN_CONSTRAINT_ENCODER_CACHE: "encoder cache",
    pb.PLAN_CONSTRAINT_MEMORY: "memory",
    pb.PLAN_CONSTRAINT_UNSPECIFIED: "-",
}


def describe_kind(m: pb.MediaItems) -> str:
    return m.WhichOneof("item") or "-"


def render_dummy(r: pb.DummyProfileResult) -> list[Any]:
    rows = []
    for m in r.modalities:
        error = (
            (m.predicted_memory_bytes - m.peak_memory_increase_bytes) / m.peak_memory_increase_bytes * 100
            if m.peak_memory_increase_bytes
            else float("nan")
        )
        rows.append(
            [
                modality_name(m.modality),
                m.count,
                describe_item(m.item),
                f"{m.tokens} / {m.predicted_tokens}",
                f"{m.prompt_tokens} / {m.predicted_prompt_tokens}",
                f"{m.preprocess_s:.3f}",
                f"{m.encoder_s:.3f}",
                f"{format_bytes(m.peak_memory_increase_bytes)} ({m.memory_source})",
                format_bytes(m.predicted_memory_bytes),
                f"{error:+.0f}%",
                format_bytes(m.peak_rss_increase_bytes),
            ]
        )
    return [
        _table(
            "Dummy encoder passes: measured / predicted",
            [
                "modality",
                "count",
                "item",
                "encoder tokens",
                "prompt tokens",
                "preprocess s",
                "encoder s",
                "peak memory",
                "predicted",
                "error",
                "RSS increase",
            ],
            rows,
        )
    ]


# ------------------------------------------------------------------------ commands


class _Stub:
    """The Profiling stub with the connection's token sent on every call."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stub = stub
        self._metadata = metadata or None

    def __getattr__(self, name: str) -> Any:
        return functools.partial(getattr(self._stub, name), metadata=self._metadata)


def _stub(args: argparse.Namespace) -> Any:
    import grpc

    from nanovl.client.security import bearer_metadata
    from nanovl.v1 import profiling_pb2_grpc

    tls, token = connection_from_args(args)
    options = [("grpc.max_receive_message_length", 64 << 20), *(tls.channel_options() if tls else [])]
    if tls is None:
        channel = grpc.insecure_channel(args.target, options=options)
    else:
        channel = grpc.secure_channel(args.target, tls.credentials(), options=options)
    return _Stub(profiling_pb2_grpc.ProfilingStub(channel), bearer_metadata(token))


def _call(fn: Any, request: Any, timeout: float | None) -> Any:
    import grpc

    try:
        return fn(request, timeout=timeout)
    except grpc.RpcError as exc:
        raise CliError(f"{exc.code().name}: {exc.details()}") from None  # type: ignore[attr-defined]


def _emit(args: argparse.Namespace, message: Any, render: Any) -> None:
    from google.protobuf import json_format

    if args.json:
        print(
            json_format.MessageToJson(
                message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        )
        return
    from rich.console import Console

    console = Console()
    for table in render(message):
        console.print(table)


def cmd_budget(args: argparse.Namespace) -> int:
    _emit(args, _call(_stub(args).GetBudget, pb.GetBudgetRequest(), args.timeout), render_budget)
    return 0


@contextlib.contextmanager
def _offline_logging(verbose: bool) -> Iterator[None]:
    """vLLM logs to stdout by default, which would corrupt --json output; and its info
    lines (one set per vLLM config the planner builds), transformers' and torch's notices
    are not the plan: errors only, unless ``verbose``. Restored afterwards (the command
    may run inside another program, e.g. the tests)."""
    import logging

    env = {"VLLM_LOGGING_STREAM": "ext://sys.stderr"}
    if not verbose:
        env |= {"VLLM_LOGGING_LEVEL": "ERROR", "TRANSFORMERS_VERBOSITY": "error", "TORCH_LOGS": "-all"}
    saved_env = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        os.environ.setdefault(k, v)
    # Some log before vLLM configures its loggers (Triton, torch's CUDA notice).
    loggers = [] if verbose else [logging.getLogger(n) for n in ("vllm", "torch", "transformers")]
    saved_levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved_levels, strict=True):
            lg.setLevel(level)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cmd_plan(args: argparse.Namespace) -> int:
    request = plan_request(args)
    if args.model:
        from nanovl.errors import NanovlError

        with _offline_logging(args.verbose):
            try:
                plan = plan_offline(request)
            except NanovlError as exc:
                raise CliError(f"{exc.code.name}: {exc.message}") from None
    else:
        plan = _call(_stub(args).PlanBudget, request, args.timeout)
    _emit(args, plan, render_plan)
    return 0


def cmd_dummy(args: argparse.Namespace) -> int:
    _emit(args, _call(_stub(args).RunDummyProfile, dummy_request(args), args.timeout), render_dummy)
    return 0


def write_new_file(out_dir: Path, name: str, data: bytes) -> Path:
    """``data`` in ``out_dir/name``, never over an existing file: ``name`` with ``-1``,
    ``-2``, ... before its suffixes when it is taken."""
    base = Path(name).name
    stem, dot, suffixes = base.partition(".")
    for n in range(10_000):
        path = out_dir / (base if n == 0 else f"{stem}-{n}{dot}{suffixes}")
        try:
            with path.open("xb") as f:
                f.write(data)
            return path
        except FileExistsError:
            continue
    raise CliError(f"{out_dir}: too many files named like {base}")


def cmd_cpu(args: argparse.Namespace) -> int:
    import grpc

    fmt = {"speedscope": pb.CPU_PROFILE_FORMAT_SPEEDSCOPE, "flamegraph": pb.CPU_PROFILE_FORMAT_FLAMEGRAPH_SVG}
    roles = {
        "server": pb.PROCESS_ROLE_SERVER,
        "engine_core": pb.PROCESS_ROLE_ENGINE_CORE,
        "worker": pb.PROCESS_ROLE_WORKER,
    }
    req = pb.CaptureCpuProfileRequest(
        duration_s=args.duration,
        format=fmt[args.format],
        processes=[roles[r] for r in args.process or ()],
        native=args.native,
        include_idle=args.idle,
    )
    if args.rate is not None:  # unset: the server's default (lower for native sampling)
        req.rate_hz = args.rate
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[int, dict[str, Any]] = {}
    try:
        for chunk in _stub(args).CaptureCpuProfile(req, timeout=args.duration + 120):
            f = files.setdefault(chunk.file_index, {"data": bytearray()})
            if chunk.file_name:
                f.update(
                    name=Path(chunk.file_name).name,
                    pid=chunk.pid,
                    role=ROLE_NAMES[chunk.role],
                    content_type=chunk.content_type,
                    samples=chunk.samples,
                    errors=chunk.errors,
                    warning=chunk.warning,
                )
            f["data"].extend(chunk.data)
    except grpc.RpcError as exc:
        raise CliError(f"{exc.code().name}: {exc.details()}") from None  # type: ignore[attr-defined]
    written = []
    for index in sorted(files):
        f = files[index]
        path = write_new_file(out_dir, f["name"], bytes(f["data"]))
        written.append(
            {
                "role": f["role"],
                "pid": f["pid"],
                "path": str(path),
                "bytes": len(f["data"]),
                "samples": f["samples"],
                "errors": f["errors"],
                "warning": f["warning"],
            }
        )
    if args.json:
        print(json.dumps({"files": written}, indent=2))
    else:
        from rich.console import Console

        console = Console()
        console.print(
            _table(
                "CPU profiles written",
                ["role", "pid", "file", "size", "samples"],
                [[w["role"], w["pid"], w["path"], format_bytes(w["bytes"]), w["samples"]] for w in written],
            )
        )
        for w in written:
            if w["warning"]:
                console.print(f"warning: {w['warning']}", style="yellow", highlight=False)
    return 0


TORCH_ENDS = {
    pb.TORCH_PROFILE_END_STOPPED: "stopped by this call",
    pb.TORCH_PROFILE_END_STEPS: "recorded its engine steps",
    pb.TORCH_PROFILE_END_DURATION: "reached its time limit",
    pb.TORCH_PROFILE_END_MEMORY: "reached its memory bound (truncated)",
    pb.TORCH_PROFILE_END_UNSPECIFIED: "-",
}


def render_torch_started(r: pb.StartTorchProfileResponse) -> list[Any]:
    rows = [
        ["traces go to", "the server's --profiler-config.torch_profiler_dir"],
        ["engine steps at most", r.max_iterations],
        ["stops itself after", f"{r.max_duration_s:g} s"],
        ["stops early if an engine process grows by", format_bytes(r.max_memory_growth_bytes)],
    ]
    return [_table("Torch profile started", ["", ""], rows)]


def render_torch_stopped(r: pb.StopTorchProfileResponse) -> list[Any]:
    rows = [
        ["ended", TORCH_ENDS[r.ended_by]],
        ["recorded for", f"{r.duration_s:.1f} s"],
        ["peak memory growth", format_bytes(r.peak_memory_growth_bytes)],
        ["trace size", format_bytes(r.trace_bytes)],
        *[["file", f] for f in r.files],
    ]
    out: list[Any] = [_table("Torch profile (files in the server's torch_profiler_dir)", ["", ""], rows)]
    if r.warning:
        out.append(f"[yellow]warning: {r.warning}[/yellow]")
    return out


def cmd_torch(args: argparse.Namespace) -> int:
    stub = _stub(args)
    if args.action == "start":
        req = pb.StartTorchProfileRequest()
        if args.prefix:
            req.profile_prefix = args.prefix
        if args.delay_iterations is not None:
            req.delay_iterations = args.delay_iterations
        if args.max_iterations is not None:
            req.max_iterations = args.max_iterations
        if args.max_duration is not None:
            req.max_duration_s = args.max_duration
        _emit(args, _call(stub.StartTorchProfile, req, args.timeout), render_torch_started)
    else:
        _emit(args, _call(stub.StopTorchProfile, pb.StopTorchProfileRequest(), args.timeout), render_torch_stopped)
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``profile`` to a CLI's subparsers. ``args.func(args)`` runs the chosen command
    and returns the exit code (errors are printed as one line, exit code 1)."""
    profile = subparsers.add_parser(
        "profile",
        help="budgets, capacity plans and profilers (Profiling service)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = profile.add_subparsers(dest="profile_command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, *, target: bool = True) -> None:
        if target:
            p.add_argument(
                "--target",
                default=default_admin_target(),
                help="the server's admin (operator) port HOST:PORT (env NANOVL_ADMIN_TARGET)",
            )
            add_connection_args(p, token_env=ADMIN_TOKEN_ENV)
        p.add_argument("--json", action="store_true", help="print the response as JSON")
        p.add_argument("--timeout", type=positive_float, default=600.0, help="RPC deadline in seconds")

    p = sub.add_parser("budget", help="the running server's budgets, caches and memory")
    common(p)
    p.set_defaults(func=functools.partial(_run, cmd_budget))

    p = sub.add_parser("plan", help="what a configuration needs and whether a media mix fits (offline with --model)")
    common(p)
    p.add_argument("--model", help="plan offline for this checkpoint directory (no server)")
    p.add_argument("--limit", type=parse_limits, help="items per prompt: image=N,video=N,audio=N")
    p.add_argument("--image", type=parse_image, help="image size WIDTHxHEIGHT (default: the largest that fits)")
    p.add_argument(
        "--video",
        type=parse_video,
        help="video FRAMESxWIDTHxHEIGHT[@FPS]: frames sampled at FPS (default 2) from 0 s, as the server times "
        "them (default: the longest that fits)",
    )
    p.add_argument("--audio", type=parse_audio, help="audio length in seconds (default: the longest that fits)")
    p.add_argument("--max-model-len", type=positive_int)
    p.add_argument("--max-num-seqs", type=positive_int)
    p.add_argument("--max-num-batched-tokens", type=positive_int)
    p.add_argument("--text-tokens", type=non_negative_int, help="prompt tokens besides the media (text, chat template)")
    p.add_argument("--verbose", action="store_true", help="offline: show vLLM's and transformers' log lines")
    p.add_argument("--memory", type=parse_bytes, help="device memory budget, e.g. 4GiB")
    p.set_defaults(func=functools.partial(_run, cmd_plan))

    p = sub.add_parser("dummy", help="encode synthetic items in the live engine and measure them")
    common(p)
    p.add_argument("--image", type=parse_image, action="append", help="WIDTHxHEIGHT[:COUNT] (repeatable)")
    p.add_argument("--video", type=parse_video, action="append", help="FRAMESxWIDTHxHEIGHT[@FPS][:COUNT] (repeatable)")
    p.add_argument("--audio", type=parse_audio, action="append", help="SECONDS[:COUNT] (repeatable)")
    p.set_defaults(func=functools.partial(_run, cmd_dummy))

    p = sub.add_parser("cpu", help="sample the server's processes with py-spy")
    common(p)
    p.add_argument("--duration", type=positive_float, default=10.0, help="seconds to sample (whole seconds)")
    p.add_argument(
        "--rate", type=positive_int, help="samples per second (default: the server's, 100; lower for --native)"
    )
    p.add_argument("--format", choices=("speedscope", "flamegraph"), default="speedscope")
    p.add_argument(
        "--process",
        action="append",
        choices=("server", "engine_core", "worker"),
        help="only these processes (repeatable; default all)",
    )
    p.add_argument(
        "--native",
        action="store_true",
        help="include native (C/C++) frames (pauses each process briefly per sample; lower rate cap)",
    )
    p.add_argument("--idle", action="store_true", help="include idle threads")
    p.add_argument("--output-dir", default=".", help="where to write the profile files")
    p.set_defaults(func=functools.partial(_run, cmd_cpu))

    p = sub.add_parser("torch", help="start/stop vLLM's torch profiler (server-side traces)")
    common(p)
    p.add_argument("action", choices=("start", "stop"))
    p.add_argument("--prefix", help="trace file name prefix")
    p.add_argument("--delay-iterations", type=int, help="engine steps to skip before recording")
    p.add_argument("--max-iterations", type=int, help="engine steps to record (default: the server's, 50)")
    p.add_argument("--max-duration", type=float, metavar="S", help="the server stops the session after S seconds")
    p.set_defaults(func=functools.partial(_run, cmd_torch))
    return profile


def _run(command: Any, args: argparse.Namespace) -> int:
    try:
        return int(command(args))
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nanovl.cli.profile plan ...`` (the same as ``nanovl profile plan ...``)."""
    parser = argparse.ArgumentParser(prog="nanovl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["profile", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
