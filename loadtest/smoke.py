"""A few-second load-test smoke for CI, without pytest.

::

    python -m loadtest.smoke --target 127.0.0.1:50051 --out smoke-results/

Sends a small mixed workload (text, image, video, audio; tiny media, 8 output tokens) at
concurrency 4, writes the reports and plots, and exits 0 only if every request succeeded
and every file was written and parses. It never judges a time.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtest.config import AudioSpec, ImageSpec, LoadTestConfig, VideoSpec
from loadtest.mix import Mix
from loadtest.plots import plot_run
from loadtest.report import write_reports
from loadtest.results import LoadTestResult
from loadtest.runner import run_load_test_async
from nanovl.errors import NanovlError

__all__ = ["SmokeOutcome", "check_outputs", "main", "run_smoke_async", "smoke_config"]


def smoke_config(
    target: str, *, requests: int = 12, concurrency: int = 4, chunked: bool = False, connect_timeout_s: float = 60.0
) -> LoadTestConfig:
    return LoadTestConfig(
        target=target,
        concurrency=(concurrency,),
        requests=requests,
        mix=Mix.parse("text=1,image=1,video=1,audio=1"),
        image=ImageSpec(224, 224),
        video=VideoSpec(frames=4, width=64, height=64, fps=4.0),
        audio=AudioSpec(seconds=1.0),
        prompt_words=8,
        max_tokens=8,
        chunked=chunked,
        timeout_s=120.0,
        connect_timeout_s=connect_timeout_s,
        name="smoke" + (" chunked" if chunked else ""),
    )


@dataclass(frozen=True)
class SmokeOutcome:
    result: LoadTestResult
    files: tuple[Path, ...]
    problems: tuple[str, ...]  # empty: passed

    @property
    def passed(self) -> bool:
        return not self.problems


def check_outputs(result: LoadTestResult, files: Sequence[Path]) -> tuple[str, ...]:
    """Everything that is wrong with a run's outcome: failed requests, missing or
    unparsable files."""
    problems = [
        f"{lv.level.label}: {e.count} x {e.code}: {e.first_message}" for lv in result.levels for e in lv.overall.errors
    ]
    for path in files:
        if not path.is_file() or path.stat().st_size == 0:
            problems.append(f"{path} is missing or empty")
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            with path.open() as f:
                if len(list(csv.reader(f))) < 2:
                    problems.append(f"{path} has no rows")
        elif path.suffix == ".png" and path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
            problems.append(f"{path} is not a PNG")
    return tuple(problems)


async def run_smoke_async(config: LoadTestConfig, out_dir: str | Path) -> SmokeOutcome:
    result = await run_load_test_async(config)
    reports = write_reports(result, out_dir)
    files = (reports.json, reports.summary_csv, reports.requests_csv, *plot_run(result, out_dir))
    return SmokeOutcome(result, files, check_outputs(result, files))


def main(argv: Sequence[str] | None = None) -> int:
    from nanovl import event_loop

    p = argparse.ArgumentParser(prog="python -m loadtest.smoke", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--target", required=True, metavar="HOST:PORT")
    p.add_argument("--out", default="loadtest-smoke", metavar="DIR")
    p.add_argument("--chunked", action="store_true", help="upload with StreamGenerate")
    p.add_argument("--connect-timeout", type=float, default=60.0, metavar="S", help="wait this long for the server")
    args = p.parse_args(argv)
    config = smoke_config(args.target, chunked=args.chunked, connect_timeout_s=args.connect_timeout)
    try:
        outcome = event_loop.run(run_smoke_async(config, args.out))
    except NanovlError as e:
        print(f"smoke: could not run: {e} ({e.code.name})", file=sys.stderr)
        return 2
    for problem in outcome.problems:
        print(f"smoke: {problem}", file=sys.stderr)
    ok = outcome.result.levels[0].overall.succeeded
    print(
        f"smoke: {'passed' if outcome.passed else 'FAILED'}: {ok} requests succeeded, "
        f"{len(outcome.files)} files in {args.out}"
    )
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
