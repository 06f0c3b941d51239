"""A process pool for the CPU-bound stages (feed parsing, article extraction).

Workers are plain child interpreters (``python -m aggregator.workerproc``) that
read pickled calls on stdin and answer with pickled results on stdout, in
order. The event loop talks to them directly, with no helper threads (a
thread-based pool's bookkeeping competed with the main thread for the GIL and
slowed a cold pass), and keeps two calls queued per worker so a worker never
waits for the loop between calls. Each call has a time limit that starts when
the worker begins it; a worker that runs past it, or dies, is killed and
replaced: that call fails, the calls queued behind it move to another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .extract import Article, extract_article
from .launch import take_prestarted
from .parse import parse_feed
from .types import ParsedFeed
from .workerproc import BIG_CALL, HEADER, default_workers, release_memory

T = TypeVar("T")

PARSE_TIME_LIMIT = 60.0
QUEUED_PER_WORKER = 2


class TaskTimedOut(Exception):
    """A task ran past its time limit; its worker was stopped."""


class WorkerCrashed(Exception):
    """A worker process died while running a task."""


class _Requeue(Exception):
    """The worker went away before it began this call: run it elsewhere."""


@dataclass
class _Call:
    future: asyncio.Future[Any]
    time_limit: float


class _Worker:
    """One child process and the calls sent to it, answered in order."""

    def __init__(self, process: asyncio.subprocess.Process, on_exit: Callable[[_Worker], None]) -> None:
        self.process = process
        self.calls: deque[_Call] = deque()
        self._on_exit = on_exit
        self._timer: asyncio.TimerHandle | None = None
        self._reader = asyncio.create_task(self._read_replies())
        self.alive = True

    @classmethod
    async def start(cls, on_exit: Callable[[_Worker], None]) -> _Worker:
        prestarted = take_prestarted()
        if prestarted is not None:
            return cls(await _Adopted.connect(prestarted), on_exit)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aggregator.workerproc",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        return cls(process, on_exit)

    def send(self, payload: bytes, time_limit: float) -> asyncio.Future[Any]:
        assert self.process.stdin is not None
        call = _Call(asyncio.get_running_loop().create_future(), time_limit)
        self.calls.append(call)
        self.process.stdin.write(len(payload).to_bytes(HEADER, "big"))
        self.process.stdin.write(payload)
        if len(self.calls) == 1:
            self._start_clock()
        return call.future

    def _start_clock(self) -> None:
        if self._timer:
            self._timer.cancel()
        if self.calls:
            self._timer = asyncio.get_running_loop().call_later(self.calls[0].time_limit, self._time_out)

    async def _read_replies(self) -> None:
        assert self.process.stdout is not None
        try:
            while True:
                size = int.from_bytes(await self.process.stdout.readexactly(HEADER), "big")
                ok, value = pickle.loads(await self.process.stdout.readexactly(size))
                if size >= BIG_CALL:
                    release_memory()  # the reply's bytes, read and unpickled
                call = self.calls.popleft()
                self._start_clock()
                if not call.future.done():
                    (call.future.set_result if ok else call.future.set_exception)(value)
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await self._exit_code()
            self._fail(WorkerCrashed(f"the worker process died (exit code {code})"))

    def _time_out(self) -> None:
        limit = self.calls[0].time_limit if self.calls else 0
        self._fail(TaskTimedOut(f"gave up after the {limit:g}s time limit"))
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    def _fail(self, error: Exception) -> None:
        """The running call gets ``error``; the calls queued behind it go to another worker."""
        if not self.alive:
            return
        self.alive = False
        if self._timer:
            self._timer.cancel()
        for index, call in enumerate(self.calls):
            if not call.future.done():
                call.future.set_exception(error if index == 0 else _Requeue())
        self.calls.clear()
        self._on_exit(self)

    async def _exit_code(self) -> int | None:
        """Killing a worker that exits by itself would let the subprocess module reap it behind asyncio's back."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.process.wait()), timeout=2)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            return await self.process.wait()

    async def stop(self) -> None:
        self.alive = False
        if self._timer:
            self._timer.cancel()
        if self.process.stdin is not None:
            self.process.stdin.close()
        if self.process.returncode is None:
            await self._exit_code()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class _Adopted:
    """A worker started before the event loop (:func:`.launch.prestart`), with the part of an asyncio
    subprocess's interface a :class:`_Worker` uses."""

    def __init__(self, popen: subprocess.Popen[bytes], stdin: asyncio.StreamWriter, stdout: asyncio.StreamReader) -> None:
        self._popen = popen
        self.stdin = stdin
        self.stdout = stdout

    @classmethod
    async def connect(cls, popen: subprocess.Popen[bytes]) -> _Adopted:
        loop = asyncio.get_running_loop()
        stdout = asyncio.StreamReader(limit=2**16, loop=loop)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdout, loop=loop), popen.stdout)
        transport, protocol = await loop.connect_write_pipe(lambda: asyncio.streams.FlowControlMixin(loop=loop), popen.stdin)
        return cls(popen, asyncio.StreamWriter(transport, protocol, None, loop), stdout)

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def kill(self) -> None:
        self._popen.kill()

    async def wait(self) -> int:
        while (code := self._popen.poll()) is None:
            await asyncio.sleep(0.02)
        return code


class WorkerPool:
    """Runs pure functions in worker processes, started on first use; ``inline`` runs one in this process."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()
        self._live: list[_Worker] = []
        self._slots: asyncio.Semaphore | None = None
        self._starting: asyncio.Lock | None = None

    async def _worker_with_room(self) -> _Worker:
        """The least busy live worker, starting one while there are fewer than ``workers`` and none is idle."""
        assert self._starting is not None
        ready = [w for w in self._live if w.alive and len(w.calls) < QUEUED_PER_WORKER]
        if ready and min(len(w.calls) for w in ready) == 0:
            return min(ready, key=lambda w: len(w.calls))
        if len(self._live) < self.workers:
            async with self._starting:
                if len(self._live) < self.workers:
                    worker = await _Worker.start(self._worker_exited)
                    self._live.append(worker)
                    return worker
            return await self._worker_with_room()
        return min(ready, key=lambda w: len(w.calls))

    def _worker_exited(self, worker: _Worker) -> None:
        if worker in self._live:
            self._live.remove(worker)

    async def run(self, func: Callable[..., T], *args: object, time_limit: float, inline: bool = False) -> T:
        if inline:
            return func(*args)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers * QUEUED_PER_WORKER)
            self._starting = asyncio.Lock()
        async with self._slots:
            payload = pickle.dumps((func, args), protocol=pickle.HIGHEST_PROTOCOL)  # not held while waiting
            while True:
                worker = await self._worker_with_room()
                try:
                    return await worker.send(payload, time_limit)
                except _Requeue:
                    continue

    async def parse(self, body: bytes, url: str, headers: Mapping[str, str], *, inline: bool = False) -> ParsedFeed:
        return await self.run(parse_feed, body, url, dict(headers), time_limit=PARSE_TIME_LIMIT, inline=inline)

    async def extract(self, body: bytes, url: str, content_type: str | None, time_limit: float) -> Article:
        return await self.run(extract_article, body, url, content_type, time_limit=time_limit)

    async def aclose(self) -> None:
        workers, self._live = self._live, []
        await asyncio.gather(*(worker.stop() for worker in workers), return_exceptions=True)

    async def __aenter__(self) -> WorkerPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
