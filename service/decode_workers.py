"""Media decoding in worker processes: a decoder that crashes fails one request, not the server.

Decoding runs native code on a client's bytes: FFmpeg through PyAV, libjpeg, libpng,
libwebp and friends through Pillow, libsndfile. A bug in any of them is a crash of the
process that called it, and in the server's own process that is every call in flight
lost (verify-10e D1: an 8.8 KB 7.1 FLAC made PyAV read past a frame's planes, SIGSEGV,
exit 139). So decodes run in ``--decode-processes`` long-lived worker processes (spawned:
nothing of the server's gRPC or engine state is inherited), one job at a time each:

- a worker that dies mid-job (SIGSEGV, SIGABRT, SIGBUS, the OOM killer's SIGKILL) fails
  that job only: INVALID_ARGUMENT naming the signal (RESOURCE_EXHAUSTED for SIGKILL, most
  often memory), logged with the worker's pid; a new worker replaces it;
- a job past ``timeout_s`` (a decoder stuck in a loop) has its worker killed and replaced:
  DEADLINE_EXCEEDED;
- a client that goes away does not kill the worker (a respawn costs more than finishing a
  decode the media limits already bound); the worker goes back to the pool when done.

Jobs and results cross a socket pair pickled (a ``ContentPart`` in, a ``DecodedPart`` with
its frames or samples out; buffers of ``OUT_OF_BAND_BYTES`` and more in a memfd passed
along), in threads of this pool, never on the event loop. Workers exit
when the server's end of their pipe closes, and with the server on Linux (parent-death
signal), so none outlives a ``kill -9`` of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import io
import logging
import mmap
import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from nanovl.errors import DeadlineExceeded, InvalidArgument, NanovlError, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

PROCESS_TITLE = "nanovl::DecodeWorker"
# How long a new worker may take to import the decoders and say it is ready.
START_TIMEOUT_S = 60.0
# A replacement that fails to start is retried after this long, doubling up to the second.
RESPAWN_BACKOFF_S = (0.5, 10.0)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """SIGKILL this process when the thread that spawned it exits (Linux; elsewhere the
    closed pipe ends the worker at its next read)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# Buffers at least this large (decoded frames, images, samples; a job's media bytes) cross
# between processes through an anonymous shared-memory file (memfd: one copy into it, none
# out of it), not through the pipe (pickled: three copies and a syscall per 64 KiB).
OUT_OF_BAND_BYTES = 1 << 20


def _image_from_bytes(mode: str, size: tuple[int, int], info: dict[str, Any], data: Any) -> Any:
    from PIL import Image

    image = Image.frombytes(mode, size, data)
    image.info.update(info)
    return image


def _message_from_bytes(cls: type, data: Any) -> Any:
    return cls.FromString(bytes(data))


class _Pickler(pickle.Pickler):
    """Pickle protocol 5, whose out-of-band buffers numpy arrays use already; decoded PIL
    images and large protobuf messages (a job's media part) are given theirs here (pickled
    as usual, their pixels and bytes would be copied into the pickle)."""

    def reducer_override(self, obj: Any) -> Any:
        from google.protobuf.message import Message

        if isinstance(obj, Message) and obj.ByteSize() >= OUT_OF_BAND_BYTES:
            return _message_from_bytes, (type(obj), pickle.PickleBuffer(obj.SerializeToString()))
        image = sys.modules.get("PIL.Image")
        if image is not None and isinstance(obj, image.Image) and obj.width * obj.height >= OUT_OF_BAND_BYTES // 4:
            return _image_from_bytes, (obj.mode, obj.size, dict(obj.info), pickle.PickleBuffer(obj.tobytes()))
        return NotImplemented


