"""Pieces go to the worker that holds their session (``shared.platform.sessions``): the API's one Lua
call queues a piece on its holder's own list while the holder serves, else on the shared list; a
worker that stops serving hands what is left of its list to the shared one in the same step; a
killed worker's list is swept; a shared list whose head waits although a worker is awake wakes
another. Real Redis, the store's own calls (the end-to-end runs are in tests/api/test_streaming.py)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from shared.asr.engine import Recognizer
from shared.dev.models.tones import synthesize
from shared.platform.sessions import (
    SPILL_SECONDS,
    AsyncSessionStore,
    Item,
    Options,
    SessionStore,
    awake_key,
    busy_key,
    inbox_key,
    journal_key,
    own_key,
    pending_key,
    servers_key,
    serving_key,
    session_key,
    stopping_key,
    wake_key,
)
from shared.platform.settings import Settings
from worker import streaming


@pytest.fixture
def store(servers: dict[str, str]) -> Iterator[SessionStore]:
    client = redis.Redis.from_url(servers["REDIS_URL"])
    yield SessionStore(client)
    client.close()


@pytest.fixture
def queue() -> str:
    return f"affinity-{uuid.uuid4().hex[:8]}"


def send(url: str, queue: str, sid: str) -> bool:
    """One piece through the API's call (arrival order); returns whether it asked for a wake-up."""

    async def go() -> bool:
        client = aioredis.Redis.from_url(url)
        try:
            store = AsyncSessionStore(client)
            _, wake = await store.piece(
                queue, sid, "t", "chunk", None, b"\0\0" * 80, uuid.uuid4().hex, "in", 60
            )
            return wake
        finally:
            await client.aclose()

    return asyncio.run(go())


def ids(store: SessionStore, key: str) -> list[tuple[str, int]]:
    return [(i.id, i.seq) for i in map(Item.from_json, store.r.lrange(key, 0, -1))]  # type: ignore[union-attr]


def serve(store: SessionStore, queue: str, worker: str) -> None:
    """What a worker's round does first: its flags refreshed (nothing pending to pop here)."""
    assert store.pop_pending(queue, 10, worker, 4242) == []


def test_a_piece_goes_to_its_holder_while_it_serves_else_to_the_shared_list(
    store: SessionStore, queue: str, servers: dict[str, str]
) -> None:
    url = servers["REDIS_URL"]
    held = store.create("t", Options(), 60)
    free = store.create("t", Options(), 60)
    store.r.hset(session_key(held), "holder", "w1")
    serve(store, queue, "w1")
    send(url, queue, held)
    send(url, queue, free)  # no holder: any worker
    assert ids(store, own_key(queue, "w1")) == [(held, 0)]
    assert ids(store, pending_key(queue)) == [(free, 0)]
    assert 0 < store.r.pttl(own_key(queue, "w1")) <= 60_000  # a killed worker's list does not stay forever

    # the holder pops its own list first, then the shared one
    items = store.pop_pending(queue, 10, "w1", 4242)
    assert [(i.id, i.seq) for i in items] == [(held, 0), (free, 0)]

    store.r.delete(serving_key(queue, "w1"))  # its flag expired (not serving)
    send(url, queue, held)
    assert ids(store, pending_key(queue)) == [(held, 1)] and ids(store, own_key(queue, "w1")) == []


def test_a_worker_that_stops_serving_hands_its_list_on_in_order(
    store: SessionStore, queue: str, servers: dict[str, str]
) -> None:
    url = servers["REDIS_URL"]
    sids = [store.create("t", Options(), 60) for _ in range(3)]
    for sid in sids:
        store.r.hset(session_key(sid), "holder", "w1")
    serve(store, queue, "w1")
    other = store.create("t", Options(), 60)
    send(url, queue, other)  # already on the shared list
    for sid in sids:
        send(url, queue, sid)
    assert store.release(queue, "w1") == 3
    # its pieces go first (they were queued before anything queued after the release)
    assert ids(store, pending_key(queue)) == [(sids[0], 0), (sids[1], 0), (sids[2], 0), (other, 0)]
    assert not store.serving(queue, "w1") and store.r.zscore(servers_key(queue), "w1") is None
    send(url, queue, sids[0])  # after the release: the shared list
    assert ids(store, pending_key(queue))[-1] == (sids[0], 1)
    assert store.r.exists(own_key(queue, "w1")) == 0


