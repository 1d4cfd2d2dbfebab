"""Results on disk (JSON, CSV) and on the terminal (rich live progress, final tables)."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from loadtest.config import LoadLevel
from loadtest.results import SCHEMA_VERSION, GroupStats, LatencySummary, LevelResult, LoadTestResult, RequestRecord
from nanovl.errors import InvalidArgument, NanovlError

__all__ = [
    "ReportFiles",
    "RichProgress",
    "compare_table",
    "level_line",
    "load_result",
    "result_tables",
    "write_compare_csv",
    "write_reports",
]

_ADAPTER = TypeAdapter(LoadTestResult)
# Per-token ITL samples stay out of the JSON (up to max_tokens floats per request); their
# summaries are in each GroupStats.
_EXCLUDE = {"levels": {"__all__": {"requests": {"__all__": {"itl_s"}}}}}


@dataclass(frozen=True)
class ReportFiles:
    json: Path
    summary_csv: Path
    requests_csv: Path


# ------------------------------------------------------------------------------ files


def write_json(result: LoadTestResult, path: Path) -> Path:
    path.write_bytes(_ADAPTER.dump_json(result, indent=1, exclude=_EXCLUDE))  # type: ignore[arg-type]
    return path


def load_result(path: str | Path) -> LoadTestResult:
    """Read a results JSON written by :func:`write_reports`."""
    path = Path(path)
    try:
        raw = json.loads(path.read_bytes())
    except OSError as e:
        raise InvalidArgument(f"cannot read {path}: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"{path} is not JSON ({e}); pass the results.json of a `nanovl loadtest` run") from e
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise InvalidArgument(
            f"{path}: results schema version {version!r}, this nanovl reads version {SCHEMA_VERSION}; "
            "re-run the load test with this version"
        )
    try:
        return _ADAPTER.validate_python(raw)
    except (ValidationError, NanovlError) as e:
        raise InvalidArgument(f"{path} is not a valid load-test result: {e}") from e


def _latency_columns(prefix: str) -> list[str]:
    return [f"{prefix}_{s}_s" for s in ("mean", "p50", "p90", "p99")]


SUMMARY_COLUMNS = [
    "run",
    "level",
    "mode",
    "load",
    "kind",
    "target",
    "requests",
    "succeeded",
    "failed",
    "window_s",
    "requests_per_s",
    "output_tokens_per_s",
    "prompt_tokens_per_s",
    *_latency_columns("ttft"),
    *_latency_columns("itl"),
    *_latency_columns("tpot"),
    *_latency_columns("e2e"),
    "tokens_per_delta",
    "client_cpu_util",
    "errors",
]

REQUEST_COLUMNS = [
    "level",
    "index",
    "kind",
    "target",
    "start_s",
    "scheduled_s",
    "latency_s",
    "ttft_s",
    "tpot_s",
    "output_tokens",
    "prompt_tokens",
    "deltas",
    "server_ttft_s",
    "server_queue_s",
    "server_decode_s",
    "error_code",
    "error_message",
]


def _summary_values(s: LatencySummary) -> list[float | None]:
    return [s.mean, s.p50, s.p90, s.p99]


def _summary_row(run: str, level: LevelResult, g: GroupStats, target: str = "") -> list[object]:
    return [
        run,
        level.level.label,
        level.level.mode,
        level.level.value,
        g.kind,
        target,
        g.requests,
        g.succeeded,
        g.failed,
        level.window_s,
        g.requests_per_s,
        g.output_tokens_per_s,
        g.prompt_tokens_per_s,
        *_summary_values(g.ttft),
        *_summary_values(g.itl),
        *_summary_values(g.tpot),
        *_summary_values(g.e2e),
        g.tokens_per_delta,
        level.client.cpu_util,
        ";".join(f"{e.code}:{e.count}" for e in g.errors),
    ]


def _request_row(level: LevelResult, r: RequestRecord) -> list[object]:
    return [
        level.level.label,
        r.index,
        r.kind,
        r.target,
        r.start_s,
        r.scheduled_s,
        r.latency_s,
        r.ttft_s,
        r.tpot_s,
        r.output_tokens,
        r.prompt_tokens,
        r.deltas,
        r.server_ttft_s,
        r.server_queue_s,
        r.server_decode_s,
        r.error_code,
        r.error_message,
    ]


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(["" if v is None else v for v in row] for row in rows)
    return path


def write_reports(result: LoadTestResult, out_dir: str | Path) -> ReportFiles:
    """``results.json`` (everything but per-token ITL samples), ``summary.csv`` (one row per
    level and kind, "all" included, and with several targets one "all" row per target; the
    ``target`` column is empty on rows over every target) and ``requests.csv`` (one row per
    request). Times in s."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = [_summary_row(result.name, lv, g) for lv in result.levels for g in (lv.overall, *lv.by_kind)]
    summary += [_summary_row(result.name, lv, t.stats, t.target) for lv in result.levels for t in lv.by_target]
    requests = [_request_row(lv, r) for lv in result.levels for r in lv.requests]
    return ReportFiles(
        json=write_json(result, out / "results.json"),
        summary_csv=_write_csv(out / "summary.csv", SUMMARY_COLUMNS, summary),
        requests_csv=_write_csv(out / "requests.csv", REQUEST_COLUMNS, requests),
    )


