"""When a task run takes more waiting jobs (``worker.jobs.BatchRun``), on a clock of its own: a fake
store (the claims, renewals and completions it was asked for) and a fake runner (recordings that
end after a set number of rounds). A wave of recordings that ends together is followed at once by
the next one in the same run, not at the next heartbeat nor by the next task message; a single
freed slot waits for the heartbeat; an empty queue is asked once, not every round."""

from __future__ import annotations

from typing import Any

import pytest

from shared.asr.engine import Transcript
from shared.asr.types import Phrase
from shared.platform.settings import Settings
from worker import jobs
from worker.processing import Outcome, Work
from worker.store import Claimed

ROUND = 0.05  # the fake clock's seconds per round (the heartbeat is every HEARTBEAT_SECONDS)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Runner:
    """Recordings that end after ``rounds[path]`` rounds (their path names their length)."""

    def __init__(self, clock: Clock, events: list[tuple[Any, ...]]) -> None:
        self.clock, self.events = clock, events
        self.left: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.left)

    @property
    def stepping(self) -> int:
        return len(self.left)

    def add(self, work: Work) -> dict[str, Any]:
        self.left[work.job_id] = int(work.path)
        return {"format": "WAV", "codec": "pcm_16", "sample_rate": 8000, "channels": 1, "duration": 1.0}

    def round(self) -> list[Outcome]:
        self.clock.now += ROUND
        self.events.append(("round", sorted(self.left)))
        self.left = {k: n - 1 for k, n in self.left.items()}
        ended = sorted(k for k, n in self.left.items() if n == 0)
        for k in ended:
            del self.left[k]
        transcript = Transcript((Phrase("да", 0.1, 0.5),), duration=1.0, processing_time=0.01)
        return [Outcome(k, transcript=transcript) for k in ended]

    def progress(self) -> dict[str, tuple[float, float]]:
        return dict.fromkeys(self.left, (0.5, 1.0))

    def stop(self, job_id: str) -> None:
        self.left.pop(job_id, None)

    def close(self) -> None:
        self.left.clear()


class Store:
    """Waiting jobs handed out in order; every call recorded."""

    def __init__(self, waiting: list[Claimed], events: list[tuple[Any, ...]], lost: frozenset[str]) -> None:
        self.waiting, self.events, self.lost = waiting, events, lost
        self.flagged: dict[str, list[str]] = {}

    def claim_orphans(self, queue: str, limit: int) -> list[Claimed]:
        return []

    def claim_waiting(self, queue: str, limit: int) -> list[Claimed]:
        taken, self.waiting = self.waiting[: max(limit, 0)], self.waiting[max(limit, 0) :]
        self.events.append(("claim", limit, [j.id for j in taken]))
        return taken

    def renew_many(self, values: dict[str, dict[str, Any]]) -> set[str]:
        self.events.append(("renew", sorted(values)))
        return set(values) - self.lost

    def heartbeat(self, progress: dict[str, float]) -> tuple[set[str], set[str]]:
        self.events.append(("heartbeat",))
        return set(progress), set()

    def complete_many(self, done: list[Any]) -> dict[str, bool]:
        self.events.append(("complete", sorted(c.job_id for c in done)))
        return {c.job_id: True for c in done}

    def finish_batches(self, batch_ids: list[str]) -> list[Any]:
        return []


def job(name: str, rounds: int) -> Claimed:
    return Claimed(name, "cpu", "upload", str(rounds), None, {}, 1, False, None)


class Wave:
    """One task run (``BatchRun.run``) on the fake store and runner; the events it caused."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.clock = Clock()
        self.monkeypatch = monkeypatch
        monkeypatch.setattr(jobs, "time", self.clock)
        monkeypatch.setattr(jobs, "get_recognizer", lambda settings: object())

    def run(
        self, first: list[Claimed], waiting: list[Claimed], lost: frozenset[str] = frozenset()
    ) -> list[tuple[Any, ...]]:
        events: list[tuple[Any, ...]] = []
        runner = Runner(self.clock, events)
        self.monkeypatch.setattr(jobs, "BatchRunner", lambda *a, **k: runner)
        jobs.BatchRun(Store(waiting, events, lost), Settings(worker_batch=4)).run(first)  # type: ignore[arg-type]
        return events


@pytest.fixture
def wave(monkeypatch: pytest.MonkeyPatch) -> Wave:
    return Wave(monkeypatch)


def test_a_wave_that_ends_together_is_followed_at_once_by_the_next_in_the_same_run(wave: Wave) -> None:
    first = [job(f"a{i}", 3) for i in range(4)]
    second = [job(f"b{i}", 3) for i in range(4)]
    events = wave.run(first, second)
    assert ("heartbeat",) not in events  # 6 rounds of 0.05 s: no heartbeat came
    kinds = [e[0] for e in events]
    # the first wave opened with one renewal, its three rounds, its completion, then the next
    # wave claimed right away (not by another task run), opened with one renewal
    assert events[:2] == [("claim", 0, []), ("renew", ["a0", "a1", "a2", "a3"])]
    assert kinds[2:5] == ["round"] * 3
    assert events[5] == ("complete", ["a0", "a1", "a2", "a3"])
    assert events[6] == ("claim", 4, ["b0", "b1", "b2", "b3"])
    assert events[7] == ("renew", ["b0", "b1", "b2", "b3"])
    assert kinds[8:11] == ["round"] * 3 and events[11] == ("complete", ["b0", "b1", "b2", "b3"])
    # the queue was empty after it: asked once, not once per round
    assert events[12:] == [("claim", 4, [])]


def test_one_freed_slot_waits_for_the_heartbeat(wave: Wave) -> None:
    """A join one at a time costs the model batch a change of members every time: under half the
    batch free, waiting jobs join at the next heartbeat only."""
    first = [job("short", 2), *(job(f"long{i}", 40) for i in range(3))]
    events = wave.run(first, [job("next", 2)])
    claims = [i for i, e in enumerate(events) if e[0] == "claim"]
    beats = [i for i, e in enumerate(events) if e[0] == "heartbeat"]
    # the short one ended in round 2; the next job was claimed right after the first heartbeat
    assert events[claims[1]] == ("claim", 1, ["next"]) and claims[1] == beats[0] + 1
    rounds_before = sum(1 for e in events[: claims[1]] if e[0] == "round")
    assert rounds_before == pytest.approx(jobs.HEARTBEAT_SECONDS / ROUND, abs=1)


def test_an_empty_queue_is_asked_once_between_heartbeats(wave: Wave) -> None:
    first = [job("a", 2), job("b", 2), job("c", 60), job("d", 60)]
    events = wave.run(first, [])
    beats = [i for i, e in enumerate(events) if e[0] == "heartbeat"]
    between = [e for e in events[: beats[0]] if e[0] == "claim"]
    assert between == [("claim", 0, []), ("claim", 2, [])]  # the run's own, then once when half ran free
    assert beats and len([e for e in events if e[0] == "claim"]) <= 2 + len(beats)


def test_a_job_lost_before_its_renewal_is_dropped_from_the_batch(wave: Wave) -> None:
    first = [job("mine", 2), job("taken", 2)]
    events = wave.run(first, [], lost=frozenset({"taken"}))
    rounds = [e[1] for e in events if e[0] == "round"]
    assert rounds and all(r == ["mine"] for r in rounds)
    assert ("complete", ["mine"]) in events
