"""Shared by the sizing benchmarks: a measurement in a fresh child process, and the
generated table between two markers of ``docs/sizing.md``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SIZING_DOC = REPO / "docs" / "sizing.md"
RESULT_PREFIX = "RESULT "


def emit(result: Any) -> None:
    """What a child prints for :func:`run_child` (one JSON line)."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_child(module: str, args: Sequence[str], *, timeout_s: float, env: Mapping[str, str] | None = None) -> Any:
    """``python -m module args...`` in a fresh process (clean memory peaks, no engine
    left behind); its :func:`emit`ted result, or None after printing its stderr's tail."""
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith(RESULT_PREFIX)), None)
    if line is None:
        print(out.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(line[len(RESULT_PREFIX) :])


def write_section(name: str, table: str, results: Path, rows: Any) -> None:
    """``rows`` as JSON to ``results``; ``table`` between ``<!-- name:start -->`` and
    ``<!-- name:end -->`` in docs/sizing.md (left alone when the markers are missing)."""
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(rows, indent=1) + "\n")
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = SIZING_DOC.read_text() if SIZING_DOC.exists() else ""
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        SIZING_DOC.write_text(before + start + "\n" + table + end + after)
