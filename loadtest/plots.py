"""PNG plots of load-test results (matplotlib's Agg renderer; no display, no pyplot state).

- ``latency_cdf_<level>.png``: TTFT and end-to-end latency CDFs per modality, per level.
- ``concurrency_sweep.png`` / ``rate_sweep.png``: throughput and TTFT against the load.
- ``compare_sweep_*.png`` / ``compare_cdf_<level>.png``: several runs overlaid.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from loadtest.config import LoadLevel
from loadtest.results import GroupStats, LevelResult, LoadTestResult, RequestRecord

__all__ = ["compare_sweep_figure", "plot_compare", "plot_run"]

_DPI = 110


def _slug(level: LoadLevel) -> str:
    return re.sub(r"[^a-z0-9.]+", "", level.label.lower().replace("/s", ""))


def _cdf(ax: Axes, values: Sequence[float], label: str, **style: object) -> None:
    if not values:
        return
    x = np.sort(np.asarray(values, dtype=np.float64))
    y = np.arange(1, x.size + 1) / x.size
    ax.step(x, y, where="post", label=f"{label} (n={x.size})", **style)  # type: ignore[arg-type]


def _cdf_axes(ax: Axes, title: str, xlabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.02)
    ax.set_xscale("log")  # modalities differ by orders of magnitude
    _plain_log_labels(ax)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left")  # CDFs rise to the right: that corner stays empty


def _plain_log_labels(ax: Axes) -> None:
    """Label a log x axis 5, 10, 20, 50 (not 5x10^0): also at 2 and 5 within each decade
    when the data span less than two decades, where major ticks alone are too few."""
    lo, hi = ax.get_xlim()
    narrow = lo > 0 and hi / lo < 100

    def minor(v: float, _: object) -> str:
        mantissa = round(v / 10 ** math.floor(math.log10(v)), 6) if v > 0 else 0
        return f"{v:g}" if narrow and mantissa in (2, 5) else ""

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(minor))


def _ok(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    return [r for r in records if r.ok]


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    return path


def plot_level_cdfs(result: LoadTestResult, level: LevelResult, path: Path) -> Path:
    fig = Figure(figsize=(11, 4.2))
    ttft_ax, e2e_ax = fig.subplots(1, 2)
    ok = _ok(level.requests)
    for kind in [g.kind for g in level.by_kind]:
        rs = [r for r in ok if r.kind == kind]
        _cdf(ttft_ax, [r.ttft_s * 1e3 for r in rs if r.ttft_s is not None], kind)
        _cdf(e2e_ax, [r.latency_s for r in rs], kind)
    if len(level.by_kind) > 1:
        _cdf(ttft_ax, [r.ttft_s * 1e3 for r in ok if r.ttft_s is not None], "all", color="black", linestyle="--")
        _cdf(e2e_ax, [r.latency_s for r in ok], "all", color="black", linestyle="--")
    _cdf_axes(ttft_ax, "time to first token", "TTFT (ms, log scale)")
    _cdf_axes(e2e_ax, "end-to-end latency", "latency (s, log scale)")
    fig.suptitle(f"{result.name}: latency CDFs by modality at {level.level.label}", fontsize=10)
    return _save(fig, path)


def _sweep_axes(ax: Axes, mode: str, title: str, ylabel: str, xs: Sequence[float]) -> None:
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if mode == "concurrency":
        ax.set_xlabel("concurrency (requests in flight, log scale)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(xs)), [f"{x:g}" for x in sorted(set(xs))])
    else:
        ax.set_xlabel("offered load (requests/s)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


Metric = Callable[[GroupStats], float | None]


def _series(levels: Sequence[LevelResult], get: Metric, kind: str = "all") -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for lv in levels:
        g = lv.overall if kind == "all" else next((k for k in lv.by_kind if k.kind == kind), None)
        v = None if g is None else get(g)
        if v is not None:
            xs.append(lv.level.value)
            ys.append(v)
    return xs, ys


def _ms(get: Callable[[GroupStats], float | None]) -> Metric:
    return lambda g: None if (v := get(g)) is None else v * 1e3


def plot_sweep(result: LoadTestResult, mode: str, path: Path) -> Path | None:
    levels = sorted((lv for lv in result.levels if lv.level.mode == mode), key=lambda lv: lv.level.value)
    if not levels:
        return None
    xs = [lv.level.value for lv in levels]
    fig = Figure(figsize=(14, 4.2))
    tok_ax, req_ax, ttft_ax = fig.subplots(1, 3)
    _plot(tok_ax, _series(levels, lambda g: g.output_tokens_per_s), marker="o", label="all kinds")
    _plot(req_ax, _series(levels, lambda g: g.requests_per_s), marker="o", label="completed")
    if mode == "rate":
        req_ax.plot(xs, xs, color="gray", linestyle=":", label="offered")
    _plot(ttft_ax, _series(levels, _ms(lambda g: g.ttft.p50)), marker="o", color="black", label="all p50")
    _plot(
        ttft_ax, _series(levels, _ms(lambda g: g.ttft.p99)), marker="o", color="black", linestyle="--", label="all p99"
    )
    kinds = result.config.mix.kinds
    if len(kinds) > 1:
        for kind in kinds:
            _plot(ttft_ax, _series(levels, _ms(lambda g: g.ttft.p50), kind), marker=".", alpha=0.7, label=f"{kind} p50")
    _sweep_axes(tok_ax, mode, "output throughput", "output tokens/s", xs)
    _sweep_axes(req_ax, mode, "request throughput", "requests/s", xs)
    _sweep_axes(ttft_ax, mode, "time to first token", "TTFT (ms)", xs)
    fig.suptitle(
        f"{result.name}: throughput and TTFT vs {'concurrency' if mode == 'concurrency' else 'request rate'}",
        fontsize=10,
    )
    return _save(fig, path)


def plot_run(result: LoadTestResult, out_dir: str | Path) -> list[Path]:
    """Every plot of one run; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [plot_level_cdfs(result, lv, out / f"latency_cdf_{_slug(lv.level)}.png") for lv in result.levels]
    for mode, name in (("concurrency", "concurrency_sweep.png"), ("rate", "rate_sweep.png")):
        if (p := plot_sweep(result, mode, out / name)) is not None:
            files.append(p)
    return files