def test_a_killed_workers_list_is_swept_once_its_flag_is_gone(
    store: SessionStore, queue: str, servers: dict[str, str]
) -> None:
    url = servers["REDIS_URL"]
    dead, alive = store.create("t", Options(), 60), store.create("t", Options(), 60)
    store.r.hset(session_key(dead), "holder", "killed")
    store.r.hset(session_key(alive), "holder", "busy")
    serve(store, queue, "killed")
    serve(store, queue, "busy")
    send(url, queue, dead)
    send(url, queue, alive)
    later = time.time() + 5  # both registered more than the flag's life before "now"
    assert store.sweep(queue, now=later) == 0  # both flags still set: nothing moves
    store.r.delete(serving_key(queue, "killed"))  # its flag expired: it stopped refreshing it
    assert store.sweep(queue, now=later) == 1
    assert ids(store, pending_key(queue)) == [(dead, 0)]
    assert ids(store, own_key(queue, "busy")) == [(alive, 0)]
    assert store.r.zscore(servers_key(queue), "killed") is None


def test_a_shared_list_that_waits_although_a_worker_is_awake_wakes_another(
    store: SessionStore, queue: str, servers: dict[str, str]
) -> None:
    url = servers["REDIS_URL"]
    sid = store.create("t", Options(), 60)
    assert send(url, queue, sid) is True  # nobody awake: this piece wakes a worker
    assert send(url, queue, sid) is False  # one wake-up per WAKE_MS
    store.r.set(awake_key(queue), "1", px=10_000)  # a worker drains the queue
    store.r.delete(wake_key(queue))
    assert send(url, queue, sid) is False  # the list's head is fresh: the awake worker takes it
    head = Item.from_json(store.r.lindex(pending_key(queue), 0))  # type: ignore[arg-type]
    stale = Item(head.id, head.seq, head.kind, head.reply, time.time() - SPILL_SECONDS - 0.1, head.inbox)
    store.r.lset(pending_key(queue), 0, stale.to_json())
    assert send(url, queue, sid) is True  # it waited SPILL_SECONDS: the awake ones are saturated
    assert send(url, queue, sid) is False


@pytest.fixture
def live(servers: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, list[Any]]:
    """``streaming.run`` on real Redis with the Celery sends recorded (no broker needed)."""
    settings = Settings(redis_url=servers["REDIS_URL"])  # type: ignore[call-arg]
    sent: list[Any] = []
    monkeypatch.setattr(streaming, "enqueue_stream", lambda queue, **kw: sent.append((queue, kw)))
    monkeypatch.setattr(streaming, "IDLE_SECONDS", 5.0)
    monkeypatch.setattr(streaming, "RUN_SECONDS", 0.3)
    monkeypatch.setattr(streaming, "get_recognizer", lambda _: None)  # no piece here needs the model
    monkeypatch.setattr(streaming, "_handed_over", None)
    monkeypatch.setattr(streaming, "_serving", None)
    return settings, sent


@pytest.fixture
def modelled(
    live: tuple[Settings, list[Any]], tone_model: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Settings, list[Any], SessionStore]:
    """``live`` with the tone model, and no states or hand-on left from an earlier test."""
    rec = Recognizer.load(tone_model, threads=1)
    monkeypatch.setattr(streaming, "get_recognizer", lambda _: rec)
    monkeypatch.setattr(streaming, "_shed", streaming.Shedding())
    streaming._states.clear()
    settings, sent = live
    return settings, sent, streaming.store_for(settings)


def test_a_run_whose_time_is_up_hands_over_to_its_own_next_run(
    live: tuple[Settings, list[Any]], queue: str
) -> None:
    settings, sent = live
    streaming.run(queue, settings, node="node-a@host")
    store = streaming.store_for(settings)
    me = streaming.WORKER_ID
    assert sent == [(queue, {"node": "node-a@host", "holder": me})]
    assert store.serving(queue, me)  # kept for the next run: pieces keep coming to this process

    # a run that a wake-up started meanwhile (the process was busy) takes the wake-up and sends no
    # second hand-over while the first is on its way; the hand-over's own run sends the next one
    store.r.set(wake_key(queue), "1")
    streaming.run(queue, settings, node="node-a@host")
    assert len(sent) == 1 and not store.r.exists(wake_key(queue)) and store.serving(queue, me)
    streaming.run(queue, settings, node="node-a@host", holder=me)
    assert sent == [(queue, {"node": "node-a@host", "holder": me})] * 2


