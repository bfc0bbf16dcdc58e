"""Giving the CPU back while storing, so that the proxy's traffic never waits behind the store.

The session manager shares its CPU with the proxy, the origin or the
clients.  Some kernels do not preempt a busy process when one of these
wakes up on its CPU; it waits until the next scheduler tick, 4 ms at 250 Hz,
whatever the store's priority.  On the lab machine in ``bench/README.md``, a
busy loop with the store's duty cycle cost the proxy a fifth of its requests
at 10 connections, at nice 0 or under ``SCHED_IDLE``.  The same loop cost
nothing once it stepped aside every 100 to 250 µs.
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
