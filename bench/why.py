"""Why each missed target was missed, generated from the measurements (the report's
"Why targets were missed" section). Every statement is a measured figure: pass ranges
(this machine's pass-to-pass noise), frontend and engine CPU per output token, nanovl's
own server-side timings, the upload's server timings, and the py-spy split."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from bench.results import BenchResult, PointResult, ProfileSummary, SideRun
from bench.targets import (
    FRONTEND_CPU,
    NANOVL,
    TTFT_C1,
    UPLOAD,
    UPLOAD_ADDED_TTFT,
    VS_HTTP,
    VS_INPROCESS,
    VS_PEERS_THROUGHPUT,
    VS_PEERS_TTFT,
    TargetCheck,
    frontend_ms_per_token,
    peer_runs,
    point_stats,
)
from bench.upload import upload_summary

__all__ = ["cpu_ms_per_token", "median_decode_ms", "median_gap_ms", "pass_range", "why_missed"]


def cpu_ms_per_token(p: PointResult | None) -> tuple[float, float] | None:
    """(frontend + client, engine) CPU ms per output token: everything outside the engine
    that serving these tokens cost, and the engine's own."""
    g = point_stats(p)
    if p is None or g is None or p.cpu is None or not g.output_tokens:
        return None
    per = 1000 / g.output_tokens
    return (p.cpu.frontend_s + p.cpu.client_s) * per, p.cpu.engine_s * per


def engine_ms_per_token(p: PointResult | None) -> float | None:
    g = point_stats(p)
    if p is None or g is None or p.cpu is None or not g.output_tokens:
        return None
    return p.cpu.engine_s * 1000 / g.output_tokens


def median_gap_ms(p: PointResult | None) -> float | None:
    """Median of client TTFT − server TTFT (nanovl reports its own TTFT in Final)."""
    if p is None or p.level is None:
        return None
    gaps = [
        r.ttft_s - r.server_ttft_s
        for r in p.level.requests
        if r.ok and r.ttft_s is not None and r.server_ttft_s is not None
    ]
    return statistics.median(gaps) * 1000 if gaps else None


def median_decode_ms(p: PointResult | None) -> float | None:
    """Median server-side media decoding time of the point's requests that carried media."""
    if p is None or p.level is None:
        return None
    decode = [r.server_decode_s for r in p.level.requests if r.ok and r.server_decode_s]
    return statistics.median(decode) * 1000 if decode else None


def _median_server_ms(p: PointResult | None, attr: str) -> float | None:
    if p is None or p.level is None:
        return None
    values = [getattr(r, attr) for r in p.level.requests if r.ok and getattr(r, attr) is not None]
    return statistics.median(values) * 1000 if values else None


def pass_range(run: SideRun | None, workload: str, concurrency: int) -> tuple[float, float] | None:
    """(slowest, fastest) throughput over the point's error-free passes."""
    if run is None:
        return None
    rates = [
        q.level.overall.output_tokens_per_s
        for q in run.passes(workload, concurrency)
        if q.level is not None and q.error is None and not q.level.overall.failed
    ]
    return (min(rates), max(rates)) if rates else None


def _label(result: BenchResult, side: str) -> str:
    return result.config.label(side)


def _short(result: BenchResult, side: str) -> str:
    label = _label(result, side)
    return label.split(" ", 1)[0] if label.startswith("(") else label


