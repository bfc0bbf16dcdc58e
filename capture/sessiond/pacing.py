"""Giving the CPU back while storing, so that the proxy's traffic never waits behind the store.

The session manager shares its CPUs with the proxy, and in the lab with the
origin and the clients too.  On the lab machine in ``bench/README.md``, a
process woken on a busy CPU could wait up to a scheduler tick (4 ms at
250 Hz) before it ran, whatever the busy process's priority: a plain loop
with the store's duty cycle cost the proxy a fifth of its requests at 10
connections, at nice 0 and under ``SCHED_IDLE`` alike.  The same loop cost
nothing once it called ``sched_yield`` every 100 to 250 µs.

A fixed short slice was not enough where the store shares one saturated
CPU with the proxy: each offer was taken for a whole time slice, the store
fell behind, and its backlog grew by some 800 flows a second.  So a slice
lasts as long as the CPU was away after the previous offer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

#: Work between two offers of the CPU, in seconds, while offers are taken briefly.
SLICE = 200e-6
#: The most it grows to when another process keeps the CPU long after each offer.
MAX_SLICE = 4e-3


class Pacer:
    """Called after each small piece of work; offers the CPU once a slice is used up.

    Offering it (``sched_yield``) costs a system call when nothing else is
    waiting, so it is made once per slice rather than once per piece.  The
    next slice is as long as the CPU was away (between ``slice`` and
    ``max_slice``): a woken origin or client takes it back within
    microseconds and the slice stays short, while a busy proxy on the same
    CPU would otherwise keep the store to a sliver of the time it needs.
    """

    def __init__(
        self,
        slice: float = SLICE,
        max_slice: float = MAX_SLICE,
        clock: Callable[[], float] = time.perf_counter,
        step_aside: Callable[[], None] = os.sched_yield,
    ) -> None:
        self._base = self._slice = slice
        self._max = max_slice
        self._clock = clock
        self._step_aside = step_aside
        self._since = clock()

    def __call__(self) -> None:
        now = self._clock()
        if now - self._since >= self._slice:
            self._step_aside()
            back = self._clock()
            self._slice = min(max(self._base, back - now), self._max)
            self._since = back
