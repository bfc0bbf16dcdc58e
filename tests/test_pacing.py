"""The pacer: the CPU is offered once per slice of work, not per call."""

from __future__ import annotations

from capture.sessiond.pacing import Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_offers_the_cpu_once_a_slice_is_used_up():
    clock, offers = Clock(), []
    pace = Pacer(slice=1.0, clock=clock, step_aside=lambda: offers.append(clock.now))
    for _ in range(5):
        clock.now += 0.375
        pace()
    # 0.375, 0.75: not yet; 1.125: offered, and the slice starts again; 1.5, 1.875: not yet.
    assert offers == [101.125]
    clock.now += 0.125
    pace()
    assert len(offers) == 1
    clock.now += 0.125
    pace()
    assert offers == [101.125, 102.125]


def test_a_long_piece_of_work_is_followed_by_one_offer():
    clock, offers = Clock(), []
    pace = Pacer(slice=1.0, clock=clock, step_aside=lambda: offers.append(clock.now))
    clock.now += 5.0
    pace()
    pace()
    assert offers == [105.0]


def test_default_offer_is_a_real_sched_yield():
    """With the real clock and sched_yield: many calls, no error, a few offers."""
    pace = Pacer(slice=0.0)
    for _ in range(1000):
        pace()
