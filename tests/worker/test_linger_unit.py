"""How long a live round waits for the rest of a burst (``worker.streaming.linger``), on a clock
of its own: pieces arrive at set times, and sleeping moves the clock."""

from __future__ import annotations

from typing import Any

import pytest

from shared.platform.sessions import Item
from worker import streaming


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Arrivals:
    """A pending list whose items arrive at the given times."""

    def __init__(self, clock: Clock, times: list[float]) -> None:
        self.clock, self.times = clock, sorted(times)

    def pop_pending(self, queue: str, count: int, worker: str = "", *, shared: bool = True) -> list[Any]:
        ready = [t for t in self.times if t <= self.clock.now][:count]
        self.times = self.times[len(ready) :]
        return ready


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(streaming, "time", clock)
    return clock


def test_pieces_a_few_ms_apart_all_join_the_round(clock: Clock) -> None:
    """An API process answers an HTTP piece every ~4 ms: a burst of 8 such pieces is one round."""
    arrivals = Arrivals(clock, [0.004 * k for k in range(1, 8)])
    got = streaming.linger(arrivals, "q", 1)  # type: ignore[arg-type]
    assert len(got) == 7
    assert clock.now < 0.004 * 7 + streaming.LINGER_GAP + streaming.LINGER_POLL


def test_the_wait_ends_after_a_quiet_gap(clock: Clock) -> None:
    arrivals = Arrivals(clock, [0.003, 0.005, 0.020])  # the third after 15 ms of quiet
    assert len(streaming.linger(arrivals, "q", 1)) == 2  # type: ignore[arg-type]
    assert clock.now <= 0.005 + streaming.LINGER_GAP + streaming.LINGER_POLL


def test_a_steady_trickle_is_cut_at_the_limit(clock: Clock) -> None:
    arrivals = Arrivals(clock, [0.003 * k for k in range(1, 100)])
    got = streaming.linger(arrivals, "q", 1)  # type: ignore[arg-type]
    assert clock.now == pytest.approx(streaming.LINGER_SECONDS, abs=streaming.LINGER_POLL)
    assert len(got) == int(streaming.LINGER_SECONDS / 0.003)


def test_nothing_more_coming_costs_one_gap(clock: Clock) -> None:
    assert streaming.linger(Arrivals(clock, []), "q", 1) == []  # type: ignore[arg-type]
    assert clock.now == pytest.approx(streaming.LINGER_GAP, abs=streaming.LINGER_POLL)


def test_a_full_round_waits_for_nothing(clock: Clock) -> None:
    assert streaming.linger(Arrivals(clock, [0.001]), "q", streaming.POP) == []  # type: ignore[arg-type]
    assert clock.now == 0.0


def test_the_wait_is_a_share_of_the_last_round_between_the_floor_and_the_cap() -> None:
    assert streaming.linger_limit(0.0) == streaming.LINGER_FLOOR  # cheap rounds: the old 10 ms
    assert streaming.linger_limit(0.003) == streaming.LINGER_FLOOR
    assert streaming.linger_limit(0.100) == pytest.approx(streaming.LINGER_SHARE * 0.100)
    assert streaming.linger_limit(2.0) == streaming.LINGER_SECONDS


def _items(ages: list[float], now: float) -> list[Any]:
    return [Item(id=f"s{k}", seq=0, kind="chunk", reply="r", t=now - age) for k, age in enumerate(ages)]


def test_a_round_lingers_only_where_a_burst_starts() -> None:
    """After an idle wait, or on pieces that all came within the limit: a burst may be arriving.
    On pieces that queued up during a busy worker's last round: no wait."""
    now = 1_000_000.0
    limit = 0.030
    assert streaming.burst_starting(_items([0.0], now), True, limit, now)  # the first piece after a wait
    assert streaming.burst_starting(_items([0.120, 0.050], now), True, limit, now)
    assert streaming.burst_starting(_items([0.002, 0.012, 0.025], now), False, limit, now)  # in step
    assert not streaming.burst_starting(_items([0.150, 0.090, 0.004], now), False, limit, now)  # spread
    assert not streaming.burst_starting(_items([0.031], now), False, limit, now)
    assert streaming.burst_starting(_items([-0.5], now), False, limit, now)  # an API clock ahead
