"""The engine's logs (vLLM, transformers, torch, Python warnings) from every process, in
the operator's view: what matters to this deployment, in one line each; the rest on disk.

vLLM's engine core and worker are child processes that inherit stderr, so filtering in
the server process alone does not reach them. vLLM applies the logging config file named
by ``VLLM_LOGGING_CONFIG_PATH`` in every process it starts (``vllm/logger.py``); nanovl
writes one that sends the ``vllm``, ``transformers``, ``torch`` and ``py.warnings``
loggers of every process to one JSON-lines file, the **full engine log**, kept on disk.
The server process tails that file and re-emits each record through its own handler,
where :class:`EngineLogFilter` decides what the operator sees:

- records of nanovl's own loggers: always;
- known noise on this deployment (Triton and CUDA notices on a CPU host, settings nanovl
  chose on purpose, a tokenizer warning about vLLM's own dummy inputs): dropped;
- start-up milestones (weight load, engine-core init, KV cache size): one INFO line each;
- warnings that matter here: kept, explained in one line; any other warning: kept as is;
- other INFO/DEBUG chatter: dropped.

``--show-engine-logs`` (or ``--log-level DEBUG``) shows every record unfiltered. Python
warnings go to the file too; what the children print outside Python's logging is silenced
at its source in quiet mode (``TORCH_CPP_LOG_LEVEL``, ``TORCH_LOGS``), never when showing all.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

# Loggers whose records count as the engine's (every other non-nanovl logger is treated
# the same way by the filter: a third party).
ENGINE_LOGGERS: Final = ("vllm", "transformers", "torch", "py.warnings")
NANOVL_LOGGERS: Final = ("nanovl", "service", "model", "profiling", "loadtest", "bench", "__main__")

# Where the engine log file is named for the operator (e.g. in the start-up summary).
ENGINE_LOG_ENV: Final = "NANOVL_ENGINE_LOG"
# The logging config an engine process applies before it imports vLLM (configure_engine_child).
CHILD_CONFIG_ENV: Final = "NANOVL_ENGINE_LOGGING_CONFIG"

Action = Literal["drop", "rewrite"]


@dataclass(frozen=True)
class Rule:
    """A record of ``logger`` (a prefix) whose message matches ``pattern`` is dropped or
    rewritten to ``text`` (``str.format`` with the match's named groups) at ``level``."""

    logger: str
    pattern: re.Pattern[str]
    action: Action
    text: str = ""
    level: int = logging.INFO

    def matches(self, name: str, message: str) -> re.Match[str] | None:
        if not (name == self.logger or name.startswith(self.logger + ".")):
            return None
        return self.pattern.search(message)


def _drop(logger: str, pattern: str) -> Rule:
    return Rule(logger, re.compile(pattern), "drop")


def _say(logger: str, pattern: str, text: str, level: int = logging.INFO) -> Rule:
    return Rule(logger, re.compile(pattern), "rewrite", text, level)


# First match wins. Each drop says why it is noise here.
RULES: Final[tuple[Rule, ...]] = (
    # Triton and CUDA: not used on a CPU host (vLLM falls back by itself).
    _drop("vllm", r"^Triton is installed, but doesn't include CPU backend"),
    _drop("vllm", r"^Triton is not installed"),
    _drop("vllm", r"^Model Runner V2 requires Triton"),
    _drop("torch", r"^No CUDA runtime is found"),
    # Consequences of nanovl's CPU defaults (--enforce-eager), which the operator can override.
    _drop("vllm", r"^Enforce eager set, disabling torch.compile"),
    _drop("vllm", r"^Inductor compilation was disabled by user settings"),
    # nanovl gives the worker every core on purpose (VLLM_CPU_NUM_OF_RESERVED_CPU=0).
    _drop("vllm", r"^VLLM_CPU_NUM_OF_RESERVED_CPU is less than the minimum"),
    _drop("vllm", r"^CPU backend doesn't allow to use `torch.set_num_threads`"),
    _drop("vllm", r"^OMP_NUM_THREADS=\d+ is set; leaving Torch threads"),
    # vLLM's own multimodal warm-up tokenizes a dummy prompt of the longest video: not a
    # user's prompt (a user's over-long prompt is answered OUT_OF_RANGE by nanovl).
    _drop("transformers", r"^Token indices sequence length is longer than the specified maximum"),
    # The Profiling service builds vLLM configs to plan budgets (GetBudget, PlanBudget);
    # a plan for a text-only mix makes vLLM say so about that plan, not about the server.
    _drop("vllm", r"^All non-text modalities supported by the model have been explicitly disabled"),
    # Library deprecation and usage warnings: for the libraries' developers.
    _drop("py.warnings", r""),
    # Start-up milestones from the engine processes, one line each.
    _say("vllm", r"^Loading weights took (?P<s>[\d.]+) seconds", "weight load: {s} s"),
    _say(
        "vllm",
        r"^init engine \(profile, create kv cache, warmup model\) took (?P<s>[\d.]+) s",
        "engine core init (memory profile, KV cache, model warm-up): {s} s",
    ),
    _say("vllm", r"^CPU KV cache size: (?P<n>[\d,]+) tokens", "KV cache: {n} tokens"),
    _say(
        "vllm",
        r"^Multi-modal warmup completed in (?P<s>[\d.]+)s",
        "vLLM's multimodal processor warm-up (runs beside the engine start): {s} s",
    ),
    # vLLM's shutdown stopping engine processes that were still exiting: routine on a busy host.
    _say(
        "vllm",
        r"^\[shutdown\] (Process manager: )?force killing (remaining|sub) process",
        "shutdown: vLLM stopped its engine processes, which were still exiting after vLLM's grace period",
    ),
    # Warnings that matter here, explained.
    _say(
        "vllm",
        r"^This model does not officially support disabling chunked prefill",
        "chunked prefill is off (nanovl's CPU default: a seeded request whose prompt is chunked crashes the "
        "CPU engine); vLLM's caution about it does not apply to this setting",
    ),
    _say(
        "vllm",
        r"^(libtcmalloc|libiomp) is not found in LD_PRELOAD",
        "CPU speed: vLLM runs faster with tcmalloc and Intel OpenMP preloaded (LD_PRELOAD); optional, "
        "see vLLM's CPU installation guide",
    ),
)


def _is_nanovl(name: str) -> bool:
    return name == "root" or any(name == p or name.startswith(p + ".") for p in NANOVL_LOGGERS)


class EngineLogFilter(logging.Filter):
    """Decides which third-party records reach the operator (see the module docstring).
    Rewrites matched records in place (message, level); a rewritten record is logged once
    per distinct text, so the same notice from several processes shows once."""

    def __init__(self, show_all: bool = False) -> None:
        super().__init__()
        self.show_all = show_all
        self._said: set[str] = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.show_all or _is_nanovl(record.name):
            return True
        message = record.getMessage()
        for rule in RULES:
            match = rule.matches(record.name, message)
            if match is None:
                continue
            if rule.action == "drop":
                return False
            text = rule.text.format(**match.groupdict())
            with self._lock:
                if text in self._said:
                    return False
                self._said.add(text)
            record.msg, record.args = text, ()
            record.name = "nanovl.engine"  # a nanovl line now; the original stays in the file
            record.levelno, record.levelname = rule.level, logging.getLevelName(rule.level)
            record.exc_info = record.exc_text = None
            return True
        return record.levelno >= logging.WARNING


class JsonLinesFormatter(logging.Formatter):
    """One record per line for the engine log file (what :class:`EngineLogTail` reads)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "created": record.created,
            "levelno": record.levelno,
            "name": record.name,
            "msg": record.getMessage(),
            "process": getattr(record, "vllm_process_name", None) or record.processName,
            "pid": record.process,
        }
        if record.exc_info:
            entry["exc_text"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_text"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def engine_logging_config(path: Path, *, level: str) -> dict:
    """The ``dictConfig`` vLLM applies in every process: the engine's loggers to ``path``."""
    handler = "nanovl_engine_file"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"nanovl_jsonl": {"()": f"{__name__}.JsonLinesFormatter"}},
        "handlers": {
            handler: {
                "class": "logging.FileHandler",
                "filename": str(path),
                "mode": "a",
                "encoding": "utf-8",
                "formatter": "nanovl_jsonl",
            }
        },
        "loggers": {
            "vllm": {"handlers": [handler], "level": level, "propagate": False},
            "transformers": {"handlers": [handler], "level": "WARNING", "propagate": False},
            "torch": {"handlers": [handler], "level": "WARNING", "propagate": False},
            "py.warnings": {"handlers": [handler], "level": "WARNING", "propagate": False},
        },
    }


