"""``nanovl model``: checkpoint tools (build a tiny checkpoint, validate a checkpoint)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from model.variants import VARIANTS

    p = subparsers.add_parser("model", help="checkpoint tools")
    sub = p.add_subparsers(dest="model_command", required=True)
    b = sub.add_parser("build-tiny", help="build a tiny, randomly initialised NemotronH_Nano_VL_V2 checkpoint")
    b.add_argument("out_dir", type=Path)
    b.add_argument("--variant", default="full", choices=VARIANTS)
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=_build_tiny_main)
    v = sub.add_parser("validate", help="check a checkpoint directory has every field vLLM needs")
    v.add_argument("path", type=Path)
    v.set_defaults(func=_validate_main)


def _build_tiny_main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from model.tiny import build_tiny_checkpoint

    with Console(stderr=True).status(f"building tiny {args.variant} checkpoint"):
        out = build_tiny_checkpoint(args.out_dir, args.variant, seed=args.seed)
    print(out)
    return 0


def _validate_main(args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError, validate_checkpoint

    try:
        info = validate_checkpoint(args.path)
    except CheckpointError as exc:
        print(f"invalid checkpoint: {exc}", file=sys.stderr)
        return 1
    print(dataclasses.asdict(info))
    return 0
