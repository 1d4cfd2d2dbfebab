"""``nanovl serve`` as an operator runs it: mistakes end in one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_serve_with_a_bad_checkpoint_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    proc = subprocess.run(
        [sys.executable, "-m", "nanovl.cli", "serve", "--model", str(tmp_path), "--metrics-port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("nanovl serve: error: ") and str(tmp_path) in last, last