def _f(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _why_vs_peers_throughput(result: BenchResult, missed: Sequence[TargetCheck]) -> list[str]:
    b_run = result.side(NANOVL)
    rows = []
    for c in missed:
        b = b_run.point(c.workload, c.concurrency) if b_run else None
        gb = point_stats(b)
        if gb is None:
            continue
        b_range = pass_range(b_run, c.workload, c.concurrency)
        fb, eb = frontend_ms_per_token(b), engine_ms_per_token(b)
        for peer in peer_runs(result):
            p = peer.point(c.workload, c.concurrency)
            gp = point_stats(p)
            if gp is None or gp.output_tokens_per_s <= gb.output_tokens_per_s:
                continue
            p_range = pass_range(peer, c.workload, c.concurrency)
            fp, ep = frontend_ms_per_token(p), engine_ms_per_token(p)
            reasons = []
            if b_range and p_range and b_range[1] >= p_range[0]:
                reasons.append(
                    f"within noise: nanovl's passes {b_range[0]:.0f}–{b_range[1]:.0f} tok/s overlap "
                    f"{_short(result, peer.side)}'s {p_range[0]:.0f}–{p_range[1]:.0f}"
                )
            if fb is not None and fp is not None and fb > fp:
                reasons.append(f"nanovl's frontend used {fb - fp:+.3f} ms CPU per token more")
            if eb is not None and ep is not None and eb > ep * 1.05:
                reasons.append(
                    f"the engine used {eb - ep:+.2f} ms CPU per token more under nanovl (its OpenMP threads "
                    "waited for a core the frontend or client held)"
                )
            rows.append(
                f"  | {c.workload} | {c.concurrency} | {_short(result, peer.side)} "
                f"| {gp.output_tokens_per_s / gb.output_tokens_per_s:.2f}× | {_f(fb, 3)} / {_f(fp, 3)} "
                f"| {_f(eb)} / {_f(ep)} | {'; '.join(reasons) or 'no measured cause: see the py-spy split'} |"
            )
    if not rows:
        return []
    return [
        "- **Throughput below a peer's.** Each peer that served more tokens per second than nanovl (b), with "
        "both sides' frontend and engine CPU per output token (b / peer) and what the figures say:",
        "",
        "  | workload | c | peer | peer ÷ (b) | frontend CPU ms/token | engine CPU ms/token | measured reason |",
        "  |---|---:|---|---:|---:|---:|---|",
        *rows,
        "",
    ]


def _why_vs_peers_ttft(result: BenchResult, missed: Sequence[TargetCheck]) -> list[str]:
    b_run = result.side(NANOVL)
    lines = []
    for c in missed:
        b = b_run.point(c.workload, c.concurrency) if b_run else None
        gb = point_stats(b)
        if gb is None or gb.ttft.p50 is None:
            continue
        ahead = [
            (peer, g.ttft.p50)
            for peer in peer_runs(result)
            if (g := point_stats(peer.point(c.workload, c.concurrency))) is not None
            and g.ttft.p50 is not None
            and g.ttft.p50 < gb.ttft.p50
        ]
        if not ahead:
            continue
        best, best_ttft = min(ahead, key=lambda x: x[1])
        gap, decode = median_gap_ms(b), median_decode_ms(b)
        server, queue = _median_server_ms(b, "server_ttft_s"), _median_server_ms(b, "server_queue_s")
        parts = [
            f"nanovl {gb.ttft.p50 * 1000:.1f} ms vs {_short(result, best.side)} {best_ttft * 1000:.1f} ms "
            f"({(gb.ttft.p50 - best_ttft) * 1000:+.1f} ms)"
        ]
        if server is not None:
            detail = [f"engine queue {queue:.1f} ms"] if queue is not None else []
            if decode is not None:
                detail.append(f"media decode {decode:.1f} ms")
            parts.append(
                f"nanovl's server-side TTFT p50 {server:.1f} ms" + (f" ({', '.join(detail)})" if detail else "")
            )
        if gap is not None:
            parts.append(f"client − server gap {gap:.1f} ms (the request's trip in, the first token's trip out)")
        r = pass_range(b_run, c.workload, c.concurrency)
        if r is not None and c.concurrency > 1:
            parts.append("at c > 1 TTFT includes waiting for the engine's batch, which follows its throughput")
        lines.append(f"- **TTFT at {c.workload} c={c.concurrency}**: " + "; ".join(parts) + ".")
    return lines


def _profile_at(result: BenchResult, workload: str, concurrency: int) -> ProfileSummary | None:
    ok = [p for p in result.profiles if not p.error and p.split]
    same = [p for p in ok if p.workload == workload]
    pool = same or ok
    return min(pool, key=lambda p: abs(p.concurrency - concurrency)) if pool else None


def _why_frontend_cpu(result: BenchResult, missed: Sequence[TargetCheck]) -> list[str]:
    b_run = result.side(NANOVL)
    rows = []
    for c in missed:
        mine = frontend_ms_per_token(b_run.point(c.workload, c.concurrency)) if b_run else None
        theirs = [
            (peer, v)
            for peer in peer_runs(result)
            if (v := frontend_ms_per_token(peer.point(c.workload, c.concurrency))) is not None
        ]
        if mine is None or not theirs:
            continue
        low, low_v = min(theirs, key=lambda x: x[1])
        prof = _profile_at(result, c.workload, c.concurrency)
        top = ""
        if prof is not None:
            owners = sorted(prof.split, key=lambda e: -e.percent)[:3]
            top = f"{prof.workload} c={prof.concurrency}: " + ", ".join(
                f"{e.name.split(' (')[0]} {e.percent:.0f}%" for e in owners
            )
        rows.append(
            f"  | {c.workload} | {c.concurrency} | {mine:.3f} | {_short(result, low.side)} {low_v:.3f} "
            f"| {mine - low_v:+.3f} | {top or '–'} |"
        )
    if not rows:
        return []
    return [
        "- **Frontend CPU per output token above a peer's.** nanovl's frontend CPU ms per output token, the lowest "
        "peer's, the difference, and the biggest owners of nanovl's frontend CPU in the nearest py-spy "
        "`--native` capture (section *Where nanovl's frontend time goes*):",
        "",
        "  | workload | c | (b) ms/token | lowest peer ms/token | (b) − lowest "
        "| largest shares of (b)'s frontend CPU |",
        "  |---|---:|---:|---|---:|---|",
        *rows,
        "",
    ]


def _why_vs_inprocess(result: BenchResult, missed: Sequence[TargetCheck]) -> list[str]:
    a_run = result.side("inprocess")
    if a_run is None:
        return []
    runs = [r for r in result.sides if not r.skipped and not r.error]
    rows = []
    for c in missed:
        a = a_run.point(c.workload, c.concurrency)
        ga = point_stats(a)
        if ga is None or cpu_ms_per_token(a) is None or not ga.output_tokens_per_s:
            continue
        cells = []
        for run in runs:
            p = run.point(c.workload, c.concurrency)
            g, cpu = point_stats(p), cpu_ms_per_token(p)
            if g is None or cpu is None:
                cells.append("–")
                continue
            cells.append(f"{g.output_tokens_per_s / ga.output_tokens_per_s:.2f}× · {cpu[0]:.2f} · {cpu[1]:.2f}")
        rows.append(f"  | {c.workload} | {c.concurrency} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "- **Throughput below 0.97× in-process.** At each missed point, every side's throughput ×(a), then its "
        "CPU ms per output token outside the engine (frontend + client process) and inside it (engine core + "
        "worker):",
        "",
        "  | workload | c | " + " | ".join(_label(result, r.side) for r in runs) + " |",
        "  |---|---:|" + "---|" * len(runs),
        *rows,
        "",
        "  Every side whose client is another process pays several times (a)'s CPU outside the engine: a gRPC or "
        "HTTP request and its streamed responses cost the server's event loop and a client process work that the "
        "in-process loop never does. On 2 cores that CPU is taken from the engine's two OpenMP threads, and it "
        "costs them more than its own size: where the *engine's* CPU per token is above (a)'s too, a decode step "
        "waited at an OpenMP barrier for the thread whose core was lent out, spinning on the other core meanwhile. "
        "So on this machine the 0.97× target measures the core count as much as the frontend (on a GPU host the "
        "frontend's CPU does not compete with the engine's kernels); what nanovl controls is its own CPU per "
        "token, compared with vLLM's frontends in the targets table.",
        "",
    ]


def _why_upload(result: BenchResult) -> list[str]:
    up = result.upload
    if up is None or up.error:
        return []
    s = upload_summary(up)
    if s.added is None or s.added <= UPLOAD_ADDED_TTFT:
        return []
    parts = [
        f"StreamGenerate's TTFT p50 {s.stream_client_ttft * 1000:.0f} ms against {s.unary_server_ttft * 1000:.0f} ms "  # type: ignore[operator]
        "from bytes on the server"
    ]
    if s.stream_upload is not None:
        parts.append(f"the upload itself (header → End, server clock) takes {s.stream_upload * 1000:.0f} ms p50")
    if s.stream_server_ttft is not None:
        parts.append(
            f"End → first token {s.stream_server_ttft * 1000:.0f} ms (the video is decoded only once its last "
            "chunk is in)"
        )
    if s.unary_client_ttft is not None:
        parts.append(f"the same bytes as one Generate message: client TTFT {s.unary_client_ttft * 1000:.0f} ms")
    if s.before_end is not None:
        parts.append(f"everything before End, as a share of the bytes-on-server TTFT: {s.before_end:+.0%}")
    return [f"- **Chunked upload** ({s.added:+.0%}): " + "; ".join(parts) + "."]


def _why_earlier(result: BenchResult, checks: Sequence[TargetCheck]) -> list[str]:
    b_run, a_run, h_run = result.side(NANOVL), result.side("inprocess"), result.side("vllm-http")
    lines = []
    for c in (c for c in checks if c.met is False and c.target == TTFT_C1):
        p = b_run.point(c.workload, c.concurrency) if b_run else None
        gap, decode = median_gap_ms(p), median_decode_ms(p)
        parts = []
        if decode is not None:
            parts.append(
                f"decoding the request's media takes {decode:.1f} ms (p50 over requests with media) of "
                "nanovl's server-side TTFT, and (a) decodes before its clock starts"
            )
        if gap is not None:
            parts.append(
                f"the client − server gap is {gap:.1f} ms: the request's trip in and protobuf parsing, the "
                "first `Delta`'s trip back, and the client's event loop"
            )
        lines.append(f"- **TTFT at c={c.concurrency}, {c.workload}** ({c.measured} vs (a)): " + "; ".join(parts) + ".")
    http = [c for c in checks if c.met is False and c.target == VS_HTTP]
    if http and h_run is not None and a_run is not None:
        ceilings = []
        for c in http:
            assert c.concurrency is not None
            ga, gh = (
                point_stats(a_run.point(c.workload, c.concurrency)),
                point_stats(h_run.point(c.workload, c.concurrency)),
            )
            if ga is not None and gh is not None and gh.output_tokens_per_s:
                ceilings.append(
                    f"{c.workload} c={c.concurrency}: {ga.output_tokens_per_s / gh.output_tokens_per_s:.2f}×"
                )
        lines.append(
            "- **≥ 1.3× vLLM HTTP** — the most any frontend can reach is (a); (a)'s throughput divided by vLLM "
            "HTTP's is the ceiling for this ratio: " + "; ".join(ceilings) + ". Where the ceiling is below 1.3, the "
            "target cannot be met on this machine by any frontend: both frontends run the same renderer and engine, "
            "and the engine's work (vision encoder, prefill, decode steps) dominates."
        )
    return lines


def why_missed(result: BenchResult, checks: Sequence[TargetCheck]) -> list[str]:
    """The "Why targets were missed" section (empty when nothing was missed)."""
    missed = [c for c in checks if c.met is False]

    def of(target: str) -> list[TargetCheck]:
        return [c for c in missed if c.target == target]

    lines: list[str] = []
    lines += _why_vs_peers_throughput(result, of(VS_PEERS_THROUGHPUT))
    lines += _why_vs_peers_ttft(result, of(VS_PEERS_TTFT))
    lines += _why_frontend_cpu(result, of(FRONTEND_CPU))
    lines += _why_vs_inprocess(result, of(VS_INPROCESS))
    if of(UPLOAD):
        lines += _why_upload(result)
    lines += _why_earlier(result, checks)
    if not lines:
        return []
    return ["### Why targets were missed", "", *lines, ""]
