"""``docs/benchmarks.md``: the targets (:mod:`bench.report_sections`) and why any was
missed (:mod:`bench.why`), the before/after table, the results tables with ratios to (a),
the chunked-upload case, where nanovl's time goes, skipped sides, every error verbatim,
the machine and the method."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from pathlib import Path

from bench.config import WORKLOADS
from bench.passes import spread
from bench.plan import WARMUP_CONCURRENCY
from bench.plots import plot_bench
from bench.report_sections import (
    before_after,
    profiles_section,
    repo_relative,
    scaling_section,
    targets_section,
    upload_section,
)
from bench.results import BenchResult, PointResult, SideRun
from bench.targets import check_targets, frontend_ms_per_token
from bench.why import median_decode_ms, why_missed
from loadtest.results import GroupStats

__all__ = ["render_markdown", "write_report"]


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v * 1000:.1f}"


def _ratio(v: float | None, base: float | None) -> str:
    if v is None or not base:
        return "–"
    return f"{v / base:.2f}×"


def _stats(p: PointResult | None) -> GroupStats | None:
    if p is None or p.stats is None or p.stats.succeeded == 0:
        return None
    return p.stats


def _machine(result: BenchResult) -> list[str]:
    m = result.machine
    versions = ", ".join(f"{n} {v}" for n, v in m.versions)
    per_side = "; ".join(
        f"{result.config.label(s.side)} {s.load_before[0]:.2f}" for s in result.sides if s.load_before is not None
    )
    durations = "; ".join(
        f"{result.config.label(s.side)} {s.duration_s / 60:.1f} min" for s in result.sides if s.duration_s is not None
    )
    return [
        "## Machine",
        "",
        f"- CPU: {m.cpu_model}, {m.cpus} logical CPUs; {m.memory_gib:.1f} GiB RAM; no GPU; Linux "
        f"{m.kernel}; Python {m.python}",
        f"- Versions: {versions}",
        f"- Load average (1/5/15 min) at start: {'/'.join(f'{x:.2f}' for x in result.load_start)}; "
        f"at end: {'/'.join(f'{x:.2f}' for x in result.load_end)}; 1-min at each side's start: {per_side}",
        f"- Time per side (engine start, passes, profiles and the upload case included): {durations or '–'}; "
        f"whole run {result.duration_s / 60:.1f} min",
        "- The machine is shared with other engineers' test runs: anything above ~0 load average is someone "
        "else's work competing for the same 2 cores, so absolute figures are noisy and ratios between sides "
        "measured minutes apart carry that noise too.",
        "",
    ]


def _method(result: BenchResult, client_cpu: int | None) -> list[str]:
    c = result.config
    levels = ", ".join(f"c={conc}: {n} requests" for conc, n in c.levels)
    media = ", ".join(f"{k} {b / 1024:.1f} KiB" for k, b in result.media if b)
    commands = [f"    - {result.config.label(s.side)}: `{repo_relative(s.command)}`" for s in result.sides]
    pin = (
        (
            f"pinned to CPU {client_cpu} (`os.sched_setaffinity`) before it starts any thread, while every server "
            "(and the in-process child) is started with all CPUs"
        )
        if client_cpu is not None
        else "not pinned (one CPU)"
    )
    w, h = c.image_size
    vw, vh = c.video_size
    extra = ", ".join(f"`{k}={v}`" for k, v in result.inprocess_extra)
    return [
        "## Method",
        "",
        f"- Model: the tiny `NemotronH_Nano_VL_V2` checkpoint (`model.tiny.ensure_tiny_checkpoint()`, "
        f"`{repo_relative(result.checkpoint)}`). "
        "Its weights are random, so only speed means anything.",
        f"- One engine configuration for every side: `{' '.join(result.engine_flags)}` plus the environment of "
        "`service.engine.apply_process_environment` (`VLLM_CPU_KVCACHE_SPACE=1`, `VLLM_CPU_OMP_THREADS_BIND=0-1`, "
        "`VLLM_CPU_NUM_OF_RESERVED_CPU=0`). The benchmark parses these flags with vLLM's own parser and gives the "
        "in-process side (`default_engine_args`) every field that still differs, so all `AsyncEngineArgs` fields are "
        f"equal on every side (carried over from the CLI defaults: {extra or 'none'}); `max_num_seqs` and "
        "`max_num_batched_tokens` are pinned because vLLM's defaults differ between `vllm serve` and "
        "`AsyncLLM.from_engine_args` (usage context).",
        "- Sides, one after another (never two engines at once):",
        "  - (a) `AsyncLLM` in-process, no frontend: nanovl's `Engine` wrapper (`service.engine`) in a child process; "
        "media decoded and the chat rendered *before* timing with nanovl's own code, so the timed part is vLLM's "
        "renderer (tokenizer + multimodal processor) and generation — the limit for any frontend.",
        "  - (b) nanovl over gRPC (`nanovl serve`), driven by nanovl's load tester as a library "
        "(`loadtest.run_load_test_async`, unary `Generate`).",
        "  - (c) vLLM's OpenAI HTTP server: streamed chat completions (`stream: true`, `return_token_ids: true` so "
        "every token is seen, usage in the last chunk) with the same media as base64 data URLs "
        "(`image_url`, `video_url`, `input_audio`), over aiohttp.",
        "  - (d) vLLM's own gRPC server (`VllmEngine` from smg-grpc-servicer), text only: its API takes token ids, "
        "so the client renders the chat and tokenizes it before timing (its servicer also skips detokenization).",
        "  - (e) vLLM's Rust frontend (`VLLM_USE_RUST_FRONTEND=1 vllm serve … --grpc-port`: the `vllm-rs` process "
        "in front of the same engine core), text only, through its `vllm.Inference/GenerateStream` gRPC method "
        "with token ids in and token ids out (`bench.sides.vllm_rust`). Only the GPU `vllm` wheels ship the "
        "`vllm-rs` binary; where it is absent the side is skipped with the reason (see *Sides not run*).",
        "  - nanovl variants (`--nanovl-variant ID=FLAGS`; built in: (b2) `--frontend-processes 2`): nanovl with "
        "extra `nanovl serve` flags, measured like (b); with `--frontend-processes N` > 1 the load tester opens "
        "several channels (`--connections`, each its own TCP connection; how many: *Several frontend processes*), "
        "since the processes share one port and the kernel deals them connections, not calls. A variant whose "
        "flags `nanovl serve --help` does not list, "
        "or whose server refuses them, is skipped with the reason. A server's CPU is split by process: vLLM's "
        "engine processes (titles `VLLM::EngineCore`, `VLLM::Worker…`) are the engine, the server process and "
        "every other descendant (several frontend processes, the Rust frontend) the frontend.",
        "  - Commands:",
        *commands,
        "  - The `vllm` console script cannot start on this machine (`PackageNotFoundError: No package metadata was "
        "found for vllm` — the distribution is `vllm-cpu`), so (c) and (d) are started through the modules "
        "`vllm serve` and `vllm serve --grpc` call. nanovl sides get `--metrics-port` (metrics stay on, nanovl's "
        "default) on a port the benchmark picks, like the inference port (`--ports`, `--metrics-ports`).",
        "- Workloads (chat form, the checkpoint's template, for every side): "
        + "; ".join(f"**{n}**: {WORKLOADS[n].description}" for n in c.workloads)
        + f". Prompt text {c.prompt_words} random words; image {w}×{h} JPEG; video {c.video_frames} frames "
        f"{vw}×{vh} MP4 at {c.video_fps:g} fps (all frames sampled); audio {c.audio_seconds:g} s 16 kHz WAV. "
        f"Mean media bytes: {media or 'none'}.",
        f"- Load: closed loop, {levels}. Not measured: each workload first runs a warm-up level "
        f"(c={WARMUP_CONCURRENCY}, "
        "4 requests per kind; the first requests with a new media shape run much slower while the engine sets up "
        "its operators), and every level starts with one warm-up request per request kind. "
        f"Every request asks for {c.max_tokens} tokens with `ignore_eos` and temperature 0, so every side generates "
        "the same count.",
        f"- Passes: every level is measured at least {c.passes.min_passes} and at most {c.passes.max_passes} "
        "time(s), each with fresh prompts, the first passes interleaved (all levels once, then all again), so that "
        "a burst of interference from other processes spoils one pass, not all. The tables show the pass with the "
        "highest throughput (interference only ever slows a pass down) and, in *tok/s of each pass*, every pass's "
        "throughput (the chosen one in bold): the spread is this machine's noise. A point is *settled* when its two "
        f"fastest passes agree within {c.passes.agree_within:.0%}; an unsettled point gets another pass, the same "
        f"rule for every side, while the side has spent under {c.passes.extra_budget_s:.0f} s on extra passes "
        "(points still unsettled are marked in the tables).",
        "- Same requests everywhere: each point's prompts (random text and media, a fresh seed per "
        "point and pass so no prompt "
        "repeats and no cache can serve one) come from the load tester's own planner; (b) sends them itself, the "
        "others convert the same `GenerateRequest` messages. The *prompt tokens ≠ (a)* column counts requests whose "
        "prompt token count differs from (a)'s for the same request, over all passes: 0 means "
        "every frontend built the same "
        "prompt.",
        "- Metrics (definitions of `loadtest.results`, the same code summarises every side): output tokens/s and "
        "requests/s over the level's window (first send → last response); TTFT = send → first response carrying a "
        "token; ITL = gap between token-bearing responses, per token.",
        f"- Keeping the client from distorting the servers on 2 cores: the benchmark process is the client of (b), (c) "
        f"and (d); it is {pin}. Every request is built and serialised (protobuf, JSON with base64 media, token ids) "
        "before its level starts; one event loop sends them; no logging or display runs during a level. "
        "Every event loop in the run is uvloop: the benchmark client's, the in-process child's, nanovl's "
        "(`nanovl.event_loop`), and vLLM's servers' own (both of their entry points call `uvloop.run`), so no "
        "side is measured on a slower loop than another. "
        "With only 2 cores the client still shares a core with one of the engine's two OpenMP threads, so the CPU "
        "time of the client, of the server's frontend and engine processes, and of *every other process on the "
        "machine* is measured over each level (psutil) and reported beside the results: a point where other "
        "processes kept a core busy is a noisy point.",
        *_method_extras(result),
        "",
    ]


def _method_extras(result: BenchResult) -> list[str]:
    c = result.config
    lines = []
    if c.profile:
        points = ", ".join(f"{w} c={n}" for w, n in c.profile_points if w in c.workloads) or "none in this run"
        lines.append(
            f"- Profiles: after (b)'s measured passes, one extra pass per profiled point ({points}), "
            f"{c.profile_requests_per_slot} requests per unit of concurrency, with py-spy `record --native "
            "--rate 100 --full-filenames` attached to nanovl's server process (it is the benchmark's child, so "
            "ptrace is allowed); if `--native` fails the capture falls back to `--nonblocking` Python frames and "
            "says why."
        )
    if c.upload.enabled:
        lines.append(
            "- Chunked upload: after (b)'s passes, on the same server, one request at a time (see the section); "
            "the videos are generated once (seeded) and cached under `.cache/bench/upload/`."
        )
    return lines


def _table(result: BenchResult, workload: str) -> list[str]:
    base_run = result.side("inprocess")
    agree = result.config.passes.agree_within
    lines = [
        f"### {workload}",
        "",
        "| c | side | output tok/s | ×(a) | req/s | ×(a) | TTFT p50 ms | ×(a) | TTFT p90 ms | ITL p50 ms | errors | "
        "prompt tokens ≠ (a) | tok/s of each pass |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cpu_rows: list[str] = []
    for conc in result.config.concurrencies:
        a = _stats(base_run.point(workload, conc) if base_run else None)
        for run in result.sides:
            if run.skipped or workload not in result.config.workloads_for(run.side):
                continue
            p = run.point(workload, conc)
            label = result.config.label(run.side)
            if p is None or p.level is None:
                why = (p.error if p is not None else None) or (run.error.splitlines()[0] if run.error else "not run")
                lines.append(f"| {conc} | {label} | – | | – | | – | | – | – | not run: {why[:80]} | | |")
                continue
            g = p.level.overall
            ok = g.succeeded > 0
            passes = run.passes(workload, conc)
            checked = [q.prompt_mismatches for q in passes if q.prompt_mismatches is not None]
            each = " / ".join(
                "–"
                if q.level is None
                else (
                    f"**{q.level.overall.output_tokens_per_s:.1f}**"
                    if q.chosen and len(passes) > 1
                    else f"{q.level.overall.output_tokens_per_s:.1f}"
                )
                for q in passes
            )
            rates = [q.level.overall.output_tokens_per_s for q in passes if q.level is not None and q.error is None]
            sp = spread(rates)
            if sp is not None and sp > agree:
                each += f" (unsettled: the two fastest {sp:.0%} apart)"
            if p.cpu is not None and g.output_tokens:
                u, ms_per_token = p.cpu, 1000.0 / g.output_tokens
                client = "–" if run.side == "inprocess" else f"{u.client_s / u.window_s:.0%}"
                cpu_rows.append(
                    f"| {conc} | {label} | {u.frontend_s * ms_per_token:.3f} | {u.engine_s * ms_per_token:.2f} "
                    f"| {u.frontend_processes} | {client} | {u.other_cores:.2f} |"
                )
            lines.append(
                f"| {conc} | {label} | {g.output_tokens_per_s:.1f} "
                f"| {_ratio(g.output_tokens_per_s, a.output_tokens_per_s if a else None)} "
                f"| {g.requests_per_s:.2f} | {_ratio(g.requests_per_s, a.requests_per_s if a else None)} "
                f"| {_ms(g.ttft.p50 if ok else None)} | {_ratio(g.ttft.p50, a.ttft.p50 if a else None)} "
                f"| {_ms(g.ttft.p90 if ok else None)} | {_ms(g.itl.p50 if ok else None)} | {g.failed} "
                f"| {sum(checked) if checked else '–'} | {each} |"
            )
    lines.append("")
    if cpu_rows:
        lines += [
            f"CPU during the measured requests of {workload} (frontend: the server's frontend processes — the server "
            "process and its descendants that are not vLLM's engine core or workers; for (a) the process holding "
            "`AsyncLLM` and the benchmark loop; engine: the vLLM engine-core and worker processes; busy frontend "
            "processes: those that used ≥ 1 % of a core, nanovl's media decode workers included; client: the "
            "benchmark process, as a share of one core; "
            "other: every other process on the machine, in cores kept busy on average — the noise):",
            "",
            "| c | side | frontend CPU ms / output token | engine CPU ms / output token | busy frontend processes "
            "| client CPU | other processes (cores) |",
            "|---:|---|---:|---:|---:|---:|---:|",
            *cpu_rows,
            "",
        ]
    return lines


def _spread_summary(result: BenchResult) -> list[str]:
    """Per side: passes run, points settled, and the spread between each point's two
    fastest passes (this machine's pass-to-pass noise)."""
    agree = result.config.passes.agree_within
    rows = []
    for run in result.sides:
        if run.skipped or not run.points:
            continue
        keys = list(dict.fromkeys((p.workload, p.concurrency) for p in run.points))
        spreads, passes = [], 0
        for w, c in keys:
            ps = run.passes(w, c)
            passes += len(ps)
            sp = spread([q.level.overall.output_tokens_per_s for q in ps if q.level is not None and q.error is None])
            if sp is not None:
                spreads.append(sp)
        settled = sum(1 for sp in spreads if sp <= agree)
        rows.append(
            f"| {result.config.label(run.side)} | {len(keys)} | {passes} | {settled} of {len(keys)} "
            f"| {'–' if not spreads else f'{statistics.median(spreads):.0%}'} "
            f"| {'–' if not spreads else f'{max(spreads):.0%}'} |"
        )
    if not rows:
        return []
    return [
        f"Pass-to-pass spread (how far each point's second-fastest pass is below its fastest; *settled*: within "
        f"{agree:.0%}):",
        "",
        "| side | points | passes run | settled | median spread | largest spread |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]


def _above_inprocess(result: BenchResult) -> list[str]:
    """Points where a frontend beat (a), which on paper is its upper bound: say so, with
    the figures that show where the difference is (engine step cadence, not frontend work)."""
    base = result.side("inprocess")
    if base is None:
        return []
    rows = []
    for run in result.sides:
        if run.side == "inprocess":
            continue
        for p in run.chosen:
            a = base.point(p.workload, p.concurrency)
            ga, gb = _stats(a), _stats(p)
            if ga is None or gb is None or not ga.output_tokens_per_s:
                continue
            ratio = gb.output_tokens_per_s / ga.output_tokens_per_s
            if ratio > 1.03:
                fa, fb = frontend_ms_per_token(a), frontend_ms_per_token(p)
                rows.append(
                    f"| {result.config.label(run.side)} | {p.workload} | {p.concurrency} | {ratio:.2f}× "
                    f"| {_ms(ga.itl.p50)} | "
                    f"{_ms(gb.itl.p50)} | {'–' if fa is None else f'{fa:.2f}'} | {'–' if fb is None else f'{fb:.2f}'} |"
                )
    if not rows:
        return []
    return [
        "### Where a frontend beat (a)",
        "",
        "(a) is meant to be the limit for any frontend, yet at these points a side served more tokens per second "
        "than it. Where (a)'s frontend process used no more CPU per token but its decode steps were further apart "
        "(ITL), the difference is the engine's step cadence, not frontend work (a) failed to avoid: on this 2-core "
        "machine the engine's worker keeps both cores busy with its OpenMP threads and the engine core polls "
        "(`sched_yield`) between steps, so how closely steps follow each other depends on how the OS schedules "
        "those processes against the frontend's, which the frontend's own activity changes. Treat such ratios "
        "above 1 as that effect plus noise, and compare the frontends with each other directly.",
        "",
        "| side | workload | c | throughput ×(a) | ITL p50 (a) ms | ITL p50 side ms | frontend CPU "
        "ms/token (a) | frontend CPU ms/token side |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]


def _nanovl_breakdown(run: SideRun | None) -> list[str]:
    """Client-measured vs server-measured TTFT: what the server reports (Final.timings)
    against what the client saw; the difference is transport and client."""
    if run is None or not run.chosen:
        return []
    lines = [
        "### nanovl TTFT: client vs server",
        "",
        "The server's own TTFT (`Final.timings.ttft_s`: request received → first token, including media decoding "
        "and vLLM's renderer) against the client's; the difference is gRPC transport, (de)serialisation and the "
        "client's event loop. *Media decode* is the part of the server's TTFT spent decoding the request's media "
        "(`Final.timings.decode_media_s`), which side (a) does before its clock starts.",
        "",
        "| workload | c | client TTFT p50 ms | server TTFT p50 ms | client − server p50 ms | server queue p50 ms "
        "| media decode p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in run.chosen:
        if p.level is None:
            continue
        reqs = [r for r in p.level.requests if r.ok and r.ttft_s is not None and r.server_ttft_s is not None]
        if not reqs:
            continue
        client = statistics.median(r.ttft_s for r in reqs)  # type: ignore[misc]
        server = statistics.median(r.server_ttft_s for r in reqs)  # type: ignore[misc]
        gap = statistics.median(r.ttft_s - r.server_ttft_s for r in reqs)  # type: ignore[operator]
        queue = [r.server_queue_s for r in reqs if r.server_queue_s is not None]
        decode = median_decode_ms(p)
        lines.append(
            f"| {p.workload} | {p.concurrency} | {client * 1000:.1f} | {server * 1000:.1f} | {gap * 1000:.1f} "
            f"| {_ms(statistics.median(queue)) if queue else '–'} "
            f"| {'–' if decode is None else f'{decode:.1f}'} |"
        )
    lines.append("")
    return lines


def _skipped(result: BenchResult) -> list[str]:
    rows = [f"- {result.config.label(r.side)}: {r.skipped}" for r in result.sides if r.skipped]
    if not rows:
        return []
    return ["## Sides not run", "", *rows, ""]


def _errors(result: BenchResult) -> list[str]:
    lines: list[str] = []
    for run in result.sides:
        label = result.config.label(run.side)
        if run.error:
            lines += [f"- {label} could not run:", "", "```", run.error.strip(), "```", ""]
        for p in run.chosen:
            if p.error:
                lines += [f"- {label}, {p.workload} c={p.concurrency}: `{p.error}`", ""]
            elif p.level is not None:
                for e in p.level.overall.errors:
                    lines.append(
                        f"- {label}, {p.workload} c={p.concurrency}: {e.count} × `{e.code}`: `{e.first_message[:300]}`"
                    )
        short = [
            (run.side, p.workload, p.concurrency)
            for p in run.chosen
            if p.level is not None
            for r in p.level.requests
            if r.ok and r.output_tokens != result.config.max_tokens
        ]
        if short:
            lines.append(
                f"- {label}: {len(short)} request(s) generated a count other than {result.config.max_tokens} tokens"
            )
    if result.upload is not None and result.upload.error:
        lines.append(f"- the chunked-upload case: `{result.upload.error}`")
    if not lines:
        return [
            "## Errors",
            "",
            "None: every request of every side that ran succeeded with the requested token count.",
            "",
        ]
    return ["## Errors", "", *lines, ""]


def render_markdown(result: BenchResult, plots: Sequence[Path], doc_path: Path, *, client_cpu: int | None) -> str:
    rel = [os.path.relpath(p, doc_path.parent) for p in plots]
    checks = check_targets(result)
    mode = (
        "quick run (`python -m bench.run --quick`)" if result.config.quick else "`make bench` (`python -m bench.run`)"
    )
    ran = [result.config.label(r.side) for r in result.sides if not r.skipped]
    lines = [
        "# Benchmarks: nanovl vs in-process AsyncLLM vs vLLM's frontends",
        "",
        f"Generated by {mode} on {result.started_at} in {result.duration_s / 60:.1f} min; rerun it rather than "
        "editing this file. Raw results: `benchmarks/results.json`. Sides: " + "; ".join(ran) + ".",
        "",
        *targets_section(result, checks),
        *why_missed(result, checks),
        *before_after(result),
        "## Results",
        "",
        "Absolute figures and the ratio to (a), per workload, concurrency and side.",
        "",
        *_spread_summary(result),
    ]
    for w in result.config.workloads:
        lines += _table(result, w)
    lines += [f"![{Path(r).stem}]({r})" for r in rel] + [""]
    lines += upload_section(result)
    lines += scaling_section(result)
    lines += [
        "## Where nanovl's time goes",
        "",
        *_nanovl_breakdown(result.side("nanovl")),
        *profiles_section(result),
        *_above_inprocess(result),
    ]
    lines += _skipped(result)
    lines += _errors(result)
    lines += _machine(result)
    lines += _method(result, client_cpu)
    return "\n".join(lines).rstrip() + "\n"


def write_report(result: BenchResult, doc_path: Path, assets_dir: Path, *, client_cpu: int | None) -> Path:
    plots = plot_bench(result, assets_dir)
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    doc_path.write_text(render_markdown(result, plots, doc_path, client_cpu=client_cpu))
    return doc_path
