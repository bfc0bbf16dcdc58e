"""Where the session manager runs its store calls: in the reactor thread, or in one worker thread.

SQLite is a local file and paces itself (:mod:`capture.sessiond.pacing`),
so its calls run inline.  A store whose calls wait on the network
(PostgreSQL: ``store.blocking``) gets one dedicated thread: every call runs
there, one at a time and in the order made, and the reactor only waits on
Deferreds.  Either way the caller gets a Deferred.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


class Inline:
    """Calls run at once in the caller's thread; the Deferred has fired when ``run`` returns."""

    def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        return defer.maybeDeferred(function, *args, **kwargs)

    def stop(self) -> None:
        """Nothing to stop."""


class Worker:
    """One thread running every call in order; ``stop`` waits for the call in progress."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="store-writer")
        self._pool.start()

    def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        return deferToThreadPool(self._reactor, self._pool, function, *args, **kwargs)

    def stop(self) -> None:
        self._pool.stop()


def for_store(store: Any, reactor: Any) -> Inline | Worker:
    """The runner a store needs: a Worker for one whose calls block on the network."""
    return Worker(reactor) if getattr(store, "blocking", False) else Inline()
