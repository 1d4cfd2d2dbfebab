"""``nanovl serve`` as an operator runs it: mistakes end in one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _nanovl(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "nanovl.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _imports_after(code: str) -> set[str]:
    """Which of torch, vllm, transformers a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(eval(out.stdout.strip().splitlines()[-1]))


def test_serve_help_lists_nanovl_flags_with_defaults_without_importing_vllm() -> None:
    assert _imports_after("from nanovl.cli import serve; serve.build_parser().format_help()") == set()
    proc = _nanovl("serve", "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    # nanovl's own flags come first, each with its default, then the pointer to vLLM's.
    assert text.index("--port") < text.index("engine flags:")
    assert "(default: 50051)" in text and "(default: 127.0.0.1)" in text
    assert "--help-engine" in text and "--max-model-len" in text  # named in the epilog
    assert "--kv-cache-dtype" not in text  # vLLM's ~300 lines stay behind --help-engine
    # The limits error messages tell operators to raise are flags, defaults shown.
    for flag, default in [
        ("--max-video-frames", "256"),
        ("--max-image-pixels", "40000000"),
        ("--max-audio-seconds", "600.0"),
        ("--upload-idle-timeout-s", "30.0"),
        ("--max-concurrent-uploads", "64"),
        ("--drain-grace-s", "12.0"),
        ("--engine-shutdown-timeout-s", "5.0"),
        ("--max-uploads-per-peer", "16"),
        ("--min-upload-bytes-per-s", "65536"),
        ("--max-structured-output-bytes", "131072"),
        ("--structured-output-compile-timeout-s", "2.0"),
        ("--max-list-string-bytes", "4096"),
        ("--max-list-bytes", "131072"),
        ("--max-video-pixels-per-byte", "4096"),
    ]:
        described = " ".join(text.rsplit(f"  {flag} ", 1)[1].split("\n  -", 1)[0].split())  # its help, unwrapped
        assert f"(default: {default})" in described, (flag, described)


def test_serve_help_engine_lists_vllms_flags(capsys) -> None:
    from nanovl.cli import serve

    with pytest.raises(SystemExit) as done:
        serve.parse_args(["--help-engine"])  # exits before logging starts or anything is checked
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--max-model-len" in out and "--limit-mm-per-prompt" in out


def test_serve_operator_errors_exit_2_in_one_line(tmp_path: Path) -> None:
    # Two `nanovl serve` processes that each import vLLM (seconds): run side by side.
    (tmp_path / "config.json").write_text("{}")
    commands = {
        "bad checkpoint": ["serve", "--model", str(tmp_path), "--metrics-port", "0"],
        "unknown flag": ["serve", "--no-such-flag", "1"],
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "nanovl.cli", *argv],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, argv in commands.items()
    }
    outputs = {name: p.communicate(timeout=300) for name, p in procs.items()}
    done = {name: (procs[name].returncode, *outputs[name]) for name in procs}

    rc, _, err = done["bad checkpoint"]
    assert rc == 2 and "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("nanovl serve: error: ") and str(tmp_path) in last, last

    rc, _, err = done["unknown flag"]
    assert rc == 2 and "--no-such-flag" in err and "Traceback" not in err, err[-2000:]


def test_client_commands_import_no_engine_code() -> None:
    loaded = _imports_after(
        "import nanovl\nfrom nanovl import AsyncInferenceClient, InferenceClient, Part, Sampling\n"
        "from nanovl.cli import build_parser\n"
        "for c in ('generate', 'profile', 'loadtest', 'call'): build_parser(c)"
    )
    assert loaded == set()
    # `nanovl call` all the way through reflection (it fails to connect here, after the imports).
    ran = _imports_after(
        "from nanovl.cli import main\nimport nanovl.cli.call\n"
        "main(['call', 'list', '--target', '127.0.0.1:1', '--timeout', '2'])"
    )
    assert ran == set()


def test_generate_reports_a_missing_file_at_once_without_connecting() -> None:
    import time

    t0 = time.monotonic()
    # Port 1 refuses connections: had it connected, the error would be UNAVAILABLE.
    proc = _nanovl("generate", "--target", "127.0.0.1:1", "--image", "/no/such/photo.png", "describe")
    assert proc.returncode == 2, proc.stderr
    assert "/no/such/photo.png" in proc.stderr and "UNAVAILABLE" not in proc.stderr
    assert time.monotonic() - t0 < 30


def test_generate_prints_the_status_once() -> None:
    proc = _nanovl("generate", "--target", "127.0.0.1:1", "--timeout", "2", "hello")
    assert proc.returncode == 1
    (line,) = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert line.startswith("nanovl generate: error: UNAVAILABLE: ") and line.count("UNAVAILABLE") == 1, line


def test_generated_text_is_escaped_for_a_terminal() -> None:
    from nanovl.cli.common import escape_nonprintable

    assert escape_nonprintable("a\x02b\x0e\x0c\n\tc") == "a\\x02b\\x0e\\x0c\n\tc"
    assert escape_nonprintable("\x1b[2J\x7f\u009b\u200b\u2028") == "\\x1b[2J\\x7f\\x9b\\u200b\\u2028"
    assert escape_nonprintable("héllo 中文 🙂") == "héllo 中文 🙂"


def test_client_commands_honour_nanovl_target() -> None:
    # Profiling lives on the admin port: `nanovl profile` reads NANOVL_ADMIN_TARGET.
    env = {"NANOVL_TARGET": "127.0.0.1:1", "NANOVL_ADMIN_TARGET": "127.0.0.1:2"}
    gen = _nanovl("generate", "--timeout", "2", "hello", env=env)
    assert gen.returncode == 1 and "127.0.0.1:1" in gen.stderr, gen.stderr
    budget = _nanovl("profile", "budget", "--timeout", "2", env=env)
    assert budget.returncode != 0 and "127.0.0.1:2" in budget.stderr, budget.stderr
    lt = _nanovl(
        "loadtest",
        "--requests",
        "1",
        "--concurrency",
        "1",
        "--no-progress",
        "--connect-timeout",
        "1",
        "--out",
        "/dev/null",
        env=env,
    )
    assert lt.returncode == 2 and "127.0.0.1:1" in lt.stderr + lt.stdout, lt.stderr[-2000:]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--audio-in-video"], "--audio-in-video"),
        (["--no-audio-in-video"], "--audio-in-video"),
        (["--num-frames", "4", "--fps", "2"], "--num-frames, --fps"),
        (["--max-frames", "8", "--image", __file__], "--max-frames"),
    ],
    ids=["audio-in-video", "no-audio-in-video", "sampling", "with-an-image"],
)
def test_generate_refuses_video_flags_without_a_video(flags, named, capsys) -> None:
    """A per-video flag without --video is a usage error (exit 2, argparse's error line),
    before anything connects, not a flag silently ignored (verify-14c D7)."""
    from nanovl.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--target", "127.0.0.1:1", *flags, "describe"])
    assert exit_.value.code == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert line.startswith("nanovl generate: error: ") and named in line and "--video FILE" in line, line
