"""Process logging where every record carries the current ``trace_id`` / ``span_id``.

A handler-level ``logging.Filter`` adds the ids (hex; empty strings outside a span), so
any logger that propagates to the root gets them without a global record factory
(``opentelemetry-instrumentation-logging`` is not a dependency). vLLM's ``vllm`` logger
keeps its own handler (``propagate=False``) and is left alone.

The current span lives in a contextvar: code running in a thread pool sees it only if
the context was copied (``asyncio.to_thread`` does; ``loop.run_in_executor`` does not).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, TextIO, get_args

from opentelemetry import trace
from opentelemetry.trace import format_span_id, format_trace_id

LogFormat = Literal["text", "json"]
_HANDLER_NAME: Final = "nanovl"


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "INFO"
    format: LogFormat = "text"
    # Every record of vLLM, transformers and torch, unfiltered (engine_logs.EngineLogFilter).
    show_engine_logs: bool = False

    @property
    def show_all(self) -> bool:
        return self.show_engine_logs or self.level == "DEBUG"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LoggingSettings:
        # vLLM's own --log-level (when its flags are on the same parser) leaves the
        # attribute unset unless given.
        return cls(
            level=str(getattr(args, "log_level", None) or "INFO").upper(),
            format=args.log_format,
            show_engine_logs=bool(getattr(args, "show_engine_logs", False)),
        )


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logging")
    if "--log-level" not in parser._option_string_actions:  # vLLM's parser has its own; share it
        group.add_argument(
            "--log-level", default="INFO", help="root log level (DEBUG, INFO, WARNING, ERROR). Default INFO."
        )
    group.add_argument(
        "--log-format",
        default="text",
        choices=get_args(LogFormat),
        help="text (human-readable) or json (one object per line, for log shippers). Default text.",
    )
    group.add_argument(
        "--show-engine-logs",
        action="store_true",
        help="show every log line of vLLM, transformers and torch, unfiltered (also with --log-level DEBUG). "
        "By default only what matters to this deployment is shown, one line each; the full engine log "
        "is kept in a file named at start-up.",
    )


class TraceContextFilter(logging.Filter):
    """Sets ``record.trace_id`` and ``record.span_id`` from the current span."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = format_trace_id(ctx.trace_id)
            record.span_id = format_span_id(ctx.span_id)
        else:
            record.trace_id = record.span_id = ""
        return True


class TextFormatter(logging.Formatter):
    """``2026-01-01 12:00:00,123 INFO    nanovl.x: message [trace_id=… span_id=…]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        trace_id = getattr(record, "trace_id", "")
        if not trace_id:
            return line
        # The ids go on the first line so tracebacks stay readable below it.
        first, sep, rest = line.partition("\n")
        return f"{first} [trace_id={trace_id} span_id={getattr(record, 'span_id', '')}]{sep}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, trace_id, span_id[, exception]."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": getattr(record, "trace_id", ""),
            "span_id": getattr(record, "span_id", ""),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


_live_console = None  # a rich Console showing a live display (set_live_console)


def set_live_console(console: object | None) -> None:
    """While a rich live display (a start-up spinner) runs on ``console``, log lines are
    printed through it, above the display, instead of through it."""
    global _live_console
    _live_console = console


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at the time (or through the live console)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        console = _live_console
        if console is None:
            super().emit(record)
            return
        try:
            line = self.format(record)
            console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)  # type: ignore[attr-defined]
        except Exception:
            self.handleError(record)


def setup_logging(settings: LoggingSettings, *, stream: TextIO | None = None) -> logging.Handler:
    """Install nanovl's handler on the root logger (replacing one a previous call
    installed) and set the root level. Third-party records pass
    ``engine_logs.EngineLogFilter`` (all of them with ``settings.show_all``). Returns the
    handler."""
    from profiling.telemetry.engine_logs import EngineLogFilter

    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(TraceContextFilter())
    handler.addFilter(EngineLogFilter(show_all=settings.show_all))
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    return handler
