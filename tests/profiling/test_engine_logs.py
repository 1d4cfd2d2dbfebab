"""The engine's logs in the operator's view: noise dropped, milestones and warnings that
matter in one line, everything with --show-engine-logs, child processes included."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from profiling.telemetry import engine_logs
from profiling.telemetry.engine_logs import EngineLogFilter, EngineLogTail, engine_logging_config
from profiling.telemetry.logs import LoggingSettings, setup_logging

REPO = Path(__file__).resolve().parents[2]


def _record(name: str, level: int, msg: str) -> logging.LogRecord:
    return logging.makeLogRecord({"name": name, "levelno": level, "levelname": logging.getLevelName(level), "msg": msg})


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("vllm.triton_utils.importing", "Triton is installed, but doesn't include CPU backend. Disabling Triton."),
        ("vllm.platforms.cpu", "Triton is not installed. triton-cpu is expected on x86 CPUs."),
        ("vllm.config.vllm", "Model Runner V2 requires Triton; using the V1 model runner instead."),
        ("torch.utils.cpp_extension", "No CUDA runtime is found, using CUDA_HOME='/usr/local'"),
        ("vllm.config.vllm", "Enforce eager set, disabling torch.compile, CUDAGraphs, and JIT kernel warmup."),
        (
            "transformers.tokenization_utils_base",
            "Token indices sequence length is longer than the specified maximum sequence length for this model "
            "(21564 > 8192). Running this sequence through the model will result in indexing errors",
        ),
        ("py.warnings", "FutureWarning: `torch.distributed.reduce_op` is deprecated"),
        ("vllm.v1.worker.cpu_worker", "CPU backend doesn't allow to use `torch.set_num_threads` after the binding"),
    ],
)
def test_known_noise_is_dropped(name, message):
    assert not EngineLogFilter().filter(_record(name, logging.WARNING, message))
    assert EngineLogFilter(show_all=True).filter(_record(name, logging.WARNING, message))


def test_milestones_and_explained_warnings_become_one_line_each():
    f = EngineLogFilter()
    weights = _record(
        "vllm.model_executor.model_loader.default_loader", logging.INFO, "Loading weights took 0.11 seconds"
    )
    assert f.filter(weights) and weights.getMessage() == "weight load: 0.11 s" and weights.name == "nanovl.engine"
    chunked = _record(
        "vllm.engine.arg_utils",
        logging.WARNING,
        "This model does not officially support disabling chunked prefill. Disabling this manually may cause the "
        "engine to crash or produce incorrect outputs.",
    )
    assert f.filter(chunked) and "chunked prefill is off" in chunked.getMessage()
    assert chunked.levelno == logging.INFO and "crash or produce incorrect" not in chunked.getMessage()
    # The same notice from the engine core and the worker: once.
    again = _record("vllm.engine.arg_utils", logging.WARNING, chunked.msg)
    again.msg = "This model does not officially support disabling chunked prefill. Disabling this manually"
    assert not f.filter(again)


def test_shutdown_force_kills_are_one_explained_line():
    f = EngineLogFilter()
    kills = [
        _record(
            "vllm.v1.utils", logging.WARNING, "[shutdown] Process manager: force killing remaining processes count=1"
        ),
        _record("vllm.v1.utils", logging.WARNING, "[shutdown] Process manager: force killing remaining process Engine"),
        _record("vllm.utils.system_utils", logging.WARNING, "[shutdown] force killing sub process VLLM::Worker pid 1"),
    ]
    assert [f.filter(r) for r in kills] == [True, False, False]
    assert kills[0].getMessage().startswith("shutdown: vLLM stopped its engine processes")


def test_other_engine_records_by_level():
    f = EngineLogFilter()
    assert not f.filter(_record("vllm.config.model", logging.INFO, "Using max model len 8192"))
    assert f.filter(_record("vllm.v1.engine.core", logging.WARNING, "something new that may matter"))
    assert f.filter(_record("vllm.v1.engine.core", logging.ERROR, "engine core failed"))
    # nanovl's own INFO lines always pass.
    assert f.filter(_record("nanovl.startup", logging.INFO, "engine start: 40.1 s"))
    assert f.filter(_record("service.engine", logging.INFO, "warm-up image: 0.87 s"))


def test_setup_logging_filters_third_party_records_unless_showing_all(monkeypatch):
    # As in a fresh server process: vLLM's own logging config (applied when another test
    # imported vllm in this session) must not keep its records away from the root handler.
    vllm_logger = logging.getLogger("vllm")
    monkeypatch.setattr(vllm_logger, "propagate", True)
    monkeypatch.setattr(vllm_logger, "handlers", [])
    monkeypatch.setattr(vllm_logger, "disabled", False)
    for show, expect in ((False, 0), (True, 1)):
        stream = io.StringIO()
        setup_logging(LoggingSettings(show_engine_logs=show), stream=stream)
        logging.getLogger("vllm.fake").propagate = True
        logging.getLogger("vllm.fake").warning("Triton is not installed. triton-cpu is expected on x86 CPUs.")
        logging.getLogger("nanovl.fake").info("kept")
        assert stream.getvalue().count("Triton") == expect and "kept" in stream.getvalue()
    assert LoggingSettings(level="DEBUG").show_all


def test_tail_reemits_records_of_every_process_through_the_root_handler(tmp_path):
    """A child process configured by the file's dictConfig (as vLLM does in its engine
    processes) logs to the engine log; the tail shows it here, filtered."""
    path = tmp_path / "engine.log"
    path.touch()
    config = tmp_path / "logging.json"
    config.write_text(json.dumps(engine_logging_config(path, level="INFO")))
    stream = io.StringIO()
    setup_logging(LoggingSettings(), stream=stream)
    tail = EngineLogTail(path, poll_s=0.02)
    seen: list[str] = []
    tail.listeners.append(lambda r: seen.append(r.getMessage()))
    tail.start()
    child = (
        "import json, logging, logging.config, sys\n"
        f"logging.config.dictConfig(json.load(open({str(config)!r})))\n"
        "v = logging.getLogger('vllm.worker')\n"
        "v.warning('Triton is not installed. triton-cpu is expected on x86 CPUs.')\n"
        "v.info('Loading weights took 0.25 seconds')\n"
        "v.info('chatter')\n"
        "logging.getLogger('transformers.x').warning('a transformers warning that matters')\n"
    )
    subprocess.run([sys.executable, "-c", child], cwd=REPO, check=True, env={**os.environ})
    deadline = time.monotonic() + 10
    while len(seen) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    tail.stop()
    out = stream.getvalue()
    assert len(seen) == 4  # every record reaches the listeners (progress)
    assert "weight load: 0.25 s" in out and "a transformers warning that matters" in out
    assert "Triton" not in out and "chatter" not in out
    # The file keeps everything, one JSON object per line.
    names = [json.loads(line)["msg"] for line in path.read_text().splitlines()]
    assert "chatter" in names and any("Triton" in n for n in names)


def test_route_sets_the_environment_vllm_and_its_children_read(tmp_path, monkeypatch):
    # A copy: nothing set here may reach the session's engine.
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_LOGGING_CONFIG_PATH", "TORCH_LOGS")}
    monkeypatch.setattr(os, "environ", env)
    routing = engine_logs.route_engine_logs(tmp_path, show_all=False, debug=False)
    try:
        config = json.loads(Path(os.environ["VLLM_LOGGING_CONFIG_PATH"]).read_text())
        assert config["loggers"]["vllm"]["handlers"] == ["nanovl_engine_file"]
        assert config["handlers"]["nanovl_engine_file"]["filename"] == str(routing.path)
        assert os.environ["TORCH_LOGS"] == "-all" and os.environ["TORCH_CPP_LOG_LEVEL"] == "ERROR"
        assert os.environ[engine_logs.CHILD_CONFIG_ENV] == os.environ["VLLM_LOGGING_CONFIG_PATH"]
    finally:
        routing.stop()
        logging.captureWarnings(False)
    # An operator's own vLLM logging config wins, untouched.
    env["VLLM_LOGGING_CONFIG_PATH"] = "/their/config.json"
    theirs = engine_logs.route_engine_logs(tmp_path, show_all=False, debug=False)
    assert theirs.tail is None and theirs.notes


def test_an_engine_process_routes_its_logs_before_it_imports_vllm(tmp_path):
    """multiprocessing's spawn imports the server's main script (hence nanovl.cli) first
    in every engine process: that import applies the engine logging config."""
    path = tmp_path / "engine.log"
    config = tmp_path / "logging.json"
    config.write_text(json.dumps(engine_logging_config(path, level="INFO")))
    child = (
        "import logging, warnings\n"
        "import nanovl.cli\n"
        "logging.getLogger('vllm.triton_utils.importing').warning('Triton is installed, but no CPU backend')\n"
        "warnings.warn('a library warning')\n"
    )
    env = {**os.environ, engine_logs.CHILD_CONFIG_ENV: str(config)}
    proc = subprocess.run([sys.executable, "-c", child], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # nothing on the terminal
    messages = [json.loads(line)["msg"] for line in path.read_text().splitlines()]
    assert any("Triton" in m for m in messages) and any("a library warning" in m for m in messages)
