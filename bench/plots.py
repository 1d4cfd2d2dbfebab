"""Plots of a run (matplotlib, Agg): throughput and TTFT p50 vs concurrency, one panel per
workload, one line per side."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.results import BenchResult  # noqa: E402
from loadtest.results import GroupStats  # noqa: E402

__all__ = ["plot_bench"]

_STYLE = {
    "inprocess": {"color": "black", "linestyle": "--", "marker": "o"},
    "nanovl": {"color": "tab:green", "marker": "s"},
    "vllm-http": {"color": "tab:blue", "marker": "^"},
    "vllm-grpc": {"color": "tab:orange", "marker": "D"},
    "vllm-rust": {"color": "tab:red", "marker": "v"},
}
# nanovl variants: green shades, dotted.
_VARIANT_COLORS = ("tab:olive", "darkgreen", "limegreen", "seagreen")


def _style(result: BenchResult, side: str, index: int) -> dict[str, object]:
    if side in _STYLE:
        return _STYLE[side]
    return {"color": _VARIANT_COLORS[index % len(_VARIANT_COLORS)], "linestyle": ":", "marker": "P"}


def _figure(
    result: BenchResult, get: Callable[[GroupStats], float | None], ylabel: str, title: str, path: Path
) -> Path:
    workloads = result.config.workloads
    levels = list(result.config.concurrencies)
    fig, axes = plt.subplots(1, len(workloads), figsize=(4.6 * len(workloads), 4.4), squeeze=False)
    for ax, w in zip(axes[0], workloads, strict=True):
        for index, run in enumerate(result.sides):
            side = run.side
            if run.skipped:
                continue
            xs, ys = [], []
            for c in levels:
                point = run.point(w, c)
                value = (
                    get(point.stats)
                    if point is not None and point.stats is not None and point.stats.succeeded
                    else None
                )
                if value is not None:
                    xs.append(c)
                    ys.append(value)
            if xs:
                ax.plot(xs, ys, label=result.config.label(side), **_style(result, side, index))  # type: ignore[arg-type]
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.minorticks_off()
        ax.set_xlabel("concurrency")
        ax.set_ylabel(ylabel)
        ax.set_title(w)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=max(1, min(len(labels), 3)), frameon=False, fontsize="small")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bench(result: BenchResult, out_dir: Path) -> list[Path]:
    def ttft_ms(g: GroupStats) -> float | None:
        return g.ttft.p50 * 1000 if g.ttft.p50 is not None else None

    return [
        _figure(
            result,
            lambda g: g.output_tokens_per_s,
            "output tokens/s",
            "Throughput vs concurrency",
            out_dir / "throughput.png",
        ),
        _figure(result, ttft_ms, "TTFT p50 (ms)", "Time to first token (p50) vs concurrency", out_dir / "ttft_p50.png"),
    ]