# ------------------------------------------------------------------------------ terminal


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:,.1f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:,.3f}"


def level_line(result: LevelResult) -> str:
    """A one-line summary of a finished level."""
    g = result.overall
    return (
        f"{result.level.label}: {g.succeeded}/{g.requests} ok, {g.failed} errors, "
        f"{g.requests_per_s:.2f} req/s, {g.output_tokens_per_s:.1f} tok/s, "
        f"TTFT p50 {_ms(g.ttft.p50)} ms p99 {_ms(g.ttft.p99)} ms, E2E p50 {_s(g.e2e.p50)} s, "
        f"client CPU {result.client.cpu_util:.0%}"
    )


# A statistics column of the final tables: its header and its cell for one group's stats.
_STAT_CELLS: dict[str, Callable[[GroupStats], str]] = {
    "ok": lambda g: str(g.succeeded),
    "err": lambda g: str(g.failed),
    "req/s": lambda g: f"{g.requests_per_s:.2f}",
    "out tok/s": lambda g: f"{g.output_tokens_per_s:.1f}",
    "TTFT p50 ms": lambda g: _ms(g.ttft.p50),
    "TTFT p99 ms": lambda g: _ms(g.ttft.p99),
    "ITL p50 ms": lambda g: _ms(g.itl.p50),
    "ITL p99 ms": lambda g: _ms(g.itl.p99),
    "TPOT p50 ms": lambda g: _ms(g.tpot.p50),
    "E2E p50 s": lambda g: _s(g.e2e.p50),
    "E2E p99 s": lambda g: _s(g.e2e.p99),
}


def _stats_table(title: str, keys: Sequence[str], stats: Sequence[str], extra: Sequence[str] = ()) -> Table:
    """A table whose rows are ``keys`` (left), then the ``stats`` columns, then ``extra``."""
    table = Table(title=title, title_justify="left")
    for col in keys:
        table.add_column(col, justify="left", no_wrap=True)
    for col in (*stats, *extra):
        table.add_column(col, justify="right")
    return table


def _stat_cells(g: GroupStats, stats: Sequence[str]) -> list[str]:
    return [_STAT_CELLS[col](g) for col in stats]


def result_tables(result: LoadTestResult) -> list[Table]:
    """The final tables: per level, per level and kind, per level and target (several
    targets), errors (if any)."""
    stats = list(_STAT_CELLS)
    overall = _stats_table(f"{result.name}: per level (all kinds)", ["level"], stats, ["client CPU"])
    for lv in result.levels:
        overall.add_row(lv.level.label, *_stat_cells(lv.overall, stats), f"{lv.client.cpu_util:.0%}")
    kind_stats = ["ok", "err", "out tok/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms", "E2E p50 s", "E2E p99 s"]
    by_kind = _stats_table("per level and kind", ["level", "kind"], kind_stats)
    for lv in result.levels:
        for g in lv.by_kind:
            by_kind.add_row(lv.level.label, g.kind, *_stat_cells(g, kind_stats))
    tables = [overall, by_kind]
    if any(lv.by_target for lv in result.levels):
        target_stats = ["ok", "err", "req/s", "out tok/s", "TTFT p50 ms", "TTFT p99 ms", "E2E p50 s"]
        by_target = _stats_table("per level and target", ["level", "target"], target_stats)
        for lv in result.levels:
            for t in lv.by_target:
                by_target.add_row(lv.level.label, t.target, *_stat_cells(t.stats, target_stats))
        tables.append(by_target)
    if result.total_errors:
        errors = Table(title="errors (first message per code)", title_justify="left")
        for col in ("level", "code", "count", "first message"):
            errors.add_column(col)
        for lv in result.levels:
            for e in lv.overall.errors:
                errors.add_row(lv.level.label, e.code, str(e.count), e.first_message)
        tables.append(errors)
    return tables


