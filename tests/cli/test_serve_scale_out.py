"""`nanovl serve`'s flags for running in a fleet: vLLM's data-parallel flags passed through to
vLLM's engine arguments as they are, the worker-only `--headless` refused with directions, and
the drain's timings checked (docs/deployment.md)."""

from __future__ import annotations

import pytest

from nanovl.cli import serve
from nanovl.errors import InvalidArgument


def test_data_parallel_flags_reach_vllms_engine_arguments() -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs

    argv = [
        "--port", "50051", "--data-parallel-size", "4", "--data-parallel-size-local", "2",
        "--data-parallel-address", "10.0.0.11", "--data-parallel-rpc-port", "13345",
        "--data-parallel-start-rank", "0", "--served-model-name", "nemotron-nano-vl",
    ]  # fmt: skip
    args, rest = serve.build_parser().parse_known_args(argv)
    assert args.port == 50051 and "--port" not in rest  # nanovl's own flag stays nanovl's
    engine_args = AsyncEngineArgs.from_cli_args(serve.build_engine_parser().parse_args(rest))
    assert (engine_args.data_parallel_size, engine_args.data_parallel_size_local) == (4, 2)
    assert (engine_args.data_parallel_address, engine_args.data_parallel_rpc_port) == ("10.0.0.11", 13345)
    assert engine_args.data_parallel_start_rank == 0
    assert engine_args.served_model_name == ["nemotron-nano-vl"]


def test_headless_is_refused_with_the_worker_command() -> None:
    with pytest.raises(InvalidArgument, match=r"vllm serve MODEL --headless"):
        serve.parse_args(["--headless", "--data-parallel-size", "2"])


def test_drain_timings_are_flags_with_defaults_and_are_checked() -> None:
    args, _ = serve.build_parser().parse_known_args(["--drain-readiness-grace-s", "10", "--drain-grace-s", "30"])
    settings = serve.settings_from_args(args)
    assert (settings.drain_readiness_grace_s, settings.drain_grace_s) == (10.0, 30.0)
    defaults, _ = serve.build_parser().parse_known_args([])
    assert serve.settings_from_args(defaults).drain_readiness_grace_s == 5.0
    bad, _ = serve.build_parser().parse_known_args(["--drain-readiness-grace-s", "-1"])
    with pytest.raises(InvalidArgument, match="--drain-readiness-grace-s must be a number >= 0"):
        serve.settings_from_args(bad)


def test_each_cpu_worker_gets_cores_of_its_own() -> None:
    """vLLM's CPU backend wants one core list per local worker (ompmultiprocessing.py); the
    single list nanovl used to give made the second data-parallel rank fail to start."""
    from types import SimpleNamespace

    from service.engine import cpu_thread_binding, local_cpu_workers

    assert cpu_thread_binding(2, 1) == "0-1"
    assert cpu_thread_binding(2, 2) == "0|1"
    assert cpu_thread_binding(8, 2) == "0-3|4-7"
    assert cpu_thread_binding(8, 3) == "0-2|3-4|5-7"
    with pytest.raises(InvalidArgument, match="4 workers .* 2 cores"):
        cpu_thread_binding(2, 4)

    def args(**kw):
        base = dict(data_parallel_size=1, data_parallel_size_local=None, tensor_parallel_size=1)
        return SimpleNamespace(**{**base, "pipeline_parallel_size": 1, **kw})

    assert local_cpu_workers(args()) == 1
    assert local_cpu_workers(args(data_parallel_size=2)) == 2
    assert local_cpu_workers(args(data_parallel_size=4, data_parallel_size_local=2)) == 2
    assert local_cpu_workers(args(tensor_parallel_size=2)) == 2
