"""What every ``nanovl`` subcommand shares: the default targets, the connection security
flags, the exit codes, local argument checks and how text from the server reaches a terminal."""

from __future__ import annotations

import argparse
import os
import sys
import unicodedata
from pathlib import Path
from typing import Any

DEFAULT_TARGET = "127.0.0.1:50051"

# Exit codes of every subcommand.
EXIT_OK = 0
EXIT_FAILED = 1  # the RPC or the work failed (the server said no, requests failed)
EXIT_USAGE = 2  # the command could not run: bad arguments, bad files, operator errors


def print_error(command: str | None, exc: BaseException) -> None:
    """An operator error as the one line every subcommand prints on stderr (exit 2)."""
    prefix = f"nanovl {command}" if command else "nanovl"
    print(f"{prefix}: error: {exc}", file=sys.stderr)


def default_target() -> str:
    """``$NANOVL_TARGET`` when set, else 127.0.0.1:50051 (read when the parser is built)."""
    return os.environ.get("NANOVL_TARGET") or DEFAULT_TARGET


DEFAULT_ADMIN_TARGET = "127.0.0.1:50052"
TOKEN_ENV = "NANOVL_TOKEN"
ADMIN_TOKEN_ENV = "NANOVL_ADMIN_TOKEN"


def default_admin_target() -> str:
    """``$NANOVL_ADMIN_TARGET`` when set, else 127.0.0.1:50052 (the operator surface)."""
    return os.environ.get("NANOVL_ADMIN_TARGET") or DEFAULT_ADMIN_TARGET


def add_connection_args(p: argparse.ArgumentParser, *, token_env: str = TOKEN_ENV) -> None:
    """TLS and token flags of a client command (README "Securing a deployment")."""
    g = p.add_argument_group("connection security (flags win over the NANOVL_TLS_* variables)")
    g.add_argument("--tls", action="store_true", help="use TLS, verifying the server with the system's CAs")
    g.add_argument("--tls-ca-file", metavar="PEM", help="verify the server with this CA bundle (implies --tls)")
    g.add_argument("--tls-cert-file", metavar="PEM", help="client certificate, for mTLS (implies --tls)")
    g.add_argument("--tls-key-file", metavar="PEM", help="the client certificate's key")
    g.add_argument("--tls-server-name", metavar="NAME", help="name to check the server's certificate against")
    g.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"send the bearer token in FILE (env {token_env} holds the token itself; never pass it as a flag)",
    )
    p.set_defaults(token_env=token_env)


def connection_from_args(args: argparse.Namespace) -> tuple[Any, str | None]:
    """(``TlsConfig`` or None, token or None) from :func:`add_connection_args`' flags."""
    from nanovl.client.security import TlsConfig, read_token_file

    tls = TlsConfig.from_values(
        enabled=args.tls,
        ca_file=args.tls_ca_file,
        cert_file=args.tls_cert_file,
        key_file=args.tls_key_file,
        server_name=args.tls_server_name,
    )
    if args.token_file:
        token = read_token_file(args.token_file)
    else:
        token = os.environ.get(args.token_env, "").strip() or None
    return tls, token


def readable_file(value: str) -> Path:
    """argparse ``type=`` for an input file: a missing, unreadable or empty file is a usage
    error reported by the parser (exit 2) before anything connects or loads."""
    path = Path(value)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {value}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{value} is not a regular file")
    if size == 0:
        raise argparse.ArgumentTypeError(f"{value} is empty")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {value}: permission denied")
    return path


# Kept as they are: they lay text out rather than control the terminal.
_LAYOUT = frozenset("\n\t")


def escape_nonprintable(text: str) -> str:
    """``text`` safe for a terminal: control, format, line/paragraph separator, surrogate,
    private-use and unassigned characters become Python-style escapes (``\\x02``,
    ``\\u200b``); newlines, tabs and spaces stay. A model's output is untrusted: raw ESC or BEL bytes would drive the
    operator's terminal."""
    out = []
    for ch in text:
        if ch in _LAYOUT:
            out.append(ch)
            continue
        category = unicodedata.category(ch)
        if category[0] == "C" or category in ("Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)
