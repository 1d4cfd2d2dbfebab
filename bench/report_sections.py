"""Sections of ``docs/benchmarks.md`` for issue 16: the targets tables (with every side's
frontend CPU per output token), the before/after table of nanovl's frontend CPU per
token, the chunked-upload case and the py-spy ``--native`` split. :mod:`bench.report`
puts them together with the results tables."""

from __future__ import annotations

import os
from collections.abc import Sequence

from bench.profile import OWNERS
from bench.results import BenchResult, PointResult, ProfileSummary
from bench.servers import REPO_ROOT
from bench.targets import (
    FRONTEND_CPU,
    NANOVL,
    UPLOAD,
    UPLOAD_ADDED_TTFT,
    VS_INPROCESS,
    VS_PEERS_THROUGHPUT,
    VS_PEERS_TTFT,
    TargetCheck,
    frontend_ms_per_token,
    point_stats,
)
from bench.upload import upload_summary

__all__ = [
    "before_after",
    "frontend_cpu_table",
    "profiles_section",
    "scaling_section",
    "targets_section",
    "upload_section",
]


def repo_relative(text: str) -> str:
    """Paths under the checkout, relative to it (the report is read elsewhere)."""
    return text.replace(str(REPO_ROOT) + os.sep, "")


def _mark(met: bool | None) -> str:
    return {True: "**met**", False: "**missed**", None: "not measured"}[met]


def _cell(check: TargetCheck | None) -> str:
    if check is None:
        return "–"
    return f"{_mark(check.met)}: {check.measured}" if check.met is not None else f"not measured ({check.measured})"


def _count(checks: Sequence[TargetCheck]) -> str:
    met = sum(1 for c in checks if c.met)
    missed = sum(1 for c in checks if c.met is False)
    return f"{met} met, {missed} missed, {sum(1 for c in checks if c.met is None)} not measured"


def targets_section(result: BenchResult, checks: Sequence[TargetCheck]) -> list[str]:
    """Issue 16's targets as a matrix (workload × concurrency rows, one column per target),
    the upload case, every side's frontend CPU per token, then the earlier targets."""
    new = [c for c in checks if not c.earlier]
    earlier = [c for c in checks if c.earlier]
    by_key = {(c.target, c.workload, c.concurrency): c for c in new}
    lines = [
        "## Targets",
        "",
        f"Issue 16: {_count(new)}; earlier targets: {_count(earlier)} (reported here, never asserted by tests). "
        "*Peers* are vLLM's frontends that ran the point: (c) HTTP, (d) gRPC (smg), (e) the Rust frontend; each "
        "ratio is nanovl (b) ÷ that peer.",
        "",
        "| workload | c | throughput ≥ every peer's | TTFT p50 ≤ every peer's | frontend CPU / output token lowest "
        "(ms) | throughput ≥ 0.97× in-process |",
        "|---|---:|---|---|---|---|",
    ]
    for w in result.config.workloads:
        for c in result.config.concurrencies:
            cells = [
                _cell(by_key.get((t, w, c))) for t in (VS_PEERS_THROUGHPUT, VS_PEERS_TTFT, FRONTEND_CPU, VS_INPROCESS)
            ]
            lines.append(f"| {w} | {c} | " + " | ".join(cells) + " |")
    upload = next((c for c in new if c.target == UPLOAD), None)
    lines.append("")
    if upload is not None:
        lines += [
            f"Chunked upload (a {result.upload.spec.target_bytes / 2**20:.0f} MiB video through `StreamGenerate` in "  # type: ignore[union-attr]
            f"{result.upload.spec.chunk_size // 1024} KiB chunks vs the bytes already on the server; target "  # type: ignore[union-attr]
            f"≤ +{UPLOAD_ADDED_TTFT:.0%} TTFT): {_cell(upload)}. Details: *Chunked upload* below.",
            "",
        ]
    lines += frontend_cpu_table(result)
    if earlier:
        lines += [
            "Earlier targets (the redesign issue), still tracked:",
            "",
            "| target | workload | c | measured | result |",
            "|---|---|---:|---|---|",
            *(f"| {c.target} | {c.workload} | {c.concurrency} | {c.measured} | {_mark(c.met)} |" for c in earlier),
            "",
        ]
    return lines