def _plot(ax: Axes, series: tuple[list[float], list[float]], **style: object) -> None:
    """One line, drawn (and so in the legend) only when it has points."""
    xs, ys = series
    if xs:
        ax.plot(xs, ys, **style)  # type: ignore[arg-type]


def compare_sweep_figure(results: Sequence[LoadTestResult], mode: str) -> Figure | None:
    """Runs overlaid against the load of ``mode`` ("concurrency" or "rate"): output
    throughput, request throughput and TTFT (p50 solid, p99 dashed), one color per run;
    a run without levels of this mode has no line and no legend entry. None when no run
    has such levels."""
    colors = [f"C{i}" for i in range(10)]
    runs = [
        (r, sorted((lv for lv in r.levels if lv.level.mode == mode), key=lambda lv: lv.level.value)) for r in results
    ]
    if not any(levels for _, levels in runs):
        return None
    xs = [lv.level.value for _, levels in runs for lv in levels]
    fig = Figure(figsize=(14, 4.2))
    tok_ax, req_ax, ttft_ax = fig.subplots(1, 3)
    for i, (r, levels) in enumerate(runs):
        c = colors[i % len(colors)]
        _plot(tok_ax, _series(levels, lambda g: g.output_tokens_per_s), marker="o", color=c, label=r.name)
        _plot(req_ax, _series(levels, lambda g: g.requests_per_s), marker="o", color=c, label=r.name)
        _plot(ttft_ax, _series(levels, _ms(lambda g: g.ttft.p50)), marker="o", color=c, label=f"{r.name} p50")
        _plot(
            ttft_ax,
            _series(levels, _ms(lambda g: g.ttft.p99)),
            marker="o",
            color=c,
            linestyle="--",
            label=f"{r.name} p99",
        )
    if mode == "rate":
        offered = sorted(set(xs))
        req_ax.plot(offered, offered, color="gray", linestyle=":", label="offered")
    _sweep_axes(tok_ax, mode, "output throughput", "output tokens/s", xs)
    _sweep_axes(req_ax, mode, "request throughput", "requests/s", xs)
    _sweep_axes(ttft_ax, mode, "time to first token", "TTFT (ms)", xs)
    fig.suptitle(
        f"compared: throughput and TTFT vs {'concurrency' if mode == 'concurrency' else 'request rate'}",
        fontsize=10,
    )
    return fig


def plot_compare(results: Sequence[LoadTestResult], out_dir: str | Path) -> list[Path]:
    """Runs overlaid: sweeps per load mode, and overall latency CDFs at each level of the
    first run that another run also measured."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    colors = [f"C{i}" for i in range(10)]
    for mode in ("concurrency", "rate"):
        if (fig := compare_sweep_figure(results, mode)) is not None:
            files.append(_save(fig, out / f"compare_sweep_{mode}.png"))
    for base_level in results[0].levels:
        matches = [(r, next((lv for lv in r.levels if lv.level == base_level.level), None)) for r in results]
        present = [(r, lv) for r, lv in matches if lv is not None]
        if len(present) < 2:
            continue
        fig = Figure(figsize=(11, 4.2))
        ttft_ax, e2e_ax = fig.subplots(1, 2)
        for i, (r, lv) in enumerate(present):
            ok = _ok(lv.requests)
            c = colors[i % len(colors)]
            _cdf(ttft_ax, [x.ttft_s * 1e3 for x in ok if x.ttft_s is not None], r.name, color=c)
            _cdf(e2e_ax, [x.latency_s for x in ok], r.name, color=c)
        _cdf_axes(ttft_ax, "time to first token", "TTFT (ms, log scale)")
        _cdf_axes(e2e_ax, "end-to-end latency", "latency (s, log scale)")
        fig.suptitle(f"compared: latency CDFs (all kinds) at {base_level.level.label}", fontsize=10)
        files.append(_save(fig, out / f"compare_cdf_{_slug(base_level.level)}.png"))
    return files
