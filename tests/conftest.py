"""Shared fixtures: ONE real vLLM engine on the tiny checkpoint for the whole session.

Starting an engine costs ~25-50 s on these machines, so every test that needs one
shares this fixture (and the gRPC server fixture built on it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from model.tiny import ensure_tiny_checkpoint
from service.engine import Engine, apply_process_environment, default_engine_args
from tests.ports import free_port

pytest.register_assert_rewrite("tests.matrix")  # shared checks, detailed failures

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.setdefault("NANOVL_CACHE_DIR", str(REPO / ".cache")))
apply_process_environment(CACHE)

# The settings every engine-backed test runs under. Small limits so limit errors are
# cheap to provoke; max_model_len small enough that an over-long prompt is cheap too.
TEST_MAX_MODEL_LEN = 2048
TEST_LIMITS = {"image": 4, "video": 2, "audio": 2}


# The session engine's served model name (vLLM's --served-model-name): what GetModelInfo and
# the `model_name` label of vLLM's `vllm:` metrics say, instead of the checkpoint's path.
TEST_SERVED_MODEL_NAME = "nanovl-tiny"

# Fixtures that start (or stand on) the session's real vLLM engine: a test using any of
# them is marked `engine`, so `make test-fast` (-m "not engine") skips it by marker.
ENGINE_FIXTURES = frozenset({"engine", "server", "grpc_target", "admin_target", "metrics_url"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if ENGINE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engine)


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    return ensure_tiny_checkpoint("full")


@pytest.fixture(scope="session")
def otlp_receiver():
    """A real OTLP/gRPC collector stand-in; the session engine sends vLLM's spans here."""
    from tests.otlp_receiver import OtlpReceiver

    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def torch_trace_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session engine's torch profiler (vLLM's) writes its traces."""
    return tmp_path_factory.mktemp("torch-traces")


@pytest.fixture(scope="session")
async def engine(tiny_checkpoint: Path, otlp_receiver, torch_trace_dir: Path):
    args = default_engine_args(
        str(tiny_checkpoint),
        max_model_len=TEST_MAX_MODEL_LEN,
        limit_mm_per_prompt=TEST_LIMITS,
        max_num_seqs=64,
        served_model_name=TEST_SERVED_MODEL_NAME,
        # vLLM's own tracing (its llm_request span) joins nanovl's traces in the tests.
        otlp_traces_endpoint=otlp_receiver.endpoint,
        # vLLM's torch profiler, with nanovl's bounded defaults (service.engine); it costs
        # nothing until a test starts a session.
        profiler_config={"profiler": "torch", "torch_profiler_dir": str(torch_trace_dir)},
    )
    eng = await Engine.start(args, warmup=True)
    yield eng
    eng.shutdown()


# Small enough that a multi-MB upload must use StreamGenerate.
TEST_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def server_settings(**overrides):
    from service.settings import ServerSettings

    return ServerSettings(
        **{
            "host": "127.0.0.1",
            "port": 0,
            "max_message_bytes": TEST_MAX_MESSAGE_BYTES,
            "max_request_bytes": 64 * 1024 * 1024,
            "warmup": False,
            # Shorter than the fuzz slice's stall timeout: a stalled upload ends on the server's side.
            "upload_idle_timeout_s": 8.0,
            # No balancer watches test servers: a drain refuses new calls at once unless a test asks.
            "drain_readiness_grace_s": 0.0,
            **overrides,
        }
    )


@pytest.fixture(scope="session")
def session_metrics():
    """The session server's metrics, served as `nanovl serve` serves them: /metrics, /ready and
    /live on an HTTP port, from the process's global prometheus_client registry, where the
    session engine's `vllm:` series are too."""
    from profiling.telemetry.metrics import MetricsSettings, setup_metrics

    metrics = setup_metrics(
        MetricsSettings.from_env(prometheus_port=free_port(), prometheus_host="127.0.0.1", exporter="none")
    )
    yield metrics
    metrics.shutdown()


@pytest.fixture(scope="session")
async def server(engine, session_metrics):
    """The real gRPC server on a real socket, sharing the session engine; the Profiling
    service on its admin port (127.0.0.1, an ephemeral port), as `nanovl serve --admin-port`;
    the plaintext health-only port (`--health-port`); metrics, /ready and /live on ``metrics_url``."""
    from service.server import build_server

    srv = await build_server(
        engine,
        server_settings(admin_port=0, health_port=0),
        metrics=session_metrics,
        profiling_servicer=_profiling_servicer(engine),
    )
    await srv.mark_serving()
    yield srv
    await srv.stop()


@pytest.fixture(scope="session")
def metrics_url(server, session_metrics) -> str:
    """``http://127.0.0.1:PORT``: the session server's /metrics, /ready and /live."""
    return f"http://127.0.0.1:{session_metrics.prometheus_port}"


def _profiling_servicer(engine):
    from profiling.servicer import ProfilingServicer

    return ProfilingServicer(engine, engine.engine_args)


@pytest.fixture(scope="session")
def grpc_target(server) -> str:
    return server.target


@pytest.fixture(scope="session")
def admin_target(server) -> str:
    """The session server's admin (operator) port: the Profiling service."""
    return server.admin_target
