"""``python -m tests.fuzz``: the hostile-input fuzzer (``make fuzz``).

With no ``--target`` it starts ``nanovl serve`` on the tiny checkpoint (a free port,
metrics off), waits until it is ready, runs the cases, and stops it. Exit status 1 when
any request got INTERNAL/UNKNOWN/UNAVAILABLE, hung until its deadline, was accepted although
the API rejects it, or the server is unhealthy or its greedy reference changed (kinds in
KNOWN_OPEN_KINDS are reported but do not fail the run unless --strict).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from tests.fuzz import corpus
from tests.fuzz.runner import KNOWN_OPEN_KINDS, check_health, run
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]


# What the server the fuzzer starts runs with, besides the defaults: per-request chat
# templates allowed (so the sandbox is fuzzed, not only refused), the plaintext health
# port, and a short upload-rate grace so that stalled and trickling uploads end in 2 s.
FUZZ_SERVE_FLAGS = ["--allow-request-chat-template", "--upload-rate-grace-s", "2"]


def start_server(extra: list[str]) -> tuple[subprocess.Popen, str, Path, str]:
    # Outside the kernel's ephemeral range: the server binds them only after its engine
    # started (minutes), and an outgoing connection's local end took one (verify-10d F5).
    port, health_port = free_port(), free_port()
    log = Path(os.environ.get("NANOVL_FUZZ_LOG", f"/tmp/nanovl-fuzz-server-{port}.log"))
    serve = "import sys; from nanovl.cli import main; sys.exit(main())"
    cmd = [sys.executable, "-c", serve, "serve", "--port", str(port), "--metrics-port", "0"]
    cmd += ["--health-port", str(health_port), *FUZZ_SERVE_FLAGS, *extra]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"127.0.0.1:{port}", log, f"127.0.0.1:{health_port}"


async def wait_ready(target: str, proc: subprocess.Popen, log: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-5:]) if log.exists() else ""
            raise SystemExit(f"nanovl serve exited with {proc.returncode} before it was ready; its log ends:\n{tail}")
        async with grpc.aio.insecure_channel(target) as channel:
            if (await check_health(channel))[0]:
                return
        await asyncio.sleep(2)
    raise SystemExit("nanovl serve was not ready in time")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    p.add_argument("--target", help="fuzz a running server instead of starting one")
    p.add_argument("--health-target", help="with --target: its plaintext health port (--health-port)")
    p.add_argument("-n", "--requests", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--timeout", type=float, default=30.0, help="deadline per request, seconds")
    p.add_argument("--stall-timeout", type=float, default=60.0, help="deadline of a stalled upload (stream.stall)")
    p.add_argument("--kinds", help="comma-separated kinds (default: all); see --list")
    p.add_argument("--replay", action="append", default=[], help="KIND:SEED of one case (repeatable)")
    p.add_argument("--list", action="store_true", help="list the kinds and exit")
    p.add_argument("--json", type=Path, help="write the report as JSON here")
    p.add_argument("--strict", action="store_true", help="fail on KNOWN_OPEN_KINDS too")
    p.add_argument("serve_args", nargs="*", help="after --: flags for nanovl serve")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(f"{k}{' (known open)' if k in KNOWN_OPEN_KINDS else ''}" for k in corpus.KINDS))
        return 0
    if args.replay:
        cases = [corpus.build(k, int(s)) for k, s in (r.rsplit(":", 1) for r in args.replay)]
    else:
        kinds = args.kinds.split(",") if args.kinds else None
        cases = corpus.cases(args.seed, args.requests, kinds)
    corpus.media_corpus()

    proc = None
    target, health_target = args.target, args.health_target
    if target is None:
        proc, target, log, health_target = start_server(args.serve_args)
        print(f"started nanovl serve (pid {proc.pid}) on {target}; log {log}", flush=True)
    try:
        if proc is not None:
            asyncio.run(wait_ready(target, proc, log))
        report = asyncio.run(
            run(
                target,
                cases,
                seed=args.seed,
                concurrency=args.concurrency,
                timeout_s=args.timeout,
                stall_timeout_s=args.stall_timeout,
                progress=True,
                health_target=health_target,
            )
        )
    finally:
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it may exit meanwhile
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
    ignore = () if args.strict else KNOWN_OPEN_KINDS
    print(report.text(ignore))
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2))
    return 0 if report.ok(ignore) else 1


if __name__ == "__main__":
    sys.exit(main())