def test_a_pool_process_that_exits_while_serving_hands_its_list_on(
    live: tuple[Settings, list[Any]], queue: str
) -> None:
    """Its run handed over to its next run (still serving), then the process exits before that
    run starts: a warm shutdown whose mark came after the run's last look. Celery's
    worker_process_shutdown in the pool process moves its list to the shared one and wakes
    another worker at once, instead of its pieces waiting for its flag to expire and the API's
    re-queue."""
    settings, sent = live
    streaming.run(queue, settings, node="node-a@host")  # its time is up: the next run is on its way
    store = streaming.store_for(settings)
    me = streaming.WORKER_ID
    assert store.serving(queue, me)
    store.r.rpush(own_key(queue, me), Item("s1", 3, "chunk", "n1", time.time()).to_json())  # queued for it
    sent.clear()
    streaming._process_ending()  # as Celery calls it
    assert not store.serving(queue, me) and ids(store, own_key(queue, me)) == []
    assert ids(store, pending_key(queue)) == [("s1", 3)] and sent == [(queue, {})]
    streaming._process_ending()  # it no longer serves: nothing more
    assert sent == [(queue, {})]


def test_a_run_on_a_stopping_node_or_an_idle_one_stops_serving(
    live: tuple[Settings, list[Any]], queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, sent = live
    store = streaming.store_for(settings)
    monkeypatch.setattr(streaming, "get_settings", lambda: settings)
    streaming._stopping(sender="node-b@host")  # Celery's worker_shutting_down: its warm shutdown began
    assert store.r.exists(stopping_key("node-b@host"))
    streaming.run(queue, settings, node="node-b@host")
    # no hand-over to its own next run: another worker is woken, and this one stops serving
    assert sent == [(queue, {})] and not store.serving(queue, streaming.WORKER_ID)
    sent.clear()
    streaming._started(sender=SimpleNamespace(hostname="node-b@host"))  # worker_ready: started again
    assert not store.r.exists(stopping_key("node-b@host"))

    monkeypatch.setattr(streaming, "IDLE_SECONDS", 0.1)
    monkeypatch.setattr(streaming, "RUN_SECONDS", 5.0)
    started = time.monotonic()
    streaming.run(queue, settings, node="node-a@host")  # nothing to do: it ends after 0.1 s
    assert time.monotonic() - started < 2.0
    assert sent == [] and not store.serving(queue, streaming.WORKER_ID)


def test_the_next_run_on_another_process_of_the_node_takes_the_list_over(
    live: tuple[Settings, list[Any]], queue: str, servers: dict[str, str]
) -> None:
    """A node with several processes may give the next run to another one: it releases the first
    one's list (that process is idle: its run ended) and serves the pieces itself."""
    settings, _ = live
    store = streaming.store_for(settings)
    sid = store.create("t", Options(), 60)
    store.r.hset(session_key(sid), "holder", "sibling")
    serve(store, queue, "sibling")
    send(servers["REDIS_URL"], queue, sid)
    assert ids(store, own_key(queue, "sibling")) == [(sid, 0)]
    assert store.release(queue, "nobody") == 0  # a no-op on an unknown worker
    store.r.hset(session_key(sid), "finished", "1")  # answered at once, without the model
    streaming.run(queue, settings, node="node-a@host", holder="sibling")
    assert not store.serving(queue, "sibling") and store.r.exists(own_key(queue, "sibling")) == 0
    assert store.r.llen(pending_key(queue)) == 0
    answer = json.loads(store.r.lpop(inbox_key("in")))  # type: ignore[arg-type]
    assert answer["to"].startswith(f"{sid}:") and answer["error"]["code"] == "session_finished"


def test_an_over_capacity_worker_hands_half_its_sessions_on_with_a_checkpoint(
    servers: dict[str, str], modelled: tuple[Settings, list[Any], SessionStore], queue: str
) -> None:
    """A round whose pieces waited past TONE_STREAM_SHED_LAG_SECONDS while another worker serves
    with room (holding none): the next round saves half of its sessions with a checkpoint at their
    last piece and no holder (so their next pieces go to the shared list and whoever takes them
    replays nothing), keeps the other half, and the worker leaves the shared list to the others
    for a while. Alone, or beside busy ones only, it wakes another worker."""
    settings, sent, store = modelled
    audio, _ = synthesize(["кот"])
    sids = [store.create("t", Options(), 60) for _ in range(4)]

    def round_of(seq: int) -> None:
        items = []
        for sid in sids:
            store.r.hset(journal_key(sid), str(seq), audio[2400 * seq : 2400 * (seq + 1)].tobytes())
            items.append(Item(sid, seq, "chunk", uuid.uuid4().hex, time.time() - 1.0))
        assert streaming.run_round(store, settings, items)[0] == 4

    round_of(0)
    me = streaming.WORKER_ID
    assert [store.r.hget(session_key(s), "holder") for s in sids] == [me.encode()] * 4

    streaming.overloaded(store, queue, 4)  # nobody else serves: it wakes one
    assert sent == [(queue, {})] and streaming._shed.count == 0 and streaming._shed.takes_shared()

    streaming._shed.last = float("-inf")
    serve(store, queue, "other")
    store.busy(queue, "other")  # the other one is over capacity too: nothing is handed to it
    store.r.delete(wake_key(queue))  # the first wake-up's WAKE_MS is over
    streaming.overloaded(store, queue, 4)
    assert streaming._shed.count == 0 and streaming._shed.takes_shared()
    assert sent == [(queue, {})] * 2  # it wakes a third one instead

    streaming._shed.last = float("-inf")
    store.r.delete(busy_key(queue, "other"))
    streaming.overloaded(store, queue, 4)
    assert streaming._shed.count == 2 and not streaming._shed.takes_shared()
    round_of(1)
    fields = [store.load_fields(s, ["holder", "ckpt", "next_seq"]) for s in sids]
    handed = [s for s, f in zip(sids, fields) if f["holder"] == b""]
    kept = [s for s, f in zip(sids, fields) if f["holder"] == me.encode()]
    assert len(handed) == 2 and len(kept) == 2
    for sid, f in zip(sids, fields):
        if sid in handed:  # checkpointed at its last piece: the journal is empty, nothing to replay
            assert f["ckpt"] == f["next_seq"] == b"2" and sid not in streaming._states
            assert store.r.hlen(journal_key(sid)) == 0
        else:
            assert f["ckpt"] == b"0" and sid in streaming._states
    assert streaming._shed.count == 0

    # a handed-on session's next piece goes to the shared list, a kept one's to this worker's list
    serve(store, queue, me)
    for sid in sids:
        store.r.hset(session_key(sid), "accepted", "2")  # the API's count (this test skipped it)
    send(servers["REDIS_URL"], queue, handed[0])
    send(servers["REDIS_URL"], queue, kept[0])
    assert ids(store, pending_key(queue)) == [(handed[0], 2)]
    assert ids(store, own_key(queue, me)) == [(kept[0], 2)]


def test_a_hand_on_evens_out_the_loads_and_sends_nothing_back(
    store: SessionStore, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each serving worker publishes how many sessions it holds; one over capacity hands half the
    difference to the least loaded other one that is not busy, so both end up holding as many,
    and two workers that are both over move nothing (no sessions back and forth). Woken with no
    one to take its sessions, the next round over the lag hands on at once: only a hand-on waits
    SHED_EVERY for its effect."""
    sent: list[str] = []
    monkeypatch.setattr(streaming, "enqueue_stream", lambda q, **kw: sent.append(q))
    monkeypatch.setattr(streaming, "_shed", streaming.Shedding())
    store.r.set(serving_key(queue, "odd"), "n/a", px=3000)  # a flag without a count: no taker
    store.r.zadd(servers_key(queue), {"odd": time.time()})
    assert store.least_loaded(queue, "me") is None
    streaming.overloaded(store, queue, 8)  # alone: a wake-up, and nothing handed on
    assert sent == [queue] and streaming._shed.count == 0

    store.pop_pending(queue, 10, "a", 4242, load=7)  # serving, 7 sessions
    store.pop_pending(queue, 10, "b", 4243, load=3)
    store.busy(queue, "b")  # over capacity itself: not a taker
    assert store.least_loaded(queue, "me") == 7
    streaming.overloaded(store, queue, 8)  # 8 against 7: both are full, nothing moves
    assert streaming._shed.count == 0 and sent == [queue]  # the first wake-up is not taken yet

    store.r.delete(busy_key(queue, "b"))
    assert store.least_loaded(queue, "me") == 3
    streaming.overloaded(store, queue, 8)  # 8 and 3 -> 6 and 5
    assert streaming._shed.count == 2 and not streaming._shed.takes_shared()
    streaming._shed.count = 0
    store.pop_pending(queue, 10, "b", 4243, load=1)
    streaming.overloaded(store, queue, 6)  # the effect shows first: SHED_EVERY
    assert streaming._shed.count == 0
    assert store.r.exists(busy_key(queue, streaming.WORKER_ID))  # nobody hands sessions to it


def test_a_workers_load_counts_the_sessions_it_held_lately(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "_states", type(streaming._states)())
    monkeypatch.setattr(streaming, "_touched", {})
    for sid in ("a", "b", "c"):
        streaming._remember(sid, b"rev", [])
    streaming._touched["b"] -= streaming.HELD_SECONDS  # no piece for a while: the call went quiet
    del streaming._states["c"]  # finalized, or taken by a round and not put back
    assert streaming.load() == 1
    assert list(streaming._touched) == ["a"]


@pytest.mark.parametrize("late", [False, True], ids=["during the run", "in its last moments"])
def test_a_worker_whose_node_shuts_down_hands_every_session_on_with_a_checkpoint(
    servers: dict[str, str],
    modelled: tuple[Settings, list[Any], SessionStore],
    queue: str,
    monkeypatch: pytest.MonkeyPatch,
    late: bool,
) -> None:
    """A rolling restart: once the node's warm shutdown is marked, the run saves each session it
    holds at its next piece with a checkpoint and no holder (whoever takes it next replays
    nothing), wakes another worker, and ends as soon as it holds no session, not at its 5 s. A
    mark that comes after the run's last look (late): the run goes on up to HAND_ON_SECONDS to
    hand its sessions on before it ends."""
    settings, sent, store = modelled
    monkeypatch.setattr(streaming, "RUN_SECONDS", 5.0)
    monkeypatch.setattr(streaming, "IDLE_SECONDS", 1.0)
    audio, _ = synthesize(["кот"])
    sids = [store.create("t", Options(), 60) for _ in range(3)]
    for sid in sids:
        store.r.hset(journal_key(sid), "0", audio[:2400].tobytes())
    items = [Item(sid, 0, "chunk", uuid.uuid4().hex, time.time()) for sid in sids]
    assert streaming.run_round(store, settings, items)[0] == 3  # now this worker holds them
    me = streaming.WORKER_ID
    serve(store, queue, me)
    for sid in sids:
        store.r.hset(session_key(sid), "accepted", "1")  # the API's count (this test skipped it)
        store.r.hset(journal_key(sid), "1", audio[2400:4800].tobytes())
        send(servers["REDIS_URL"], queue, sid)
    assert [i for i, _ in ids(store, own_key(queue, me))] == sids
    last = 1
    if late:  # the mark comes after the run's first look, and the next pieces after its time is up
        monkeypatch.setattr(streaming, "RUN_SECONDS", 0.4)
        monkeypatch.setattr(streaming, "SWEEP_SECONDS", 100.0)

        def more() -> None:
            for sid in sids:
                store.r.hset(session_key(sid), "accepted", "2")
                store.r.hset(journal_key(sid), "2", audio[4800:7200].tobytes())
                send(servers["REDIS_URL"], queue, sid)

        threading.Timer(0.2, store.r.set, args=(stopping_key("node-c@host"), "1")).start()
        threading.Timer(0.6, more).start()
        last = 2
    else:
        store.r.set(stopping_key("node-c@host"), "1", ex=10)
    started = time.monotonic()
    streaming.run(queue, settings, node="node-c@host")
    assert time.monotonic() - started < 2.5  # ended once it held nothing, not after 5 s
    for sid in sids:
        f = store.load_fields(sid, ["holder", "ckpt", "next_seq"])
        assert f["holder"] == b"" and f["ckpt"] == f["next_seq"] == str(last + 1).encode()
        assert store.r.hlen(journal_key(sid)) == 0  # nothing to replay
    store.r.delete(stopping_key("node-c@host"))
    assert sent == [(queue, {})]  # another worker woken; no hand-over to its own next run
    assert not store.serving(queue, me) and not streaming._states and streaming._shed.count == 0
