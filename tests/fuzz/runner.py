"""Runs fuzz cases against a real server over a real socket and reports statuses by code
and by kind, every failure with the seed that replays it, the server's health after the
run, and whether a greedy reference generation still gives the same tokens."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nanovl.client import InferenceRpcError
from nanovl.client.aio import AsyncGeneration
from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import inference_pb2_grpc as pb_grpc
from tests.fuzz.corpus import GENERATE, STREAM_GENERATE, Case

# The kinds that still fail on this branch because their fix lands with another half of
# issue 10 (chunk protocol and declared sizes in _receive, chat-template isolation, upload
# idle timeout).
# The CI slice reports them but does not fail on them; empty this set once they are fixed.

# The plaintext health port's malformed-input interceptor lands with issue 10's other half.
KNOWN_OPEN_KINDS: frozenset[str] = frozenset()

IDLE_KINDS = frozenset({"stream.stall", "stream.trickle", "stream.huge_declared"})
# Cases that mostly sit idle (a stalled or trickling upload) run at most this many at a time,
# apart from the rest: far below the server's upload budget (64) and its per-client share
# (--max-uploads-per-peer, 16, which every case of this one client shares), so the
# StreamGenerate cases reach the checks they target instead of RESOURCE_EXHAUSTED.
IDLE_CONCURRENCY = 6
# DEADLINE_EXCEEDED from one of the server's own time limits (its message names the flag):
# the precise answer to a stalled upload or a slow template, not a hang.
SERVER_TIME_LIMITS = (
    "--upload-idle-timeout-s",
    "--upload-timeout-s",
    "--min-upload-bytes-per-s",
    "--chat-template-timeout-s",
    "--media-decode-timeout-s",
)
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
REFERENCE = pb.GenerateRequest(
    parts=[pb.ContentPart(text="The quick brown fox jumps over the lazy dog. Then")],
    sampling=pb.SamplingOptions(max_tokens=12, temperature=0.0, ignore_eos=True),
)
READINESS = ("", "nanovl.v1.Inference")


@dataclass(frozen=True)
class Outcome:
    case: Case
    code: grpc.StatusCode
    details: str
    elapsed_s: float
    client_cancelled: bool = False

    @property
    def client_write_refused(self) -> bool:
        """grpc.aio's own INTERNAL for a write Core refused after the server had finished
        the call (this client kept writing past End), when the server's status was lost."""
        return self.code == grpc.StatusCode.INTERNAL and self.details == "Internal error from Core"

    @property
    def label(self) -> str:
        return "CLIENT_WRITE_REFUSED" if self.client_write_refused else self.code.name

    @property
    def failure(self) -> str | None:
        """Why this outcome is a bug, or None."""
        if self.client_write_refused:
            # nanovl's client recovers the server's status; a plain grpc.aio client cannot.
            return "INTERNAL for a plain grpc.aio client" if self.case.raw_client else None
        if self.code in BAD_CODES:
            return self.code.name
        if self.code == grpc.StatusCode.DEADLINE_EXCEEDED and not any(f in self.details for f in SERVER_TIME_LIMITS):
            return "hang (the client's deadline passed)"
        if self.code == grpc.StatusCode.CANCELLED and not self.client_cancelled:
            return "CANCELLED by the server"
        if self.code == grpc.StatusCode.OK and self.case.must_reject:
            return "accepted (OK) although the API says it is rejected"
        return None


@dataclass
class Report:
    seed: int
    outcomes: list[Outcome] = field(default_factory=list)
    elapsed_s: float = 0.0
    healthy_after: bool = False
    health_details: str = ""
    reference_before: list[int] = field(default_factory=list)
    reference_after: list[int] = field(default_factory=list)

    @property
    def by_code(self) -> collections.Counter[str]:
        return collections.Counter(o.label for o in self.outcomes)

    @property
    def by_kind(self) -> dict[str, collections.Counter[str]]:
        kinds: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for o in self.outcomes:
            kinds[o.case.kind][o.label] += 1
        return dict(sorted(kinds.items()))

    def failures(self, ignore_kinds: Iterable[str] = ()) -> list[Outcome]:
        skip = set(ignore_kinds)
        return [o for o in self.outcomes if o.failure and o.case.kind not in skip]

    @property
    def reference_changed(self) -> bool:
        return self.reference_before != self.reference_after

    def ok(self, ignore_kinds: Iterable[str] = ()) -> bool:
        return not self.failures(ignore_kinds) and self.healthy_after and not self.reference_changed

    def text(self, ignore_kinds: Iterable[str] = (), max_failures: int = 40) -> str:
        lines = [
            f"fuzz: {len(self.outcomes)} requests, seed {self.seed}, {self.elapsed_s:.1f} s",
            "by code: " + ", ".join(f"{c} {n}" for c, n in self.by_code.most_common()),
            "by kind:",
        ]
        for kind, counts in self.by_kind.items():
            bad = sum(1 for o in self.outcomes if o.case.kind == kind and o.failure)
            flag = f"  <- {bad} failing" + (" (known open)" if kind in set(ignore_kinds) else "") if bad else ""
            lines.append(f"  {kind:32s} " + ", ".join(f"{c} {n}" for c, n in counts.most_common()) + flag)
        lines.append(f"server healthy after the run: {self.healthy_after} {self.health_details}".rstrip())
        lines.append(
            "greedy reference: "
            + ("unchanged" if not self.reference_changed else "CHANGED")
            + f" ({len(self.reference_after)} tokens)"
        )
        failures = self.failures()
        if failures:
            lines.append(f"failures ({len(failures)}; replay: python -m tests.fuzz --replay KIND:SEED):")
            for o in failures[:max_failures]:
                known = " [known open]" if o.case.kind in set(ignore_kinds) else ""
                lines.append(
                    f"  {o.case.kind}:{o.case.seed}{known} {o.failure}: {o.code.name} {o.details[:160]!r} "
                    f"({o.elapsed_s:.1f} s){' ' + o.case.note if o.case.note else ''}"
                )
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "seed": self.seed,
            "requests": len(self.outcomes),
            "elapsed_s": self.elapsed_s,
            "by_code": dict(self.by_code),
            "by_kind": {k: dict(v) for k, v in self.by_kind.items()},
            "healthy_after": self.healthy_after,
            "reference_changed": self.reference_changed,
            "failures": [
                {
                    "kind": o.case.kind,
                    "seed": o.case.seed,
                    "why": o.failure,
                    "code": o.code.name,
                    "details": o.details,
                    "elapsed_s": o.elapsed_s,
                    "known_open": o.case.kind in KNOWN_OPEN_KINDS,
                }
                for o in self.failures()
            ],
        }


