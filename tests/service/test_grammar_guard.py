"""Structured-output limits (service.grammar_guard), the upload budget's per-client share and
readiness (service.lifecycle), and the bounded exit (service.process_tree): pure logic, no
engine. The end-to-end halves are in test_isolation.py."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from nanovl.cli.serve import EXIT_MARGIN_S
from nanovl.errors import ResourceExhausted
from service.grammar_guard import GrammarLimits, check_size, constraint_size
from service.lifecycle import SERVING, Lifecycle
from service.process_tree import ProcessTree
from service.settings import ServerSettings

REPO = Path(__file__).resolve().parents[2]


def _params(**kw):
    from vllm.sampling_params import StructuredOutputsParams

    return StructuredOutputsParams(**kw)


def _hostile(rng: random.Random, limits: GrammarLimits):
    """A constraint just over one of the limits, of a random kind."""
    over = limits.max_bytes + rng.randint(1, 1000)
    kind = rng.choice(["json", "regex", "grammar", "choice_bytes", "choice_count", "whitespace"])
    if kind == "json":
        n = over // 6 + 1
        return "--max-structured-output-bytes", _params(json=json.dumps({"enum": [f"{i:03d}" for i in range(n)]}))
    if kind == "regex":
        return "--max-structured-output-bytes", _params(regex="a" * over)
    if kind == "grammar":
        return "--max-structured-output-bytes", _params(grammar='root ::= "' + "b" * over + '"')
    if kind == "choice_bytes":
        return "--max-structured-output-bytes", _params(choice=["c" * (over // 2), "d" * (over // 2 + 1)])
    if kind == "choice_count":
        return "--max-structured-output-choices", _params(choice=[str(i) for i in range(limits.max_choices + 1)])
    return "--max-structured-output-bytes", _params(json="{}", whitespace_pattern=" " * over)


@pytest.mark.parametrize("seed", range(12))
def test_constraints_over_a_limit_are_refused_naming_it(seed):
    rng = random.Random(seed)
    limits = GrammarLimits(max_bytes=rng.choice([64, 1000, 4096]), max_choices=rng.choice([2, 10, 100]))
    flag, params = _hostile(rng, limits)
    with pytest.raises(ResourceExhausted) as err:
        check_size(params, limits)
    assert flag in err.value.message


def test_constraints_at_the_limits_pass():
    limits = GrammarLimits(max_bytes=100, max_choices=3)
    check_size(_params(regex="a" * 100), limits)
    check_size(_params(choice=["a", "b", "c"]), limits)
    check_size(_params(json_object=True), limits)
    assert constraint_size(_params(choice=["ab", "ü"])) == ("choice", 4, 2)
    assert constraint_size(_params(json={"type": "object"}))[1] == len('{"type": "object"}')


def test_default_shutdown_fits_kubernetes_30_s_window():
    d = ServerSettings()
    total = d.drain_readiness_grace_s + d.drain_grace_s + d.engine_shutdown_timeout_s + EXIT_MARGIN_S
    assert total <= 25, total  # terminationGracePeriodSeconds defaults to 30: 5 s to spare


async def test_one_client_takes_at_most_its_share_of_the_upload_budget():
    changes = []
    lc = Lifecycle(lambda: changes.append(1), max_uploading=4, max_uploading_per_peer=2)
    lc.set_state(SERVING)
    with lc.upload("ipv4:10.0.0.1"), lc.upload("ipv4:10.0.0.1"):
        with pytest.raises(ResourceExhausted) as err:
            with lc.upload("ipv4:10.0.0.1"):
                pass
        assert "--max-uploads-per-peer" in err.value.message
        assert lc.ready  # one client cannot take the replica out of rotation
        with lc.upload("ipv4:10.0.0.2"), lc.upload("ipv4:10.0.0.3"):
            assert not lc.ready and "--max-concurrent-uploads" in (lc.not_ready_reason or "")
            with pytest.raises(ResourceExhausted) as err:
                with lc.upload("ipv4:10.0.0.4"):
                    pass
            assert "--max-concurrent-uploads" in err.value.message
        assert lc.ready
    assert lc.uploading == 0 and lc.uploading_by_peer == {}


def test_process_tree_kills_what_outlives_the_bound():
    """exit_within: a process whose shutdown hangs exits with its status, its children and a
    grandchild whose parent died first (a worker after its engine core was killed) killed
    and gone by the time it has exited (verify-10b: a worker outlived the server 10-20 s)."""
    script = textwrap.dedent(
        f"""
        import subprocess, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from service.process_tree import ProcessTree, exit_within
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        core = subprocess.Popen([sys.executable, "-c",
            "import subprocess, sys, time; "
            "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            "print(w.pid, flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
        worker = int(core.stdout.readline())
        tree = ProcessTree()
        core.kill(); core.wait()  # the engine core dies: its worker is re-parented away
        print(child.pid, worker, flush=True)
        exit_within(0.5, lambda: 3, tree)
        time.sleep(120)  # a shutdown that hangs
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert proc.wait(60) == 3
    # Gone at the moment the server is (a zombie awaits its new parent's reaping).
    left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, left


def test_the_engine_gets_what_is_left_of_the_bound():
    from nanovl.cli.serve import EXIT_MARGIN_S, _engine_share

    assert _engine_share(5.0, None) == 5.0  # no bound armed
    assert _engine_share(5.0, 20.0) == 5.0
    assert _engine_share(5.0, EXIT_MARGIN_S + 2.0) == 2.0  # the drain ran late
    assert _engine_share(5.0, 1.0) == 0.5


def test_process_tree_spares_the_resource_tracker():
    tree = ProcessTree()

    def command(p: psutil.Process) -> str:
        try:
            return " ".join(p.cmdline())
        except psutil.Error:  # exited (a zombie until reaped) since the snapshot
            return ""

    assert all("resource_tracker" not in command(p) for p in tree.processes)


async def test_settled_waits_for_the_readiness_update():
    order = []

    async def update():
        await asyncio.sleep(0.05)
        order.append("readiness")

    lc = Lifecycle(lambda: asyncio.get_running_loop().create_task(update()))
    lc.mark_engine_dead()
    await lc.settled()
    order.append("status")
    assert order == ["readiness", "status"]


def test_a_bounded_shutdown_exits_with_its_own_status_not_sigalrm():
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from service.process_tree import ProcessTree, exit_if_bounded, exit_within
        exit_within(30, lambda: 9, ProcessTree())
        exit_if_bounded(3)
        """
    )
    assert subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=60).returncode == 3