def quiet_child_environment() -> dict[str, str]:
    """What the engine processes print outside Python's logging, silenced at the source."""
    return {
        "TORCH_CPP_LOG_LEVEL": "ERROR",  # c10 warnings (e.g. NUMA binding notices)
        "TORCH_LOGS": "-all",  # torch's own handlers (e.g. "No CUDA runtime is found")
    }


def configure_engine_child() -> None:
    """In an engine process (vLLM's engine core, its worker): send the engine's loggers
    and Python warnings to the engine log before vLLM is imported, so that what vLLM logs
    on import is routed too (vLLM applies the same config itself, but only later).
    ``nanovl.cli`` calls this on import: multiprocessing's spawn re-imports the server's
    main script (the ``nanovl`` command) in every child before anything else."""
    import logging.config

    path = os.environ.get(CHILD_CONFIG_ENV)
    if not path:
        return
    try:
        logging.config.dictConfig(json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError):
        return  # vLLM applies it later anyway
    logging.captureWarnings(True)


class EngineLogTail(threading.Thread):
    """Reads the engine log file as it grows and hands each record to the server
    process's root handlers (after ``listeners`` have seen it)."""

    def __init__(self, path: Path, *, poll_s: float = 0.1) -> None:
        super().__init__(name="nanovl-engine-logs", daemon=True)
        self.path = path
        self.poll_s = poll_s
        self.listeners: list[Callable[[logging.LogRecord], None]] = []
        self._stop_event = threading.Event()
        self._offset = path.stat().st_size if path.exists() else 0
        self._partial = b""

    def run(self) -> None:
        while not self._stop_event.is_set():
            self._drain()
            self._stop_event.wait(self.poll_s)
        self._drain()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)

    def _drain(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        if not data:
            return
        self._offset += len(data)
        data, self._partial = self._partial + data, b""
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next read
        for line in lines:
            if line.strip():
                self._emit(line)

    def _emit(self, line: bytes) -> None:
        try:
            entry = json.loads(line)
            record = logging.makeLogRecord(
                {
                    "name": entry["name"],
                    "levelno": entry["levelno"],
                    "levelname": logging.getLevelName(entry["levelno"]),
                    "msg": entry["msg"],
                    "created": entry["created"],
                    "msecs": (entry["created"] % 1) * 1000,
                    "process": entry.get("pid"),
                    "processName": entry.get("process"),
                    "exc_text": entry.get("exc_text"),
                }
            )
        except (ValueError, KeyError, TypeError):
            text = line.decode("utf-8", "replace")
            record = logging.makeLogRecord({"name": "vllm", "levelno": logging.INFO, "levelname": "INFO", "msg": text})
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:  # a progress display must never stop the logs
                pass
        # The root's handlers only: the engine loggers themselves write the file.
        logging.getLogger().handle(record)


@dataclass
class EngineLogRouting:
    """The engine log's file and tail; ``None`` tail when the operator routes vLLM's logs."""

    path: Path | None
    tail: EngineLogTail | None
    show_all: bool
    notes: list[str] = field(default_factory=list)
    config_path: Path | None = None

    def stop(self) -> None:
        if self.tail is not None:
            self.tail.stop()
        if self.config_path is not None:  # read by every engine process at its start
            self.config_path.unlink(missing_ok=True)


def route_engine_logs(log_dir: Path, *, show_all: bool, debug: bool) -> EngineLogRouting:
    """Send every engine process's logs through the file and the tail. Call before vLLM is
    imported and before the engine starts (it sets the environment both read)."""
    if os.environ.get("VLLM_LOGGING_CONFIG_PATH"):
        note = "VLLM_LOGGING_CONFIG_PATH is set: vLLM's logs follow that file, unfiltered"
        return EngineLogRouting(None, None, show_all, [note])
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = log_dir / f"engine-{stamp}-{os.getpid()}.log"
    config_path = log_dir / f"engine-logging-{os.getpid()}.json"
    config_path.write_text(json.dumps(engine_logging_config(path, level="DEBUG" if debug else "INFO"), indent=1))
    path.touch()
    os.environ["VLLM_CONFIGURE_LOGGING"] = "1"
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(config_path)
    os.environ[ENGINE_LOG_ENV] = str(path)
    os.environ[CHILD_CONFIG_ENV] = str(config_path)
    if not show_all:
        for key, value in quiet_child_environment().items():
            os.environ.setdefault(key, value)
    logging.captureWarnings(True)
    tail = EngineLogTail(path)
    tail.start()
    return EngineLogRouting(path, tail, show_all, config_path=config_path)


__all__ = [
    "ENGINE_LOGGERS",
    "RULES",
    "EngineLogFilter",
    "EngineLogRouting",
    "EngineLogTail",
    "JsonLinesFormatter",
    "configure_engine_child",
    "engine_logging_config",
    "quiet_child_environment",
    "route_engine_logs",
]
