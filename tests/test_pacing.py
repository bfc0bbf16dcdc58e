"""The pacer: the CPU is offered once per slice of work, and a slice is as long as the CPU was away."""

from __future__ import annotations

from capture.sessiond.pacing import Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pacer(clock: Clock, offers: list[float], away: list[float] | None = None) -> Pacer:
    """A pacer on ``clock``; each offer is noted, and the CPU is away for the next of ``away``."""

    def step_aside() -> None:
        offers.append(clock.now)
        if away:
            clock.now += away.pop(0)

    return Pacer(slice=1.0, max_slice=8.0, clock=clock, step_aside=step_aside)


def test_offers_the_cpu_once_a_slice_is_used_up():
    clock, offers = Clock(), []
    pace = pacer(clock, offers)
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
    pace = pacer(clock, offers)
    clock.now += 5.0
    pace()
    pace()
    assert offers == [105.0]


def test_a_slice_lasts_as_long_as_the_cpu_was_away():
    """Kept away 3 s, the pacer works 3 s before the next offer; then 8 s at most; then back to 1."""
    clock, offers = Clock(), []
    pace = pacer(clock, offers, away=[3.0, 20.0, 0.0])
    clock.now += 1.0
    pace()  # offered at 101, back at 104
    assert offers == [101.0]
    clock.now += 2.5
    pace()
    assert len(offers) == 1  # 2.5 s of a 3 s slice
    clock.now += 0.5
    pace()  # offered at 107, back at 127
    assert offers == [101.0, 107.0]
    clock.now += 7.5
    pace()
    assert len(offers) == 2  # the slice is capped at 8 s, not 20
    clock.now += 0.5
    pace()  # offered at 135, back at once
    assert offers == [101.0, 107.0, 135.0]
    clock.now += 1.0
    pace()
    assert offers == [101.0, 107.0, 135.0, 136.0]
