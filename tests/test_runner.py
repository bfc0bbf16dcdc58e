"""capture.sessiond.runner: store calls inline (SQLite) or in one worker thread (PostgreSQL)."""

from __future__ import annotations

import queue
import threading
import time

from capture.sessiond.runner import Inline, Worker, for_store


class ThreadedReactor:
    """Just what deferToThreadPool needs: callFromThread, whose calls the test runs itself."""

    def __init__(self) -> None:
        self.calls: queue.Queue = queue.Queue()

    def callFromThread(self, function, *args, **kwargs) -> None:
        self.calls.put((function, args, kwargs))

    def run_until(self, done, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            function, args, kwargs = self.calls.get(timeout=max(0.01, deadline - time.monotonic()))
            function(*args, **kwargs)


def test_inline_has_answered_when_run_returns():
    """Inline runs the call at once in the caller's thread, errors included."""
    results = []
    Inline().run(lambda x: (x, threading.current_thread()), 3).addCallback(results.append)
    assert results == [(3, threading.current_thread())]
    failures = []
    Inline().run(lambda: 1 / 0).addErrback(failures.append)
    assert failures[0].check(ZeroDivisionError)


def test_worker_runs_every_call_in_one_other_thread_in_order():
    """A Worker runs calls one at a time, in the order made, in one thread that is not the caller's."""
    reactor = ThreadedReactor()
    worker = Worker(reactor)
    try:
        seen: list[tuple[int, str]] = []

        def call(n: int) -> int:
            seen.append((n, threading.current_thread().name))
            time.sleep(0.002)
            return n

        answers: list[int] = []
        for n in range(20):
            worker.run(call, n).addCallback(answers.append)
        reactor.run_until(lambda: len(answers) == 20)
        assert answers == list(range(20))
        assert [n for n, _ in seen] == list(range(20))
        names = {name for _, name in seen}
        assert len(names) == 1 and threading.current_thread().name not in names
    finally:
        worker.stop()


def test_for_store_picks_by_blocking():
    """A store that says it blocks gets a Worker; any other runs inline."""

    class Local:
        blocking = False

    class Remote:
        blocking = True

    assert isinstance(for_store(Local(), ThreadedReactor()), Inline)
    worker = for_store(Remote(), ThreadedReactor())
    try:
        assert isinstance(worker, Worker)
    finally:
        worker.stop()
