"""``nanovl serve``'s start-up report: a line per phase with its duration, progress while
a long phase runs, the step taken from the engine's own log records."""

from __future__ import annotations

import logging
import time

from nanovl.cli import startup
from nanovl.cli.startup import StartupReport


def _record(msg: str) -> logging.LogRecord:
    return logging.makeLogRecord({"name": "vllm.x", "levelno": logging.INFO, "msg": msg})


def test_each_phase_logs_its_duration_and_the_summary_adds_them(caplog):
    caplog.set_level(logging.INFO, logger="nanovl.startup")
    report = StartupReport(live=False)
    with report.phase("checkpoint", progress=False) as p:
        p.detail = "embedded tiny checkpoint"
    with report.phase("engine start", progress=False):
        time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("checkpoint: 0.0 s — embedded tiny checkpoint")
    assert lines[1].startswith("engine start: 0.")
    assert set(report.durations) == {"checkpoint", "engine start"}
    assert "(checkpoint 0.0 s, engine start 0." in report.summary()


def test_engine_records_advance_the_step_of_the_running_phase():
    report = StartupReport(live=False)
    report.on_engine_record(_record("Starting to load model /x"))  # no phase: ignored
    with report.phase("engine start", "starting", progress=False) as p:
        report.on_engine_record(_record("Resolved architecture: NemotronH_Nano_VL_V2"))
        assert p.step.startswith("starting the engine core process")
        report.on_engine_record(_record("Starting to load model /x..."))
        assert p.step == "loading weights"


def test_without_a_terminal_a_long_phase_says_it_is_still_running(caplog, monkeypatch):
    monkeypatch.setattr(startup, "PLAIN_EVERY_S", 0.05)
    caplog.set_level(logging.INFO, logger="nanovl.startup")
    report = StartupReport(live=False)

    def still_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "still running" in r.getMessage()]

    with report.phase("engine start", "loading weights"):
        # Until the reporter's thread has spoken (it may be slow to be scheduled on a busy machine).
        deadline = time.monotonic() + 60
        while not still_lines() and time.monotonic() < deadline:
            time.sleep(0.05)
    still = still_lines()
    assert still and still[0].startswith("engine start: still running after") and "(loading weights)" in still[0]


def test_an_exception_ends_a_phase_without_its_line(caplog):
    caplog.set_level(logging.INFO, logger="nanovl.startup")
    report = StartupReport(live=False)
    try:
        with report.phase("checkpoint", progress=False):
            raise ValueError("bad checkpoint")
    except ValueError:
        pass
    assert not [r for r in caplog.records if r.getMessage().startswith("checkpoint:")]
