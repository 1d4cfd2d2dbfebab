"""The ``nanovl.v1.Profiling`` gRPC service over one running engine.

Each RPC delegates to the profiling layer (``profiling.sizing.live_budget``, ``budget``,
``dummy``, ``cpu_profile``, ``torch_profile``) and turns its ``NanovlError``s into
``context.abort`` with their status. Blocking work (vLLM config and processor building
for plans) runs in threads, serialized by one lock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from nanovl.errors import FailedPrecondition
from nanovl.v1 import profiling_pb2 as pb
from nanovl.v1 import profiling_pb2_grpc
from profiling.profilers.cpu_profile import capture_cpu_profile, iter_chunks
from profiling.profilers.cpu_profile import validate as validate_cpu_request
from profiling.profilers.torch_profile import TorchProfiler
from profiling.proto import (
    budget_to_pb,
    chunk_to_pb,
    cpu_request_from_pb,
    dummy_request_from_pb,
    dummy_to_pb,
    plan_request_from_pb,
    plan_to_pb,
)
from profiling.sizing.budget import plan_budget
from profiling.sizing.dummy import DummyProfiler
from profiling.sizing.live_budget import LiveBudgetReader, resolve_unsized
from service.status import grpc_errors

if TYPE_CHECKING:
    from vllm.engine.arg_utils import AsyncEngineArgs

    from profiling.telemetry.metrics import EncoderBudgetSnapshot, ServiceMetrics
    from service.engine import Engine

log = logging.getLogger(__name__)


class ProfilingServicer(profiling_pb2_grpc.ProfilingServicer):
    def __init__(self, engine: Engine, engine_args: AsyncEngineArgs, *, metrics: ServiceMetrics | None = None) -> None:
        self._engine = engine
        self._engine_args = engine_args
        # vLLM's config/processor building (every plan) is not safe to run concurrently.
        self._plan_lock = threading.Lock()
        self._budget = LiveBudgetReader(engine, engine_args, plan_lock=self._plan_lock)
        self._dummy = DummyProfiler(engine, engine_args, plan_lock=self._plan_lock)
        self._torch = TorchProfiler(engine)
        self._cpu_busy = False
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

    def _plan(self, request: pb.PlanBudgetRequest) -> pb.BudgetPlan:
        plan_request, order = plan_request_from_pb(request)
        if request.HasField("model_path"):
            # Another checkpoint: vLLM's defaults for it, plus the request's settings.
            model_path, engine_args = request.model_path, None
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
        return dummy_to_pb(await self._dummy.run(dummy_request_from_pb(request)))

    @grpc_errors
    async def CaptureCpuProfile(
        self, request: pb.CaptureCpuProfileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CpuProfileChunk]:
        cpu_request = cpu_request_from_pb(request)
        validate_cpu_request(cpu_request)
        if self._cpu_busy:
            raise FailedPrecondition("a CPU profile capture is already running; retry when it ends")
        self._cpu_busy = True
        try:
            files = await capture_cpu_profile(cpu_request)
        finally:
            self._cpu_busy = False
        for chunk in iter_chunks(files):
            yield chunk_to_pb(chunk)

    @grpc_errors
    async def StartTorchProfile(
        self, request: pb.StartTorchProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartTorchProfileResponse:
        trace_dir = await self._torch.start(
            prefix=request.profile_prefix if request.HasField("profile_prefix") else None,
            delay_iterations=request.delay_iterations if request.HasField("delay_iterations") else None,
            max_iterations=request.max_iterations if request.HasField("max_iterations") else None,
        )
        return pb.StartTorchProfileResponse(trace_dir=trace_dir)

    @grpc_errors
    async def StopTorchProfile(
        self, request: pb.StopTorchProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.StopTorchProfileResponse:
        result = await self._torch.stop()
        return pb.StopTorchProfileResponse(trace_dir=result.trace_dir, files=list(result.files))
