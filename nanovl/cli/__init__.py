"""The ``nanovl`` command line: one parser, each subcommand in its own module.

Only the chosen subcommand's module is imported, and each imports what it needs when it
runs, so client commands (``generate``, ``profile budget``, ``loadtest``) never load torch,
transformers or vLLM, and ``nanovl serve --help`` never loads vLLM.

Exit codes (every subcommand): 0 success; 1 the RPC or the work failed (the server's status
is printed); 2 the command could not run (bad arguments or files, operator errors such as
a busy port or a bad checkpoint).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from nanovl.cli.common import EXIT_USAGE, print_error

if os.environ.get("NANOVL_ENGINE_LOGGING_CONFIG"):
    # An engine process of `nanovl serve` (multiprocessing's spawn imports the server's main
    # script, hence this package, first): route its logs before it imports vLLM.
    from profiling.telemetry.engine_logs import configure_engine_child

    configure_engine_child()

# name -> (module, one-line help). Modules expose register(subparsers) and set args.func.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("nanovl.cli.serve", "run the gRPC service (default model: the embedded tiny checkpoint)"),
    "generate": ("nanovl.cli.generate", "send one prompt to a server and stream the answer"),
    "call": ("nanovl.cli.call", "call any RPC by hand through server reflection, JSON in and out"),
    "model": ("nanovl.cli.model", "checkpoint tools: build a tiny checkpoint, validate one"),
    "profile": ("nanovl.cli.profile", "sizing and profiling: budgets, plans, dummy profiles, CPU/torch profiles"),
    "loadtest": ("nanovl.cli.loadtest", "drive a server with mixed-modality traffic and report latency"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``command``'s module is imported to register its flags."""
    parser = argparse.ArgumentParser(prog="nanovl", description="gRPC inference service for Nemotron Nano VL")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        if name == command:
            importlib.import_module(module).register(subparsers)
        else:
            subparsers.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in COMMANDS else None
    from nanovl.errors import NanovlError

    try:
        if command == "serve":
            from nanovl.cli import serve

            args = serve.parse_args(argv[1:])
            args.command, args.func = "serve", serve.run
        else:
            args = build_parser(command).parse_args(argv)
        return int(args.func(args) or 0)
    except NanovlError as exc:
        # Operator mistakes (busy port, bad checkpoint, bad flag value): one clear line.
        print_error(command, exc)
        return EXIT_USAGE