def compare_table(results: Sequence[LoadTestResult]) -> Table:
    """Runs side by side at each level of the first (the baseline); ratios are run / baseline."""
    base = results[0]
    table = Table(title=f"compared with {base.name}", title_justify="left")
    table.add_column("level")
    table.add_column("metric")
    for r in results:
        table.add_column(r.name, justify="right")
    metrics = (
        ("out tok/s", lambda g: g.output_tokens_per_s, 1.0),
        ("req/s", lambda g: g.requests_per_s, 1.0),
        ("TTFT p50 ms", lambda g: g.ttft.p50, 1e3),
        ("TTFT p99 ms", lambda g: g.ttft.p99, 1e3),
        ("ITL p50 ms", lambda g: g.itl.p50, 1e3),
        ("E2E p50 s", lambda g: g.e2e.p50, 1.0),
        ("E2E p99 s", lambda g: g.e2e.p99, 1.0),
        ("errors", lambda g: float(g.failed), 1.0),
    )
    for lv in base.levels:
        others = [_find_level(r, lv.level) for r in results]
        for name, get, scale in metrics:
            b = get(lv.overall)
            cells = []
            for other in others:
                v = None if other is None else get(other.overall)
                if v is None:
                    cells.append("-")
                elif name == "errors":
                    cells.append(f"{v:.0f}")
                elif other is lv or not b:
                    cells.append(f"{v * scale:,.2f}")
                else:
                    cells.append(f"{v * scale:,.2f} ({v / b:.2f}x)")
            table.add_row(lv.level.label, name, *cells)
        table.add_section()
    return table


def _find_level(result: LoadTestResult, level: LoadLevel) -> LevelResult | None:
    return next((lv for lv in result.levels if lv.level == level), None)


def write_compare_csv(results: Sequence[LoadTestResult], path: str | Path) -> Path:
    """The summary rows ("all" kinds) of every run, one file, for spreadsheets."""
    rows = [_summary_row(r.name, lv, lv.overall) for r in results for lv in r.levels]
    return _write_csv(Path(path), SUMMARY_COLUMNS, rows)


class RichProgress:
    """Live progress on the terminal: a bar per level with successes, errors and tok/s,
    and a summary line when each level ends. Use as a context manager."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
            refresh_per_second=4,  # rendering runs in rich's thread: keep it rare
        )
        self._task: TaskID | None = None
        self._ok = self._errors = self._tokens = 0
        self._t0 = 0.0

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def _new_task(self, description: str, total: int | None) -> None:
        if self._task is not None:
            self._progress.update(self._task, visible=False)
        self._task = self._progress.add_task(description, total=total, status="")

    def phase(self, text: str, total: int | None = None) -> None:
        self._new_task(text, total)

    def phase_advance(self) -> None:
        if self._task is not None:
            self._progress.advance(self._task)

    def level_started(self, level: LoadLevel, requests: int | None, duration_s: float | None) -> None:
        what = f"{level.label}" + (f" for {duration_s:g} s" if duration_s is not None else "")
        self._new_task(what, requests)
        self._ok = self._errors = self._tokens = 0
        self._t0 = time.perf_counter()

    def request_finished(self, record: RequestRecord) -> None:
        if record.ok:
            self._ok += 1
            self._tokens += record.output_tokens
        else:
            self._errors += 1
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        status = f"ok {self._ok}  err {self._errors}  {self._tokens / elapsed:,.0f} tok/s"
        if self._task is not None:
            self._progress.update(self._task, advance=1, status=status)

    def level_finished(self, result: LevelResult) -> None:
        if self._task is not None:
            self._progress.update(self._task, visible=False)
            self._task = None
        self._progress.console.print(level_line(result))
