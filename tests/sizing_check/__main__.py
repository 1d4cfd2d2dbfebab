"""``python -m tests.sizing_check`` (``make sizing-check``): nanovl's token accounting
against vLLM's own multimodal processor on seeded random prompts, vLLM's processor cache
off and on. Prints a table (variant x modality x cache: cases, refused, mismatches) and
the first mismatches in full; exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import sys
import time

from tests.sizing_check.checker import MAX_MODEL_LENS, Report, check_variant, split_cases, variants


def _run_one(variant: str, cases: dict, seed: int, baseline: bool, lens: list[int], threads: int) -> Report:
    """One variant in a worker process (``--jobs``)."""
    import torch

    torch.set_num_threads(threads)
    report = Report()
    t0 = last = time.perf_counter()

    def progress(variant: str, cache: bool, done: int, total: int) -> None:
        nonlocal last
        if time.perf_counter() - last > 60:
            last = time.perf_counter()
            print(f"  {variant} cache {'on' if cache else 'off'}: {done}/{total} ({last - t0:.0f} s)", file=sys.stderr)

    check_variant(
        variant,
        cases_per_kind=cases,
        seed=seed,
        report=report,
        baseline=baseline,
        max_model_lens=lens,
        progress=progress,
    )
    print(f"  {variant}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sizing_check", description=__doc__)
    p.add_argument(
        "-n",
        "--cases",
        type=int,
        default=2000,
        help="prompts per modality (and of mixed prompts), spread over the variants; each runs with the cache "
        "off and on",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", help="comma-separated (default: every tiny variant)")
    p.add_argument("--max-model-lens", default=",".join(map(str, MAX_MODEL_LENS)))
    p.add_argument("--baseline", action="store_true", help="predict as nanovl did before (see checker.py)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for vLLM's processor")
    p.add_argument("--jobs", type=int, default=1, help="variants checked in parallel processes")
    p.add_argument("--show", type=int, default=10, help="mismatches to print in full")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    chosen = args.variants.split(",") if args.variants else list(variants())
    lens = [int(x) for x in args.max_model_lens.split(",")]
    report = Report()
    t0 = time.perf_counter()
    last = [0.0]

    def progress(variant: str, cache: bool, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 15 or done == total:
            last[0] = now
            print(
                f"  {variant} cache {'on' if cache else 'off'}: {done}/{total} ({now - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )

    plan = split_cases(args.cases, chosen)
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(_run_one, v, plan[v], args.seed, args.baseline, lens, args.threads) for v in chosen]
            for future in futures:
                report.merge(future.result())
    else:
        for variant in chosen:
            check_variant(
                variant,
                cases_per_kind=plan[variant],
                seed=args.seed,
                report=report,
                baseline=args.baseline,
                max_model_lens=lens,
                progress=progress,
            )
    print(report.table())
    print(f"{time.perf_counter() - t0:.0f} s; max_model_len in {lens}; seed {args.seed}")
    for m in report.mismatches[: args.show]:
        print(m.describe())
    return 1 if report.total_mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