def frontend_cpu_table(result: BenchResult) -> list[str]:
    """Frontend CPU ms per output token, every side that ran, every point; the lowest
    frontend (not (a), which has none) in bold."""
    runs = [r for r in result.sides if not r.skipped and r.points]
    if not runs:
        return []
    specs = result.config.side_specs
    lines = [
        "Frontend CPU per output token (ms; the server's frontend processes, from psutil over the measured "
        "requests of the chosen pass; (a) is the process holding `AsyncLLM` and the benchmark loop, no frontend; "
        "the lowest frontend in bold):",
        "",
        "| workload | c | " + " | ".join(result.config.label(r.side) for r in runs) + " |",
        "|---|---:|" + "---:|" * len(runs),
    ]
    for w in result.config.workloads:
        for c in result.config.concurrencies:
            values = {r.side: frontend_ms_per_token(r.point(w, c)) for r in runs}
            frontends = [v for s, v in values.items() if v is not None and specs[s].kind != "inprocess"]
            low = min(frontends) if frontends else None
            cells = []
            for r in runs:
                v = values[r.side]
                if v is None:
                    cells.append("–")
                elif v == low and specs[r.side].kind != "inprocess":
                    cells.append(f"**{v:.3f}**")
                else:
                    cells.append(f"{v:.3f}")
            lines.append(f"| {w} | {c} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def scaling_section(result: BenchResult) -> list[str]:
    """Each nanovl side with several frontend processes against (b), point by point:
    throughput, frontend CPU per output token, the processes that were busy, the busiest
    one's share of a core, and the output tokens/s at which that process would reach a
    whole core with the load split as measured (throughput ÷ its share): the server's
    frontend ceiling. On this machine the engine, not the frontend, is the limit, so no
    process is driven to a full core."""
    specs = result.config.side_specs
    base = result.side("nanovl")
    multi = [
        r
        for r in result.sides
        if r.side in specs and specs[r.side].frontend_processes > 1 and not r.skipped and r.points
    ]
    if base is None or base.skipped or not multi:
        return []
    lines = [
        "## Several frontend processes",
        "",
        "nanovl with `--frontend-processes N` against (b), one process, each over the connections shown (the "
        "processes share the port and the kernel deals each connection to one of them, never the calls of one, "
        "so the split of the load varies from point to point). *Busy*: frontend processes that used ≥ 1 % of a "
        "core (with media, their decode worker processes too); *busiest*: the share of a core the busiest one "
        "used over the measured requests; *ceiling*: output tokens/s ÷ the busiest process's share, the rate "
        "at which that process would reach a whole core with the load split as it was — the frontend's limit. "
        "Throughput here is bounded by the engine (two OpenMP threads on two cores), so no frontend process "
        "reaches a full core and the throughput ratio measures the engine's share of the CPU, not the frontends' "
        "scaling; the CPU columns do. Each process pays the per-engine-step costs (output processing, its event "
        "loop's wake-ups) for its share of the requests, so N processes cost more CPU per token than one, and an "
        "uneven split lowers the ceiling further.",
        "",
        "| workload | c | side | connections | output tok/s | × (b) | frontend ms / token | × (b) | busy "
        "| busiest (cores) | ceiling (tok/s) | × (b) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ceiling(p: PointResult | None) -> float | None:
        g = point_stats(p)
        if p is None or g is None or p.cpu is None or not p.cpu.window_s or not p.cpu.busiest_frontend_s:
            return None
        return g.output_tokens_per_s / (p.cpu.busiest_frontend_s / p.cpu.window_s)

    def ratio(x: float | None, y: float | None) -> str:
        return f"{x / y:.2f}×" if x and y else "–"

    for w in result.config.workloads:
        for c in result.config.concurrencies:
            b = base.point(w, c)
            for run in (base, *multi):
                p = run.point(w, c)
                g = point_stats(p)
                if p is None or g is None:
                    continue
                ms, top = frontend_ms_per_token(p), ceiling(p)
                cells = [
                    w,
                    str(c),
                    result.config.label(run.side),
                    str(run.connections),
                    f"{g.output_tokens_per_s:.1f}",
                    ratio(g.output_tokens_per_s, point_stats(b).output_tokens_per_s if point_stats(b) else None),
                    _v(ms),
                    ratio(ms, frontend_ms_per_token(b)),
                    str(p.cpu.frontend_processes) if p.cpu else "–",
                    f"{p.cpu.busiest_frontend_s / p.cpu.window_s:.2f}" if p.cpu and p.cpu.window_s else "–",
                    f"{top:.0f}" if top else "–",
                    ratio(top, ceiling(b)),
                ]
                lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def before_after(result: BenchResult) -> list[str]:
    """nanovl's frontend CPU per output token against a saved run (``--baseline``), with
    vLLM's HTTP server as the control (its code did not change: its drift is the machine's)."""
    base = result.baseline
    if base is None:
        return []
    b_run, h_run, a_run = result.side(NANOVL), result.side("vllm-http"), result.side("inprocess")
    rows = []
    for w in result.config.workloads:
        for c in result.config.concurrencies:
            before = base.point(NANOVL, w, c)
            now = frontend_ms_per_token(b_run.point(w, c)) if b_run else None
            hb = base.point("vllm-http", w, c)
            hn = frontend_ms_per_token(h_run.point(w, c)) if h_run else None
            b_ms = before.frontend_ms_per_token if before else None
            h_ms = hb.frontend_ms_per_token if hb else None
            change = f"{now / b_ms - 1:+.0%}" if now is not None and b_ms else "–"
            control = f"{hn / h_ms - 1:+.0%}" if hn is not None and h_ms else "–"
            tb = before.output_tokens_per_s if before else None
            tn = (
                point_stats(b_run.point(w, c)).output_tokens_per_s if b_run and point_stats(b_run.point(w, c)) else None
            )  # type: ignore[union-attr]
            ab = base.point("inprocess", w, c)
            an = frontend_ms_per_token(a_run.point(w, c)) if a_run else None
            rel_b = b_ms / ab.frontend_ms_per_token if b_ms and ab and ab.frontend_ms_per_token else None
            rel_n = now / an if now and an else None
            rel = (f"{rel_b:.2f}×" if rel_b else "–") + " → " + (f"{rel_n:.2f}×" if rel_n else "–")
            rel += f" ({rel_n / rel_b - 1:+.0%})" if rel_b and rel_n else ""
            rows.append(
                f"| {w} | {c} | {_v(b_ms)} | {_v(now)} | {change} | {_v(tb, 1)} | {_v(tn, 1)} "
                f"| {_v(h_ms)} → {_v(hn)} ({control}) | {rel} |"
            )
    return [
        "## Before / after: nanovl's frontend CPU per output token",
        "",
        f"*Before*: `{repo_relative(base.source)}` (run of {base.started_at}); *now*: this run. Same benchmark, same "
        "points; the control column is vLLM's HTTP server, whose code did not change, so its change is the "
        "machine's drift between the two runs; the last column divides (b) by (a), the in-process loop's CPU per "
        "token (no frontend, no nanovl code), which takes the machine's speed out of both runs.",
        "",
        "| workload | c | (b) before ms/token | (b) now ms/token | change | (b) before tok/s | (b) now tok/s "
        "| control: (c) ms/token before → now | (b) ÷ (a) before → now |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
        *rows,
        "",
    ]


def _v(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:+.0%}"


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{x * 1000:.0f}"


def upload_section(result: BenchResult) -> list[str]:
    up = result.upload
    if up is None:
        return []
    spec = up.spec
    head = [
        "## Chunked upload: StreamGenerate vs bytes already on the server",
        "",
        f"A {spec.width}×{spec.height} H.264 video of about {spec.target_bytes / 2**20:.0f} MiB "
        f"({up.video_frames} frames, {up.video_seconds:.1f} s at {spec.fps} fps, a keyframe every {spec.gop} frames, "
        f"film grain so it does not compress away; {spec.num_frames} frames sampled by the server), "
        f"{spec.max_tokens} tokens out, one request at a time, {spec.repeats} per variant, each with its own video "
        "(vLLM caches processed media by content). *StreamGenerate*: the video in "
        f"{spec.chunk_size // 1024} KiB chunks; *Generate*: the video inline in one message. The bytes are *already "
        "on the server* when `Generate`'s server-side clock starts (`Final.timings.ttft_s`: start → first token, "
        "the whole request received and parsed), so the TTFT the upload path adds is StreamGenerate's client TTFT "
        "p50 ÷ Generate's server TTFT p50 − 1.",
        "",
    ]
    if up.server_limits is not None:
        head += [
            f"Server limits (`GetModelInfo`): `--max-message-bytes` {up.server_limits[0]:,}, `--max-request-bytes` "
            f"{up.server_limits[1]:,} — nanovl's defaults, large enough: the nanovl side runs with no extra flag.",
            "",
        ]
    if up.error:
        return [*head, f"The case could not run: `{up.error}`", ""]
    s = upload_summary(up)
    lines = [
        *head,
        "| | p50 ms |",
        "|---|---:|",
        f"| StreamGenerate: client TTFT (first chunk sent → first token) | {_ms(s.stream_client_ttft)} |",
        f"| StreamGenerate: upload, server clock (header → End) | {_ms(s.stream_upload)} |",
        f"| StreamGenerate: server TTFT (End → first token) | {_ms(s.stream_server_ttft)} |",
        f"| Generate (video inline): client TTFT | {_ms(s.unary_client_ttft)} |",
        f"| Generate: server TTFT (start → first token) = bytes already on the server | {_ms(s.unary_server_ttft)} |",
        f"| media decode (both variants, server) | {_ms(s.decode_media)} |",
        "",
        f"TTFT added by the upload path: **{_pct(s.added)}** (target ≤ +{UPLOAD_ADDED_TTFT:.0%}). Cross-checks: "
        f"the time before End alone (each StreamGenerate's client TTFT − its server TTFT, p50) is "
        f"{_pct(s.before_end)} of the bytes-on-server TTFT, free of the decode's request-to-request noise; over "
        f"sending the same bytes in one `Generate` message the chunked upload adds {_pct(s.added_vs_unary_client)}.",
        "",
        "Every request (ms; the variants alternate, each pair's first variant first):",
        "",
        "| # | variant | video MiB | client TTFT | server TTFT | upload | media decode | preprocess | prefill "
        "| prompt tokens | error |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for x in up.samples:
        lines.append(
            f"| {x.index} | {x.variant} | {x.video_bytes / 2**20:.1f} | {_ms(x.client_ttft_s)} "
            f"| {_ms(x.server_ttft_s)} "
            f"| {_ms(x.upload_s)} | {_ms(x.decode_media_s)} | {_ms(x.preprocess_s)} | {_ms(x.prefill_s)} "
            f"| {x.prompt_tokens} | {x.error or ''} |"
        )
    lines.append("")
    return lines


def _measured_ms(result: BenchResult, prof: ProfileSummary) -> float | None:
    """nanovl's frontend CPU ms per token at the profiled point in the measured passes."""
    run = result.side(NANOVL)
    return frontend_ms_per_token(run.point(prof.workload, prof.concurrency)) if run is not None else None


def profiles_section(result: BenchResult) -> list[str]:
    profs = [p for p in result.profiles]
    if not profs:
        return []
    ok = [p for p in profs if not p.error and p.split]
    native = all(p.native for p in ok) if ok else False
    lines = [
        "### Where nanovl's frontend time goes (py-spy" + (" --native" if native else "") + ")",
        "",
        "py-spy (100 Hz, idle threads excluded, "
        + (
            "`--native`: C, C++ and Cython frames too; it pauses the process per sample"
            if native
            else "Python frames only"
        )
        + ") on the nanovl server's frontend process during extra, unmeasured passes "
        f"({result.config.profile_requests_per_slot} requests per unit of concurrency, fresh prompts). Each busy "
        "sample is attributed to one owner: the innermost frame that belongs to gRPC, protobuf, vLLM's output "
        "processor, its detokenizer, its input processing, nanovl's own code, nanovl's tracing or metrics, or the "
        "event loop; other libraries (libc, the interpreter, numpy, PIL, tokenizers, ZMQ, msgspec, "
        "prometheus_client) count for their caller (`bench.profile.split_speedscope`). Samples of a thread "
        "blocked in a wait (epoll, poll, a condition variable, a Python lock, the GIL) are left out: `--native` "
        "pauses the process to unwind it, so py-spy cannot tell them apart by thread state. *ms/token* = the "
        "share × nanovl's frontend CPU per output token at that point in the measured passes (the profiled "
        "pass's own figures, slowed by sampling, are in the first row).",
        "",
    ]
    for p in profs:
        if p.native_failed:
            lines += [
                f"- {p.workload} c={p.concurrency}: `--native` failed, fell back to Python frames: `{p.native_failed}`"
            ]
        if p.error:
            lines += [f"- {p.workload} c={p.concurrency}: the capture failed: `{p.error}`"]
    if any(p.native_failed or p.error for p in profs):
        lines.append("")
    if not ok:
        return lines
    head = "| owner | " + " | ".join(f"{p.workload} c={p.concurrency} % · ms/token" for p in ok) + " |"
    lines += [
        head,
        "|---|" + "---:|" * len(ok),
        "| *profiled pass: busy samples s · frontend CPU s (psutil) · frontend ms/token* | "
        + " | ".join(f"{p.busy_s:.1f} · {_v(p.frontend_cpu_s, 1)} · {_v(p.frontend_ms_per_token)}" for p in ok)
        + " |",
    ]
    measured = [_measured_ms(result, p) or p.frontend_ms_per_token for p in ok]
    for owner in OWNERS:
        cells = []
        for p, ms in zip(ok, measured, strict=True):
            share = next((e.percent for e in p.split if e.name == owner), 0.0)
            cells.append(f"{share:.1f} · {_v(share / 100 * ms if ms is not None else None)}")
        lines.append(f"| {owner} | " + " | ".join(cells) + " |")
    lines += ["", "Innermost functions (share of busy samples) and speedscope files:", ""]
    for p in ok:
        top = ", ".join(f"`{e.name.replace('|', '/')}` {e.percent:.1f}%" for e in p.by_function[:8])
        lines.append(f"- **{p.workload} c={p.concurrency}** (`{repo_relative(p.path)}`): {top}")
    lines.append("")
    return lines
