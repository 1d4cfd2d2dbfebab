"""Bearer-token authentication for nanovl's gRPC servers (a ``grpc.aio`` server interceptor).

Two token sets: ``inference`` (the Inference service) and ``admin`` (the operator surface:
Profiling). A token of one set is never accepted for the other's services (PERMISSION_DENIED,
so the caller knows the token is fine but in the wrong place); an unknown or missing token is
UNAUTHENTICATED. Tokens come from a file (one per line, ``#`` comments; re-read when it
changes, so rotation needs no restart) and/or an environment variable (comma- or
whitespace-separated), never from a flag value, which every user sees in ``ps``. Only their
SHA-256 digests are kept, and each presented token is compared with every known one by
``hmac.compare_digest`` (no early exit), so timing says nothing about which bytes matched.

Health checking and reflection stay open by default: Kubernetes' ``grpc:`` probes (and most
load balancers' health checks) cannot send metadata, and reflection only describes the public
API (``--auth-reflection`` closes it). A set with no tokens configured leaves its services
open; ``service.server.check_exposure`` refuses to serve the operator surface beyond loopback
that way.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc

from nanovl.errors import InvalidArgument, NanovlError, PermissionDenied, Unauthenticated
from service.status import abort_with

log = logging.getLogger(__name__)

Role = Literal["inference", "admin"]
ROLES: tuple[Role, ...] = ("inference", "admin")
ROLE_WORDS: Mapping[Role, str] = {"inference": "an inference token", "admin": "an operator (admin) token"}
# The environment variables serve reads for each set (``--<role>-token-file`` for files).
TOKEN_ENV: Mapping[Role, str] = {"inference": "NANOVL_INFERENCE_TOKENS", "admin": "NANOVL_ADMIN_TOKENS"}
MIN_TOKEN_CHARS = 16
# How often a token file's metadata is checked for changes (one stat per check).
RELOAD_CHECK_S = 1.0
AUTHORIZATION = "authorization"


@dataclass(frozen=True)
class TokenSource:
    """Where one role's tokens come from. ``tokens``: values read from the environment."""

    file: Path | None = None
    tokens: tuple[str, ...] = field(default=(), repr=False)

    @property
    def configured(self) -> bool:
        return self.file is not None or bool(self.tokens)

    @classmethod
    def from_env(cls, role: Role, file: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> TokenSource:
        return cls(Path(file) if file else None, parse_tokens(environ.get(TOKEN_ENV[role], "")))


@dataclass(frozen=True)
class AuthSettings:
    inference: TokenSource = TokenSource()
    admin: TokenSource = TokenSource()
    # Reflection needs a token of either set too (health checking always stays open).
    reflection_requires_token: bool = False

    def source(self, role: Role) -> TokenSource:
        return self.inference if role == "inference" else self.admin


def parse_tokens(text: str) -> tuple[str, ...]:
    """Tokens from a file's or variable's text: separated by newlines, commas or spaces;
    ``#`` starts a comment."""
    tokens: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        tokens.extend(t for t in line.replace(",", " ").split() if t)
    return tuple(tokens)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _check_tokens(role: Role, tokens: Sequence[str], where: str) -> None:
    for t in tokens:
        if len(t) < MIN_TOKEN_CHARS:
            raise InvalidArgument(
                f"{where}: an {role} token is {len(t)} characters long; use at least {MIN_TOKEN_CHARS} "
                "random characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )


class TokenSet:
    """One role's tokens as digests; the file, if any, is re-read when it changes."""

    def __init__(self, role: Role, source: TokenSource, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.role = role
        self._source = source
        self._clock = clock
        _check_tokens(role, source.tokens, TOKEN_ENV[role])
        self._env_digests = tuple(_digest(t) for t in source.tokens)
        self._file_digests: tuple[bytes, ...] = ()
        self._stamp: tuple[int, int, int] | None = None
        self._next_check = 0.0
        if source.file is not None:
            self._file_digests = self._read_file(strict=True)

    @property
    def configured(self) -> bool:
        return self._source.configured

    def _file_stamp(self) -> tuple[int, int, int]:
        st = os.stat(self._source.file)  # type: ignore[arg-type]
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read_file(self, *, strict: bool) -> tuple[bytes, ...]:
        path = self._source.file
        assert path is not None
        try:
            stamp = self._file_stamp()
            text = path.read_text()
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise InvalidArgument(f"cannot read the {self.role} token file {path}: {exc.strerror}") from None
        tokens = parse_tokens(text)
        if not tokens and strict:
            raise InvalidArgument(f"the {self.role} token file {path} has no tokens")
        _check_tokens(self.role, tokens, str(path))
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the %s token file %s is readable by other users: chmod 600 it", self.role, path)
        self._stamp = stamp
        return tuple(_digest(t) for t in tokens)

    def _maybe_reload(self) -> None:
        if self._source.file is None or self._clock() < self._next_check:
            return
        self._next_check = self._clock() + RELOAD_CHECK_S
        try:
            if self._file_stamp() == self._stamp:
                return
            self._file_digests = self._read_file(strict=True)
            log.info("reloaded the %s token file %s (%d token(s))", self.role, self._source.file, self.count)
        except (OSError, NanovlError) as exc:
            # Mid-rotation (file replaced, briefly empty): keep the tokens we have.
            log.warning("keeping the current %s tokens: %s", self.role, exc)

    @property
    def count(self) -> int:
        return len(self._env_digests) + len(self._file_digests)

    def matches(self, digest: bytes) -> bool:
        """Whether ``digest`` is one of this set's; compares with every token, no early exit."""
        self._maybe_reload()
        found = False
        for known in self._env_digests + self._file_digests:
            found |= hmac.compare_digest(known, digest)
        return found


def load_token_sets(settings: AuthSettings) -> dict[Role, TokenSet]:
    """Every configured set, checked now (raises ``InvalidArgument`` on a bad file or token)."""
    return {role: TokenSet(role, settings.source(role)) for role in ROLES if settings.source(role).configured}


def bearer_token(metadata: Iterable[Any] | None) -> str | None:
    for item in metadata or ():
        key, value = item[0], item[1]
        if key == AUTHORIZATION:
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return None


class Authenticator:
    """Decides one call: which roles a service accepts, and whether the metadata carries one."""

    def __init__(self, rules: Mapping[str, frozenset[Role]], token_sets: Mapping[Role, TokenSet]) -> None:
        # Services absent from ``rules`` (health, by default reflection) are open.
        self._rules = dict(rules)
        self._sets = dict(token_sets)

    def required(self, service: str) -> frozenset[Role]:
        """The roles ``service`` accepts, or empty when it is open (no rule, or none of its
        roles has tokens configured). A rule ``"pkg.*"`` covers every service in ``pkg``."""
        roles = self._rules.get(service)
        if roles is None:
            roles = next(
                (r for key, r in self._rules.items() if key.endswith(".*") and service.startswith(key[:-1])),
                frozenset(),
            )
        return frozenset(r for r in roles if r in self._sets)

    def check(self, service: str, metadata: Iterable[Any] | None) -> None:
        roles = self.required(service)
        if not roles:
            return
        value = bearer_token(metadata)
        if value is None:
            raise Unauthenticated(
                f"{service} requires a bearer token: send `authorization: Bearer <token>` metadata "
                "(nanovl commands: --token-file or NANOVL_TOKEN)"
            )
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("the authorization metadata must be `Bearer <token>`")
        digest = _digest(token)
        matched = [role for role, tokens in self._sets.items() if tokens.matches(digest)]  # every set, always
        if any(role in roles for role in matched):
            return
        if matched:
            wanted = " or ".join(ROLE_WORDS[r] for r in sorted(roles))
            raise PermissionDenied(f"{ROLE_WORDS[matched[0]]} may not call {service}: it needs {wanted}")
        raise Unauthenticated(f"the bearer token is not valid for {service} on this server")


def _service_of(method: str) -> str:
    # "/nanovl.v1.Inference/Generate" -> "nanovl.v1.Inference"
    parts = method.split("/")
    return parts[1] if len(parts) == 3 else method


def _rejecting_handler(handler: grpc.RpcMethodHandler, error: NanovlError) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind that only aborts with ``error``. Requests are left as
    raw bytes: nothing a caller sent is parsed before it is authenticated."""

    async def reject(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort_with(context, error)

    # Server-streaming kinds need an async generator: interceptors that wrap the handler
    # (OpenTelemetry's) iterate its result with `async for`.
    async def reject_stream(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort_with(context, error)
        yield  # pragma: no cover  (unreachable: makes this an async generator)

    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(reject, response_serializer=serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(reject_stream, response_serializer=serializer)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(reject, response_serializer=serializer)
    return grpc.stream_stream_rpc_method_handler(reject_stream, response_serializer=serializer)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls whose bearer token the called service does not accept."""

    def __init__(self, authenticator: Authenticator, *, surface: str) -> None:
        self._auth = authenticator
        self._surface = surface

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: UNIMPLEMENTED, as without auth
        service = _service_of(handler_call_details.method)
        try:
            self._auth.check(service, handler_call_details.invocation_metadata)
        except NanovlError as exc:
            log.info("%s port: refused %s: %s", self._surface, handler_call_details.method, exc.code.name)
            return _rejecting_handler(handler, exc)
        return handler


__all__ = [
    "ROLES",
    "TOKEN_ENV",
    "AuthInterceptor",
    "AuthSettings",
    "Authenticator",
    "Role",
    "TokenSet",
    "TokenSource",
    "load_token_sets",
    "parse_tokens",
]
