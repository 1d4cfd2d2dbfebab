"""The per-request chat-template sandbox (no engine): renders in a child of the fork
server, stops a template past its time limit, and leaves no process behind on stop."""

from __future__ import annotations

import asyncio

import psutil
import pytest

from model.prompt import TemplateJob
from nanovl.errors import DeadlineExceeded, NanovlError
from service.template_sandbox import TemplateSandbox


def _job(template: str) -> TemplateJob:
    return TemplateJob(
        template=template,
        conversation=[{"role": "user", "content": "hi"}],
        add_generation_prompt=True,
        tools=None,
        documents=None,
        variables={},
    )


def _fork_server() -> psutil.Process:
    # The same private singleton the sandbox reads: this test breaks if Python changes it.
    from multiprocessing import forkserver

    return psutil.Process(forkserver._forkserver._forkserver_pid)


def _running(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.timeout(120)
async def test_renders_then_stop_leaves_no_process_behind():
    sandbox = TemplateSandbox(timeout_s=1.0)
    await asyncio.to_thread(sandbox.start)
    server = [_fork_server()]
    assert server[0].ppid() == psutil.Process().pid
    rendered = await sandbox.render(_job("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"))
    assert rendered == "<user>hi"

    # A render still running when the server stops (the drain cut its call) dies with it.
    loop_forever = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    pending = asyncio.ensure_future(sandbox.render(_job(loop_forever)))
    for _ in range(200):
        renders = server[0].children()
        if renders:
            break
        await asyncio.sleep(0.05)
    assert renders, "the looping template never started"

    sandbox.stop()
    # SIGKILL: gone at once, not after the fork server's interpreter shutdown (seconds).
    # Polled, not waited: reaping the fork server is multiprocessing's job (ensure_running).
    for _ in range(50):
        if not _running(server + renders):
            break
        await asyncio.sleep(0.01)
    assert not _running(server + renders), [p.pid for p in _running(server + renders)]
    with pytest.raises(NanovlError):  # its pipe broke: the call ends instead of waiting out its limit
        await asyncio.wait_for(pending, 10)


@pytest.mark.timeout(120)
async def test_a_template_past_its_time_limit_is_stopped():
    sandbox = TemplateSandbox(timeout_s=2.0)
    await asyncio.to_thread(sandbox.start)
    try:
        with pytest.raises(DeadlineExceeded, match="--chat-template-timeout-s"):
            await sandbox.render(
                _job("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
            )
    finally:
        sandbox.stop()


def test_a_render_starved_of_cpu_is_told_the_server_is_busy():
    """verify-10e: a harmless template timed out on a saturated machine and was told only
    to "simplify the template". Stopped with little CPU used, the message says the server
    is busy and to retry; with its CPU share used, to simplify (the status is the same)."""
    from service.template_sandbox import timed_out

    starved = timed_out(2.0, 0.03).message
    assert "having had only 0.03 s of CPU: the server is busy; retry with backoff" in starved
    for busy in (0.2, 1.9, None):  # at least its share, or unknown (the process was gone)
        message = timed_out(2.0, busy).message
        assert message.endswith("and was stopped; simplify the template") and "busy" not in message


_ORPHAN_SCRIPT = """
import asyncio, multiprocessing.forkserver as fs, sys
from model.prompt import TemplateJob
from service.template_sandbox import TemplateSandbox

async def main():
    sandbox = TemplateSandbox(timeout_s=1.0)
    await asyncio.to_thread(sandbox.start)
    loop_forever = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    job = TemplateJob(loop_forever, [{"role": "user", "content": "hi"}], True, None, None, {})
    asyncio.ensure_future(sandbox.render(job))
    print(fs._forkserver._forkserver_pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


@pytest.mark.timeout(180)
def test_after_a_kill_9_of_the_server_its_fork_server_and_renders_end():
    """verify-10d F6: after a kill -9 of the server the fork server and a hostile render
    it had started ran on (102 s and counting). The fork server now exits when its parent
    is gone, and a render cannot use more CPU than the time limit (RLIMIT_CPU)."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        server = psutil.Process(int(proc.stdout.readline()))
        for _ in range(400):
            renders = server.children()
            if renders:
                break
            time.sleep(0.05)
        assert renders, "the render never started"
        proc.kill()
        proc.wait()
        gone, alive = psutil.wait_procs([server, *renders], timeout=30)
        assert not alive, [(p.pid, p.name()) for p in alive]
    finally:
        proc.kill()