def _send(conn: Connection, obj: Any) -> None:
    """Send ``obj``: in the pipe, with its large buffers in a memfd passed along (``_recv``)."""
    buffers: list[pickle.PickleBuffer] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        if buffer.raw().nbytes < OUT_OF_BAND_BYTES:
            return True  # in the pickle
        buffers.append(buffer)
        return False

    data = io.BytesIO()
    _Pickler(data, protocol=5, buffer_callback=out_of_band).dump(obj)
    if not buffers:
        conn.send_bytes(b"p" + data.getvalue())
        return
    sizes = [b.raw().nbytes for b in buffers]
    fd = os.memfd_create("nanovl-decode", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, sum(sizes))
        with mmap.mmap(fd, sum(sizes)) as shared:
            offset = 0
            for buffer, size in zip(buffers, sizes, strict=True):
                shared[offset : offset + size] = buffer.raw()
                offset += size
        conn.send_bytes(b"m" + pickle.dumps((sizes, data.getvalue()), protocol=5))
        reduction.send_handle(conn, fd, 0)
    finally:
        os.close(fd)


def _recv(conn: Connection) -> Any:
    """What ``_send`` sent; large buffers stay in the sender's memfd, mapped copy-on-write
    (numpy arrays read them in place, and may still write to them)."""
    message = conn.recv_bytes()
    if message[:1] == b"p":
        return pickle.loads(memoryview(message)[1:])
    sizes, data = pickle.loads(memoryview(message)[1:])
    fd = reduction.recv_handle(conn)
    try:
        shared = mmap.mmap(fd, sum(sizes), flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    view, buffers, offset = memoryview(shared), [], 0
    for size in sizes:
        buffers.append(view[offset : offset + size])
        offset += size
    return pickle.loads(data, buffers=buffers)


def _serve(conn: Connection, parent: int, preload: tuple[str, ...]) -> None:
    """A worker's life: import ``preload``, then answer jobs ``(fn, args, kwargs)`` with
    ``("ok", result)``, ``("error", NanovlError)`` or ``("bug", traceback)`` until the
    pipe closes."""
    _die_with_parent()
    if os.getppid() != parent:  # the server died before the signal was armed
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    with contextlib.suppress(ImportError):  # vLLM's dependency; titles its own processes the same way
        import setproctitle

        # Told apart from vLLM's spawned engine core in `ps` and by the profilers'
        # process walk (profiling.sizing.live_budget), which would take it for one.
        setproctitle.setproctitle(PROCESS_TITLE)
    for module in preload:  # before "ready": no job waits for (or times out on) an import
        importlib.import_module(module)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            fn, args, kwargs = _recv(conn)
            conn.send(("started", None))  # a crash from here on is this job's
        except (EOFError, OSError):
            os._exit(0)
        try:
            reply: tuple[str, Any] = ("ok", fn(*args, **kwargs))
        except NanovlError as exc:
            reply = ("error", exc)
        except Exception:  # noqa: BLE001 - a bug: the server logs it and answers INTERNAL
            reply = ("bug", traceback.format_exc())
        try:
            _send(conn, reply)
        except (EOFError, OSError):
            os._exit(0)
        except Exception:  # noqa: BLE001 - an unpicklable result is a bug too
            _send(conn, ("bug", traceback.format_exc()))


@dataclass(eq=False)  # by identity: workers live in a set
class _Worker:
    process: BaseProcess
    conn: Connection
    decoding: bool = False  # it took a job and has not answered yet

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        with contextlib.suppress(Exception):
            self.conn.close()
        self.process.join(5)


def _lost(exc: NanovlError, reason: str) -> NanovlError:
    exc.decoder_lost = reason  # type: ignore[attr-defined]
    return exc


def lost_worker(exc: BaseException) -> str | None:
    """Why ``exc`` (from :meth:`DecodeWorkers.run`) cost a worker: "crash" (a signal such
    as SIGSEGV), "killed" (SIGKILL) or "timeout"; None for any other error."""
    return getattr(exc, "decoder_lost", None)


class _Died(Exception):
    """The worker's pipe closed mid-job: the process is gone."""


class _DiedIdle(Exception):
    """The worker's pipe closed before it took the job: it was gone already."""


class _TimedOut(Exception):
    pass


def _signal_name(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-exitcode).name
        return f"signal {-exitcode}"
    return f"exit status {exitcode}"


class DecodeWorkers:
    """``size`` decode processes. :meth:`run` runs ``fn(*args, **kwargs)`` (picklable: a
    module-level function and plain or protobuf arguments) in one of them; each worker
    imports ``preload`` (``fn``'s module) before it takes jobs.

    ``run`` raises what ``fn`` raised if it is a ``NanovlError``; ``InvalidArgument`` /
    ``ResourceExhausted`` when the worker dies on the job; ``DeadlineExceeded`` past
    ``timeout_s``; ``RuntimeError`` (INTERNAL) for any other exception in the worker."""

    def __init__(
        self,
        size: int,
        *,
        timeout_s: float,
        preload: tuple[str, ...] = ("service.part_decoding",),
        timeout_flag: str = "--media-decode-timeout-s",
    ) -> None:
        if size < 1:
            raise ValueError("at least one decode process is needed")
        self.size = size
        self.timeout_s = timeout_s
        self._preload = preload
        self._timeout_flag = timeout_flag
        self._ctx = mp.get_context("spawn")
        # Threads that carry jobs to the workers and wait on their pipes (pickling a few
        # MB of frames holds the GIL; waiting does not).
        self._threads = ThreadPoolExecutor(size, thread_name_prefix="nanovl-decode")
        self._idle: asyncio.Queue[_Worker] | None = None
        self._all: set[_Worker] = set()
        self._closed = False
        self._replacing: set[asyncio.Task[None]] = set()
        self.crashes = 0  # workers lost mid-job since start (tests, logs)

    async def start(self) -> None:
        """Spawn every worker and wait until each is ready (they import the decoders:
        about a second each, side by side)."""
        self._idle = asyncio.Queue()
        workers = await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        for worker in workers:
            self._idle.put_nowait(worker)

    def pids(self) -> list[int]:
        """Every live worker's pid."""
        return [w.pid for w in self._all if w.pid is not None]

    def decoding_pids(self) -> list[int]:
        """The pids of workers decoding a job now (for a py-spy dump of a slow decode)."""
        return [w.pid for w in self._all if w.decoding and w.pid is not None]

    def close(self) -> None:
        """Kill every worker now (a decode in flight fails)."""
        self._closed = True
        for worker in list(self._all):
            with contextlib.suppress(Exception):
                worker.process.kill()
        for worker in list(self._all):
            worker.process.join(1)  # reaped: no zombie left behind
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: Any, what: str = "media", **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a worker; ``what`` names the input in errors
        ("part 2 (video)")."""
        if self._idle is None:
            raise RuntimeError("DecodeWorkers.start() was not awaited")
        while True:
            try:
                worker = await asyncio.wait_for(self._idle.get(), self.timeout_s)
            except TimeoutError:
                raise ResourceExhausted(
                    f"{what}: no media decoder was free for {self.timeout_s:g} s (all {self.size} busy or restarting; "
                    "--decode-processes, --media-decode-timeout-s): the server is overloaded with media; retry "
                    "with backoff"
                ) from None
            # Shielded: a caller that goes away leaves the job to finish (or time out) and
            # the worker to come back to the pool, never lost mid-exchange.
            job = asyncio.ensure_future(self._exchange(worker, (fn, args, kwargs), what))
            try:
                return await asyncio.shield(job)
            except _DiedIdle:
                # It died before it took the job (killed while idle: the OOM killer, an
                # operator): no fault of this job's, which goes to another worker.
                log.warning(
                    "decode worker pid %s died while idle (%s); replaced",
                    worker.pid,
                    _signal_name(worker.process.exitcode),
                )

    async def _exchange(self, worker: _Worker, job: tuple[Any, ...], what: str) -> Any:
        loop = asyncio.get_running_loop()
        healthy = False
        try:
            kind, value = await loop.run_in_executor(self._threads, self._send_and_wait, worker, job)
            healthy = True
        except _TimedOut:
            log.warning(
                "decode worker pid %s ran past %g s on %s; killed and replaced", worker.pid, self.timeout_s, what
            )
            raise _lost(
                DeadlineExceeded(
                    f"{what}: decoding ran longer than this server's limit of {self.timeout_s:g} s "
                    f"({self._timeout_flag}) and was stopped; send shorter or smaller media"
                ),
                "timeout",
            ) from None
        except (_DiedIdle, _Died) as exc:
            if self._closed:
                raise Unavailable("the server is shutting down; retry on another replica") from None
            if isinstance(exc, _DiedIdle):
                raise
            self.crashes += 1
            how = _signal_name(worker.process.exitcode)
            log.warning("decode worker pid %s died (%s) while decoding %s; replaced", worker.pid, how, what)
            if worker.process.exitcode == -signal.SIGKILL:
                raise _lost(
                    ResourceExhausted(
                        f"{what}: the decoder was killed ({how}, most often the out-of-memory killer) while "
                        "decoding it; send smaller media, or retry"
                    ),
                    "killed",
                ) from None
            raise _lost(
                InvalidArgument(
                    f"{what}: the decoder crashed on this media ({how}); the file is corrupt or uses a feature "
                    "this server's decoders cannot handle: re-encode it (e.g. ffmpeg to H.264 MP4, PNG or WAV) "
                    "and retry"
                ),
                "crash",
            ) from None
        finally:
            if healthy:
                self._release(worker)
            else:
                self._lose(worker)
        if kind == "ok":
            return value
        if kind == "error":
            raise value
        raise RuntimeError(f"decoding {what} failed in the decode worker:\n{value}")

    def _send_and_wait(self, worker: _Worker, job: tuple[Any, ...]) -> tuple[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        try:
            _send(worker.conn, job)
            if not worker.conn.poll(self.timeout_s):
                raise _TimedOut
            started, _ = worker.conn.recv()
            assert started == "started", started
        except (EOFError, OSError) as exc:  # BrokenPipeError, ConnectionResetError
            worker.process.join(5)  # here, not on the event loop: its exit status names the signal
            raise _DiedIdle from exc
        worker.decoding = True
        try:
            if not worker.conn.poll(max(0.0, deadline - time.monotonic())):
                raise _TimedOut
            return _recv(worker.conn)
        except (EOFError, OSError) as exc:
            worker.process.join(5)
            raise _Died from exc
        finally:
            worker.decoding = False

    def _lose(self, worker: _Worker) -> None:
        """Kill ``worker`` (if it still runs) and start its replacement, which reaps it
        first (off the event loop)."""
        self._all.discard(worker)
        with contextlib.suppress(Exception):
            worker.process.kill()
        if not self._closed:
            task = asyncio.ensure_future(self._replace(worker))
            self._replacing.add(task)  # held: the loop keeps only weak references to tasks
            task.add_done_callback(self._replacing.discard)

    def _release(self, worker: _Worker) -> None:
        assert self._idle is not None
        if self._closed:
            with contextlib.suppress(Exception):
                worker.process.kill()  # close() reaps it
        else:
            self._idle.put_nowait(worker)

    async def _replace(self, lost: _Worker) -> None:
        """Reap ``lost`` and start a worker in its place, retrying with backoff until one
        starts (or the pool closes): a replacement can die while it starts too (the OOM
        killer, a respawn storm), and a pool that gave up would drain to nothing
        (verify-10f E1)."""
        await asyncio.get_running_loop().run_in_executor(None, lost.kill)
        delay = RESPAWN_BACKOFF_S[0]
        while not self._closed:
            try:
                worker = await self._spawn()
            except Exception as exc:  # noqa: BLE001 - retried; logged, the pool is short meanwhile
                log.warning("a replacement decode worker did not start (%s); retrying in %g s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESPAWN_BACKOFF_S[1])
                continue
            self._release(worker)
            return

    async def _spawn(self) -> _Worker:
        receiver, sender = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_serve, args=(sender, os.getpid(), self._preload), name="nanovl-decode", daemon=True
        )
        loop = asyncio.get_running_loop()
        # On this (the main) thread, milliseconds: the parent-death signal fires when the
        # thread that started a process exits, and an executor's threads come and go.
        process.start()
        sender.close()
        worker = _Worker(process, receiver)
        try:
            if not await loop.run_in_executor(None, receiver.poll, START_TIMEOUT_S):
                raise RuntimeError(f"it did not say it was ready within {START_TIMEOUT_S:g} s")
            kind, _ = receiver.recv()  # EOFError: it died while starting
            assert kind == "ready", kind
        except BaseException as exc:
            await loop.run_in_executor(None, worker.kill)  # and reaped: no zombie
            if isinstance(exc, EOFError):
                raise RuntimeError(f"it died while starting ({_signal_name(process.exitcode)})") from None
            raise
        self._all.add(worker)
        return worker


__all__ = ["DecodeWorkers", "lost_worker"]
