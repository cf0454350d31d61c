"""One thread that runs jobs one at a time, taking their owners in turn: an owner with many jobs waiting delays
another's next job by one job at most, where a queue would have it wait for them all."""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class InTurn:
    """`submit(owner, fn, *args)` runs `fn(*args)` in this one thread and gives its Future; the owners whose jobs
    wait take turns, each its jobs in the order they came. The thread is started with the first job and is a
    daemon: a job still running when the process exits is dropped with it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._waiting: dict[Hashable, collections.deque[tuple[concurrent.futures.Future[Any], Callable[..., Any],
                                                             tuple[Any, ...]]]] = {}
        self._turns: collections.deque[Hashable] = collections.deque()  # owners with jobs waiting, next first
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, owner: Hashable, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._changed:
            jobs = self._waiting.get(owner)
            if jobs is None:
                jobs = self._waiting[owner] = collections.deque()
                self._turns.append(owner)
            jobs.append((future, fn, args))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._changed.notify()
        return future

    def _next(self) -> tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]:
        """The first job of the owner whose turn it is; that owner then goes last, if it has more."""
        with self._changed:
            while not self._turns:
                self._changed.wait()
            owner = self._turns.popleft()
            jobs = self._waiting[owner]
            job = jobs.popleft()
            if jobs:
                self._turns.append(owner)
            else:
                del self._waiting[owner]
            return job

    def _run(self) -> None:
        while True:
            future, fn, args = self._next()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # the job's own failure is its Future's: the thread goes on
                future.set_exception(exc)
            else:
                future.set_result(result)
