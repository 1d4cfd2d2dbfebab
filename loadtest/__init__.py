"""nanovl's gRPC load tester (``nanovl loadtest``), usable as a library::

    from loadtest import LoadTestConfig, run_load_test, write_reports, plot_run

    result = run_load_test(LoadTestConfig(target="127.0.0.1:50051", concurrency=(1, 8), requests=32))
    write_reports(result, "out/"); plot_run(result, "out/")
    assert result.total_errors == 0

Metric definitions are in :mod:`loadtest.results`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names are imported on first use: `nanovl serve` registers the loadtest CLI and must not
# pay for matplotlib, pydantic and rich at startup.
_WHERE = {
    "loadtest.config": ("AudioSpec", "ImageSpec", "LoadLevel", "LoadTestConfig", "VideoSpec"),
    "loadtest.mix": ("Mix", "MixEntry"),
    "loadtest.plots": ("plot_compare", "plot_run"),
    "loadtest.report": ("ReportFiles", "RichProgress", "load_result", "write_reports"),
    "loadtest.results": (
        "ClientHealth",
        "ErrorCount",
        "GroupStats",
        "LatencySummary",
        "LevelResult",
        "LoadTestResult",
        "MediaPoolInfo",
        "RequestRecord",
        "ServerInfo",
    ),
    "loadtest.runner": ("ProgressListener", "run_load_test", "run_load_test_async"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

if TYPE_CHECKING:
    from loadtest.config import AudioSpec, ImageSpec, LoadLevel, LoadTestConfig, VideoSpec
    from loadtest.mix import Mix, MixEntry
    from loadtest.plots import plot_compare, plot_run
    from loadtest.report import ReportFiles, RichProgress, load_result, write_reports
    from loadtest.results import (
        ClientHealth,
        ErrorCount,
        GroupStats,
        LatencySummary,
        LevelResult,
        LoadTestResult,
        MediaPoolInfo,
        RequestRecord,
        ServerInfo,
    )
    from loadtest.runner import ProgressListener, run_load_test, run_load_test_async


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'loadtest' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "AudioSpec",
    "ClientHealth",
    "ErrorCount",
    "GroupStats",
    "ImageSpec",
    "LatencySummary",
    "LevelResult",
    "LoadLevel",
    "LoadTestConfig",
    "LoadTestResult",
    "MediaPoolInfo",
    "Mix",
    "MixEntry",
    "ProgressListener",
    "ReportFiles",
    "RequestRecord",
    "RichProgress",
    "ServerInfo",
    "VideoSpec",
    "load_result",
    "plot_compare",
    "plot_run",
    "run_load_test",
    "run_load_test_async",
    "write_reports",
]
