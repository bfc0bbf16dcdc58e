"""Giving the CPU back while storing, so that the proxy's traffic never waits behind the store.

The session manager shares its CPUs with the proxy, and in the lab with the
origin and the clients too.  On the lab machine in ``bench/README.md``, the
kernel left a process woken on a busy CPU waiting until the next scheduler
tick (4 ms at 250 Hz), whatever the busy process's priority: a plain loop
with the store's duty cycle cost the proxy a fifth of its requests at 10
connections, at nice 0 and under ``SCHED_IDLE`` alike.  The same loop cost
nothing once it called ``sched_yield`` every 100 to 250 µs.

Shorter is not free: where the store shares one saturated CPU with the
proxy, each offer is taken, batches take longer from end to end, and a
standing queue of unacknowledged flows builds up in the proxy, bounded by
its delivery window (see bench/README.md for the figures).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

#: Longest stretch of work between two offers of the CPU, in seconds.
SLICE = 200e-6


class Pacer:
    """Called after each small piece of work; offers the CPU once a slice is used up.

    Offering it (``sched_yield``) costs a system call when nothing else is
    waiting, and a few switches when something is, so it is made once per
    slice rather than once per piece.
    """

    def __init__(
        self,
        slice: float = SLICE,
        clock: Callable[[], float] = time.perf_counter,
        step_aside: Callable[[], None] = os.sched_yield,
    ) -> None:
        self._slice = slice
        self._clock = clock
        self._step_aside = step_aside
        self._since = clock()

    def __call__(self) -> None:
        if self._clock() - self._since >= self._slice:
            self._step_aside()
            self._since = self._clock()
