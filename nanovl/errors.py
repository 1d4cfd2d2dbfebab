"""Errors that carry the gRPC status a client should see and a message it can act on.

Lower layers (validation, media decoding, prompt assembly, engine) raise these; only the
servicers translate them into ``context.abort``. That keeps gRPC out of pure logic.
"""

from __future__ import annotations

import grpc


class NanovlError(Exception):
    """Base class: a failure with a precise gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
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
