"""The ``nanovl.v1.Profiling`` gRPC service over one running engine.

Each RPC delegates to the profiling layer (``profiling.sizing.live_budget``, ``budget``,
``dummy``, ``cpu_profile``, ``torch_profile``) and turns its ``NanovlError``s into
``context.abort`` with their status. Blocking work (vLLM config and processor building
for plans) runs in threads, serialized by one lock.

Operator bounds (``OperatorLimits``, from ``nanovl serve`` flags): PlanBudget plans for the
served checkpoint, or for one under a ``--plan-model-dir`` directory, loaded with nanovl's own
config class and no checkpoint code; captures (CPU profile, torch profile session, dummy
profile) run one at a time, CPU profiles within the server's maxima; server paths are never
returned.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from nanovl.errors import FailedPrecondition, PermissionDenied
from nanovl.v1 import profiling_pb2 as pb
from nanovl.v1 import profiling_pb2_grpc
from profiling.profilers.cpu_profile import capture_cpu_profile, iter_chunks
from profiling.profilers.cpu_profile import validate as validate_cpu_request
from profiling.profilers.limits import OperatorLimits
from profiling.profilers.torch_profile import TorchProfiler
from profiling.proto import (
    budget_to_pb,
    chunk_to_pb,
    cpu_request_from_pb,
    dummy_request_from_pb,
    dummy_to_pb,
    plan_request_from_pb,
    plan_to_pb,
    torch_request_from_pb,
    torch_result_to_pb,
    torch_started_to_pb,
)
from profiling.request_bounds import check_cpu_request, check_dummy_request, check_plan_request
from profiling.sizing.budget import plan_budget
from profiling.sizing.dummy import DummyProfiler
from profiling.sizing.live_budget import LiveBudgetReader, resolve_unsized
from service.media import DEFAULT_MEDIA_LIMITS, MediaLimits
from service.status import grpc_errors

if TYPE_CHECKING:
    from vllm.engine.arg_utils import AsyncEngineArgs

    from profiling.telemetry.metrics import EncoderBudgetSnapshot, ServiceMetrics
    from service.engine import Engine

log = logging.getLogger(__name__)

PLAN_MODEL_DIR_FLAG = "--plan-model-dir"


class ProfilingServicer(profiling_pb2_grpc.ProfilingServicer):
    def __init__(
        self,
        engine: Engine,
        engine_args: AsyncEngineArgs,
        *,
        metrics: ServiceMetrics | None = None,
        limits: OperatorLimits | None = None,
        media_limits: MediaLimits = DEFAULT_MEDIA_LIMITS,
    ) -> None:
        self._engine = engine
        self._engine_args = engine_args
        self._limits = limits or OperatorLimits()
        # The Inference service's per-item media limits: plans and advertised maxima keep to them.
        self._media_limits = media_limits
        # The capture running now (CPU profile, torch profile session, dummy profile), if any.
        self._capturing: str | None = None
        # vLLM's config/processor building (every plan) is not safe to run concurrently.
        self._plan_lock = threading.Lock()
        self._budget = LiveBudgetReader(engine, engine_args, plan_lock=self._plan_lock, media_limits=media_limits)
        self._dummy = DummyProfiler(engine, engine_args, plan_lock=self._plan_lock, media_limits=media_limits)
        self._torch = TorchProfiler(engine, self._limits.torch_profile)
        if metrics is not None:
            metrics.set_encoder_budget_source(self.encoder_budget_snapshot)

    @property
    def budget_reader(self) -> LiveBudgetReader:
        return self._budget

    def encoder_budget_snapshot(self) -> EncoderBudgetSnapshot | None:
        """The ``ServiceMetrics.set_encoder_budget_source`` callable (thread-safe, cheap)."""
        return self._budget.encoder_snapshot()

    @grpc_errors
    async def GetBudget(self, request: pb.GetBudgetRequest, context: grpc.aio.ServicerContext) -> pb.Budget:
        return budget_to_pb(await self._budget.read())

    @contextmanager
    def _exclusive(self, what: str) -> Iterator[None]:
        """One capture at a time: they skew each other and pause or slow live traffic."""
        self._begin(what)
        try:
            yield
        finally:
            self._capturing = None

    def _begin(self, what: str) -> None:
        running = self._capturing or (_TORCH_CAPTURE if self._torch.running else None)
        if running is not None:
            raise FailedPrecondition(f"{running} is running: one capture at a time; retry when it ends")
        self._capturing = what

    def _other_checkpoint(self, model_path: str) -> str | None:
        """The allow-listed checkpoint ``model_path`` names, or None for the served one."""
        real = Path(os.path.realpath(model_path))
        served = self._engine.summary.model
        if os.path.isdir(served) and real == Path(os.path.realpath(served)):
            return None
        if any(real.is_relative_to(d) for d in self._limits.plan_model_dirs):
            return str(real)
        raise PermissionDenied(
            "PlanBudget plans for the served checkpoint (leave model_path unset); another checkpoint must be in a "
            f"directory the operator allow-lists with `nanovl serve {PLAN_MODEL_DIR_FLAG} DIR`"
            + ("" if self._limits.plan_model_dirs else " (this server allow-lists none)")
        )

    def _plan(self, request: pb.PlanBudgetRequest) -> pb.BudgetPlan:
        check_plan_request(request, limits=self._media_limits)
        plan_request, order = plan_request_from_pb(request)
        plan_request = dataclasses.replace(plan_request, media_limits=self._media_limits)
        other = self._other_checkpoint(request.model_path) if request.HasField("model_path") else None
        if other is not None:
            # Another checkpoint: vLLM's defaults for it, plus the request's settings; its
            # config through nanovl's own class, none of its code run (budget.plan_budget).
            model_path, engine_args = other, None
        else:
            model_path, engine_args = self._engine.summary.model, self._engine_args
            if plan_request.max_model_len not in (None, self._engine.summary.max_model_len) and (
                plan_request.max_num_batched_tokens is None
            ):
                # vLLM wrote the max_num_batched_tokens it derived from the live
                # max_model_len back into the engine args at start-up; let it derive
                # again for the new length (the plan reports the value used).
                engine_args = dataclasses.replace(engine_args, max_num_batched_tokens=None)
        with self._plan_lock:
            plan_request = resolve_unsized(plan_request, model_path, engine_args=engine_args)
            plan = plan_budget(plan_request, model_path, engine_args=engine_args)
        return plan_to_pb(plan, order)

    @grpc_errors
    async def PlanBudget(self, request: pb.PlanBudgetRequest, context: grpc.aio.ServicerContext) -> pb.BudgetPlan:
        return await asyncio.to_thread(self._plan, request)

    @grpc_errors
    async def RunDummyProfile(
        self, request: pb.RunDummyProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.DummyProfileResult:
        check_dummy_request(request, limits=self._media_limits)
        entries = dummy_request_from_pb(request)
        with self._exclusive("a dummy profile"):
            return dummy_to_pb(await self._dummy.run(entries))

    @grpc_errors
    async def CaptureCpuProfile(
        self, request: pb.CaptureCpuProfileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CpuProfileChunk]:
        limits = self._limits.cpu_profile
        check_cpu_request(request)
        cpu_request = cpu_request_from_pb(request)
        if not request.HasField("rate_hz"):
            cpu_request = dataclasses.replace(cpu_request, rate_hz=limits.default_rate_hz(cpu_request.native))
        if not request.HasField("duration_s"):
            cpu_request = dataclasses.replace(
                cpu_request, duration_s=min(cpu_request.duration_s, limits.max_duration_s)
            )
        validate_cpu_request(cpu_request)
        limits.check(cpu_request)
        with self._exclusive("a CPU profile capture"):
            files = await capture_cpu_profile(cpu_request)
        for chunk in iter_chunks(files):
            yield chunk_to_pb(chunk)

    @grpc_errors
    async def StartTorchProfile(
        self, request: pb.StartTorchProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartTorchProfileResponse:
        torch_request = torch_request_from_pb(request)
        self._torch.config()  # a server without the profiler says so before anything else
        # While it starts; then the session itself (TorchProfiler.running) until it ends.
        self._begin("a torch profile start")
        try:
            bounds = await self._torch.start(torch_request)
        finally:
            self._capturing = None
        return torch_started_to_pb(bounds)

    @grpc_errors
    async def StopTorchProfile(
        self, request: pb.StopTorchProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.StopTorchProfileResponse:
        return torch_result_to_pb(await self._torch.stop())


_TORCH_CAPTURE = "a torch profile (StopTorchProfile ends it)"