def _ident(b: bytes) -> bytes:
    return b


async def _messages(case: Case, hold_s: float):
    for i, m in enumerate(case.messages):
        if i and case.pause_s:
            await asyncio.sleep(case.pause_s)
        yield m
    if not case.half_close:
        await asyncio.sleep(hold_s)  # a client still uploading; cancelled when the call ends


async def run_case(channel: grpc.aio.Channel, case: Case, timeout_s: float) -> Outcome:
    """Send ``case`` as raw bytes; its status (client-side artefacts excluded)."""
    t0 = time.perf_counter()
    stream_request, stream_response = case.streams
    code, details, cancelled = grpc.StatusCode.OK, "", False
    try:
        if case.method in (GENERATE, STREAM_GENERATE) and not case.raw_client:
            # The client's generation: it reports the server's status even when grpc.aio
            # would report a write refused after the server's verdict as INTERNAL.
            if stream_request:
                method = channel.stream_stream(
                    case.method, request_serializer=_ident, response_deserializer=pb.GenerateResponse.FromString
                )
                call = method(_messages(case, timeout_s + 5), timeout=timeout_s)
            else:
                method = channel.unary_stream(
                    case.method, request_serializer=_ident, response_deserializer=pb.GenerateResponse.FromString
                )
                call = method(case.messages[0], timeout=timeout_s)
            gen = AsyncGeneration(call)
            if case.cancel_after_s is not None:
                await asyncio.sleep(case.cancel_after_s)
                cancelled = True
                gen.cancel()
                code = grpc.StatusCode.CANCELLED
            async for _ in gen:
                pass
        elif stream_request:
            method = channel.stream_stream(case.method, request_serializer=_ident, response_deserializer=_ident)
            async for _ in method(_messages(case, timeout_s + 5), timeout=timeout_s):
                pass
        elif stream_response:
            async for _ in channel.unary_stream(case.method, request_serializer=_ident, response_deserializer=_ident)(
                case.messages[0], timeout=timeout_s
            ):
                pass
        else:
            await channel.unary_unary(case.method, request_serializer=_ident, response_deserializer=_ident)(
                case.messages[0], timeout=timeout_s
            )
    except InferenceRpcError as e:
        code, details = e.code, e.details
    except grpc.aio.AioRpcError as e:
        code, details = e.code(), e.details() or ""
    return Outcome(case, code, details, time.perf_counter() - t0, client_cancelled=cancelled)


async def reference_tokens(channel: grpc.aio.Channel) -> list[int]:
    tokens: list[int] = []
    async for r in pb_grpc.InferenceStub(channel).Generate(REFERENCE, timeout=120):
        tokens.extend(r.delta.token_ids)
    return tokens


async def check_health(channel: grpc.aio.Channel) -> tuple[bool, str]:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        for service in READINESS:
            status = (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)).status
            if status != health_pb2.HealthCheckResponse.SERVING:
                return False, f"{service or 'liveness'}: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}"
    except grpc.aio.AioRpcError as e:
        return False, f"health check failed: {e.code().name} {e.details()}"
    return True, ""


async def run(
    target: str,
    cases: list[Case],
    *,
    seed: int,
    concurrency: int = 8,
    timeout_s: float = 30.0,
    stall_timeout_s: float | None = None,
    progress: bool = False,
    health_target: str | None = None,
) -> Report:
    """``health_target``: the server's plaintext health port; without it the health-port
    cases go to ``target`` (which serves health too)."""
    report = Report(seed)
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    async with (
        grpc.aio.insecure_channel(target, options=options) as channel,
        grpc.aio.insecure_channel(health_target or target) as health_channel,
    ):
        report.reference_before = await reference_tokens(channel)
        semaphore = asyncio.Semaphore(concurrency)
        # Cases that mostly sit idle get their own limit (IDLE_CONCURRENCY).
        idle = asyncio.Semaphore(IDLE_CONCURRENCY)
        t0 = time.perf_counter()
        done = 0

        async def one(case: Case) -> Outcome:
            nonlocal done
            async with idle if case.kind in IDLE_KINDS else semaphore:
                limit = stall_timeout_s if case.kind == "stream.stall" and stall_timeout_s else timeout_s
                outcome = await run_case(health_channel if case.port == "health" else channel, case, limit)
            done += 1
            if progress and done % 250 == 0:
                print(f"  {done}/{len(cases)} ({time.perf_counter() - t0:.0f} s)", flush=True)
            return outcome

        report.outcomes = list(await asyncio.gather(*(one(c) for c in cases)))
        report.elapsed_s = time.perf_counter() - t0
        report.healthy_after, report.health_details = await check_health(channel)
        if report.healthy_after:
            report.reference_after = await reference_tokens(channel)
    return report
