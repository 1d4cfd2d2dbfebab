"""Errors that carry the gRPC status a client should see and a message it can act on.

Lower layers (validation, media decoding, prompt assembly, engine) raise these; only the
servicers translate them into ``context.abort``. That keeps gRPC out of pure logic.
"""

from __future__ import annotations

import grpc

# A status message travels in the ``grpc-message`` trailer, percent-encoded (every byte
# outside printable ASCII, and ``%``, becomes three), and gRPC Core refuses metadata over
# 8 KiB (soft limit) / 16 KiB (hard): the client then sees a transport RESOURCE_EXHAUSTED
# instead of the status. Messages are cut to this many encoded bytes, whatever they echo.
MAX_DETAILS_BYTES = 2048
# An echoed client value (a role, an id, a name) is shown up to this many characters.
MAX_ECHO_CHARS = 80
_CUT = "..."


def _encoded_size(ch: str) -> int:
    # grpc-message percent-encoding (gRPC's PROTOCOL-HTTP2.md): 0x20-0x7E except '%' stay.
    return 1 if " " <= ch <= "~" and ch != "%" else 3 * len(ch.encode("utf-8", "surrogatepass"))


def bounded(message: str, max_bytes: int = MAX_DETAILS_BYTES) -> str:
    """``message`` cut (with ``...``) so that its percent-encoded size is at most
    ``max_bytes``: any status message reaches the client intact, whatever it echoes."""
    if 3 * len(message) * 4 <= max_bytes:  # the worst case fits: nothing to measure
        return message
    size, end = 0, len(message)
    budget = max_bytes - len(_CUT)
    for i, ch in enumerate(message):
        size += _encoded_size(ch)
        if size > budget:
            end = i
            break
    else:
        return message
    return message[:end] + _CUT


def echo(value: object, max_chars: int = MAX_ECHO_CHARS) -> str:
    """A client's value as a message quotes it: ``repr`` (control characters escaped),
    cut to ``max_chars`` with the full length said, so a huge value cannot swamp the message."""
    if isinstance(value, str) and len(value) > max_chars:
        return f"{value[:max_chars]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= max_chars else f"{text[:max_chars]}... ({len(text)} characters)"


class NanovlError(Exception):
    """Base class: a failure with a precise gRPC status. The message is cut to
    ``MAX_DETAILS_BYTES`` encoded bytes (see :func:`bounded`)."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(bounded(message))
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class InvalidArgument(NanovlError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class MediaDecodeError(InvalidArgument):
    """Media bytes that are corrupt, empty, or in a format we do not accept."""


class OutOfRange(NanovlError):
    code = grpc.StatusCode.OUT_OF_RANGE


class ResourceExhausted(NanovlError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(NanovlError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(NanovlError):
    """A server-side time limit (upload idle time, whole upload, template rendering)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class FailedPrecondition(NanovlError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(NanovlError):
    """No credentials, or credentials this server does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(NanovlError):
    """Known credentials (or a request) that this surface or the server's configuration
    does not allow; the message names the flag."""

    code = grpc.StatusCode.PERMISSION_DENIED
