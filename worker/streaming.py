"""``tone.stream``: advance live streaming sessions, many together in one batched model call.

The API journals a chunk's audio in Redis, pushes a work item onto ``tone:stream:pending:<queue>``
and sends this task only when no worker is draining that list (its ``awake`` flag; one wake-up
per second at most). A run pops every pending item (the first item of up to ROUND_SESSIONS
distinct sessions per round; a session's later items wait for the next round), locks each
session, loads its state (``shared.platform.sessions`` documents the layout), decodes the audio,
advances all of them in ONE ``Recognizer.advance`` call (model calls of up to MODEL_BATCH
streams), saves each state, answer and phrase list, pushes the replies to the waiting APIs'
inboxes and releases the locks. It keeps going while items arrive (waiting up to IDLE_SECONDS for
the next one, up to RUN_SECONDS in all), then leaves the rest to a fresh task. A bad chunk gets an
error answer for its session only; it consumes its seq. A chunk's answer also carries
``partial``: the open phrase's text so far (the splitter's buffer, greedy-decoded), which the
WebSocket protocols send as partial results.

State affinity: Redis holds every session's state and stays the one source of truth, but a worker
process also keeps the states it saved last (up to CACHED_SESSIONS), under the random ``rev`` each
save writes. When the session's ``rev`` in Redis is still the one it saved, the worker uses its own
copy and reads only the session's small fields; any other writer changes ``rev`` and the state is
read from Redis again. A live session's pieces thus skip reading hundreds of KiB per piece.

Pieces go to the worker that holds their session. Each save names the worker (the session's
``holder``); while that worker serves (its ``serving`` flag, refreshed every round), the API queues
the session's pieces on the worker's own list, which it pops before the shared one. So with several
live workers each session stays with one process and nothing is replayed (before, the queue was
drained by one worker at a time, and every 5 s run that Celery gave to another process replayed
every session from its checkpoint: ~1 s of model time at 12 cost-model sessions, every 5 s). A run
that reaches RUN_SECONDS while it serves hands over to its own next run (a ``tone.stream`` task on
its Celery node's direct queue, ``worker_direct``), its flag and list kept meanwhile; a run that
idles, or whose node is shutting down, stops serving (its list moves to the shared one in the same
Lua call that drops its flag). A killed worker's list is swept to the shared list by any serving
worker once its flag expires. Several workers drain the shared list at once: the API wakes another
one when the shared list's head has waited SPILL_SECONDS although a worker is awake.

Checkpoints and the journal: the states (hundreds of KiB) are written to Redis only every
``TONE_STREAM_CHECKPOINT_SECONDS`` (or CHECKPOINT_PIECES pieces), not every piece; the audio of the
chunks since (a few KB each, as sent) stays in the session's journal. A worker without the states
(the one that had them died, or another worker took a piece) loads the checkpoint and replays the
journal in one batched call before the piece: since streaming equals offline for any chunking, the
states it reaches are exactly the ones lost, and the phrases it closes again are dropped (they were
answered and saved already).
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import redis
from celery.signals import worker_process_shutdown, worker_ready, worker_shutting_down

from shared.asr.audio import decode_raw, read_audio, resample
from shared.asr.decoder import GreedyDecoder
from shared.asr.engine import Decoding
from shared.asr.errors import EmptyAudioError, StreamStateError, ToneError
from shared.asr.stream import StreamState
from shared.asr.types import LABELS, SAMPLE_RATE, Phrase
from shared.platform.sessions import (
    KEEP_ANSWERS,
    LAYOUT,
    WAKE_MS,
    Item,
    Options,
    Save,
    SessionError,
    SessionStore,
    awake_key,
    expired,
    finished,
    journal_key,
    journal_seconds,
    pending_key,
    stopping_key,
    wake_key,
)
from shared.platform.settings import Settings, get_settings
from shared.queue import STREAM_TASK, enqueue_stream
from shared.text.display import display_phrases
from shared.text.options import TextOptions
from worker.celery_app import app
from worker.jobs import get_recognizer
from worker.resampler import LiveResampler

log = logging.getLogger("tone.worker.stream")

# Sessions per round: every session with a piece pending, up to this. A round's Redis round trips
# are the same for 1 or 256 sessions; with 64 per round, 200 streams had their items popped and
# pushed back round after round (a tenth of the live worker at 200 streams, py-spy).
ROUND_SESSIONS = 256
MODEL_BATCH = 64  # streams per model call
POP = 512  # items popped per round (a session's later pieces go back for the next round)
RUN_SECONDS = 5.0  # a run keeps draining the pending list this long, then hands over
CACHED_SESSIONS = 256  # states a worker process keeps after saving them (see the docstring)
SMALL_FIELDS = ["ttl", "next_seq", "final", "finished", "options", "held", "rev", "ckpt", "ckpt_t", "phrases"]
# a session's checkpoint, as ``load_states`` reads it (two streams at most: a stereo session's)
CHECKPOINT_FIELDS = ("state:0", "state:1", "state", "ckpt_held", "ckpt_rs")
CHECKPOINT_PIECES = 32  # at most this many pieces between two checkpoints (bounds a replay)
IDLE_SECONDS = 1.0  # a run waits this long for the next item before it ends
SWEEP_SECONDS = 1.0  # how often a serving worker releases the lists of killed ones
# a round whose oldest piece waited TONE_STREAM_SHED_LAG_SECONDS: the worker is over capacity, so
# it hands sessions to the least loaded other worker (half the difference; see ``overloaded``),
SHED_HOLD = 2.0  # ... leaves the shared list to them for this long,
SHED_EVERY = 3.0  # ... and does so at most this often (the effect shows first)
HAND_ON_SECONDS = 2.0  # a run on a node shutting down goes on this long at most, handing sessions on


@dataclass
class Shedding:
    """An over-capacity worker's hand-over of sessions to the other serving workers."""

    count: int = 0  # sessions of the next rounds to hand on
    last: float = float("-inf")  # monotonic time of the last decision
    hold_until: float = 0.0  # the shared list is left to the others until then

    def takes_shared(self) -> bool:
        return time.monotonic() >= self.hold_until


_shed = Shedding()
# monotonic time this process sent its next run (to its node's own queue) and has not seen it start:
# a run that ends meanwhile sends no other (else each wake-up taken by a busy process would start
# a chain of its own); one not seen for HANDOVER_STALE s (a sibling process took it) no longer counts
_handed_over: float | None = None
HANDOVER_STALE = 30.0
# the queue this process still serves between its runs (its next run is on its way), else None
_serving: str | None = None
# Sessions stepped while the decoder pool still decodes one of their phrases, with their streams'
# Decodings: each stays locked (its next pieces wait) and is saved and answered by ``settle`` once
# they are decoded, while the rounds of the other sessions go on (without a pool: always empty).
_decoding: list[tuple[Work, list[Decoding]]] = []
DECODE_POLL = 0.005  # with sessions held and no piece pending: how long a look at the pool waits
# sid -> (rev, states, resampler): an optimisation only; Redis is the truth (a stale rev: read it)
_states: OrderedDict[str, tuple[bytes, list[StreamState], LiveResampler | None]] = OrderedDict()


# sid -> monotonic time its last piece was saved here: the sessions this worker holds now (its load)
_touched: dict[str, float] = {}
HELD_SECONDS = 3.0  # a session counts in the load while its last piece is this recent


def _remember(
    sid: str, rev: bytes, states: list[StreamState], resampler: LiveResampler | None = None
) -> None:
    _states[sid] = (rev, states, resampler)
    _states.move_to_end(sid)
    _touched[sid] = time.monotonic()
    while len(_states) > CACHED_SESSIONS:
        _states.popitem(last=False)


def load() -> int:
    """The sessions this worker holds that had a piece within HELD_SECONDS (published with its
    ``serving`` flag: a worker over capacity hands sessions to the least loaded one)."""
    now = time.monotonic()
    for sid in [s for s, t in _touched.items() if now - t >= HELD_SECONDS or s not in _states]:
        del _touched[sid]
    return len(_touched)


IDLE_SLEEP = 0.02  # when a round could only defer (locks held elsewhere, earlier chunks queued)
CONTAINER_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS")

_store: tuple[int, SessionStore] | None = None


def store_for(settings: Settings) -> SessionStore:
    """One Redis client per process (after a fork, a new one)."""
    global _store, WORKER_ID
    if _store is None or _store[0] != os.getpid():
        _store = (os.getpid(), SessionStore(redis.Redis.from_url(settings.redis_url)))
        WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    return _store[1]


WORKER_ID = ""  # this process's name in its locks and heartbeat (set with its store)


def stream_count(options: Options) -> int:
    """Engine streams of a session: two for a stereo one (agent = channel 0, client = 1), split;
    else one (more channels are averaged)."""
    return 2 if options.channels == 2 else 1


def new_resampler(options: Options) -> LiveResampler | None:
    """The session's resampler: raw audio at another rate than 8 kHz is resampled with state."""
    return (
        None
        if options.sample_rate == SAMPLE_RATE
        else LiveResampler(options.sample_rate, stream_count(options))
    )


def decode_chunk(data: bytes, options: Options, resampler: LiveResampler | None = None) -> np.ndarray:
    """A chunk's audio as int16 at 8 kHz shaped (n, streams): a WAV (or FLAC/Ogg) piece, else raw
    (interleaved) samples in the session's encoding, channels and rate. A stereo session's two
    channels are kept apart; other multi-channel audio is averaged. Raw audio at another rate goes
    through the session's ``resampler`` (its state carried from piece to piece; the output lags
    the input by a few ms until the session's end)."""
    count = stream_count(options)
    if data[:4] in CONTAINER_MAGIC:
        try:
            samples = read_audio(io.BytesIO(data), channels="split" if count > 1 else "mix")
        except EmptyAudioError:
            return np.zeros((0, count), np.int16)
        if samples.shape[1] != count:
            raise ValueError(f"a piece of this session must have {count} channel(s), not {samples.shape[1]}")
        return samples
    samples = decode_raw(data, encoding=options.encoding, channels=options.channels)  # type: ignore[arg-type]
    if samples.shape[1] > count:
        samples = np.round(samples.astype(np.float64).mean(axis=1, keepdims=True)).astype(np.int16)
    if resampler is not None:
        return resampler.feed(samples)
    if options.sample_rate != SAMPLE_RATE and len(samples):
        samples = resample(samples, options.sample_rate)
    return samples


def ok(body: dict[str, Any]) -> dict[str, Any]:
    return {"status": 200, "body": body}


@dataclass
class Work:
    """An item that advances its session this round."""

    item: Item
    token: str
    ttl: int
    states: list[StreamState]  # one per channel
    samples: np.ndarray | None  # (n, channels)
    held: list[list[Any]] = field(default_factory=list)  # [start_frame, channel, end_frame, phrase]
    cached: bool = False  # the states came from this worker's cache, not from Redis
    ckpt: int = 0  # the session's checkpoint (next_seq when its states were last written)
    ckpt_t: float = 0.0
    replay: list[np.ndarray] = field(default_factory=list)  # journaled chunks to apply first
    # a layout-3 session's phrases, still in its hash's ``phrases`` field: this save moves them to
    # the session's list (layout 4 keeps none there: a piece saves only the phrases it released)
    phrases: list[dict[str, Any]] = field(default_factory=list)
    text: TextOptions = field(default_factory=TextOptions)  # the session's written-form options
    resampler: LiveResampler | None = None  # raw audio at another rate: the resampler's state


class Prefetched:
    """The store, with what a round's take read of each session already in hand (one round trip
    for all sessions of the round); anything else goes to the store itself."""

    def __init__(
        self, store: SessionStore, taken: dict[str, tuple[set[str], dict[str, bytes], bytes | None]]
    ) -> None:
        self.store = store
        self.taken = taken  # by session: (the field names asked for, those it has, the chunk)

    def load_fields(self, sid: str, names: list[str]) -> dict[str, bytes]:
        """The fields read with the round's take (those ``names`` the session has), when every one
        of ``names`` was asked for then; else from the store."""
        if sid in self.taken:
            asked, got, _ = self.taken[sid]
            if asked.issuperset(names):
                return {n: got[n] for n in names if n in got}
        return self.store.load_fields(sid, names)

    def chunk(self, sid: str, seq: int) -> bytes | None:
        return self.taken[sid][2] if sid in self.taken else self.store.chunk(sid, seq)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def run(queue: str, settings: Settings | None = None, node: str = "", holder: str = "") -> int:
    """Serve the queue's live pieces: this worker's own list and the shared one; returns the number
    of items handled. ``node``: this process's Celery node (for the hand-over to its next run);
    ``holder``: the worker whose run this one continues (another process of the same node: its
    list is released to the shared one first)."""
    global _handed_over, _serving
    settings = settings or get_settings()
    store = store_for(settings)
    if holder == WORKER_ID:
        _handed_over = None  # this is that next run
    elif holder:
        store.release(queue, holder)  # that process is idle (its run ended): its sessions move
    deadline = time.monotonic() + RUN_SECONDS
    handled = 0
    idle_until = time.monotonic() + IDLE_SECONDS
    last_round = 0.0
    swept = 0.0
    idle = False
    woken = not holder  # a wake-up started it (else: its own or a sibling's hand-over)
    stopping = False  # its node is in warm shutdown: it hands every session on

    def node_stopping() -> bool:
        return bool(node) and bool(store.r.exists(stopping_key(node)))

    while True:
        if time.monotonic() >= deadline:
            if stopping or not _states or not node_stopping():
                break
            # the node's warm shutdown began after the last look: hand its sessions on first
            stopping = True
            deadline = hand_all_on(store, queue)
        settle(store, settings, queue=queue)  # answers pieces counted in the round that stepped them
        # with the flags and heartbeat
        items = store.pop_pending(
            queue, POP, WORKER_ID, os.getpid(), shared=_shed.takes_shared(), load=load()
        )
        if woken:  # the wake-up that started this run is taken: the next one may go out
            store.r.delete(wake_key(queue))
            woken = False
        if time.monotonic() - swept >= SWEEP_SECONDS:
            store.sweep(queue)
            swept = time.monotonic()
            if not stopping and node_stopping():
                stopping = True
                deadline = min(deadline, hand_all_on(store, queue))
        if stopping and not items and not _states and not _decoding:
            break  # every session it held was handed on: the shutdown need not wait for the deadline
        if not items and _decoding:  # sessions wait for the pool: look again soon, at both
            settle(store, settings, timeout=DECODE_POLL, queue=queue)
            idle_until = time.monotonic() + IDLE_SECONDS
            continue
        waited = not items  # its first piece came from a wait: a burst may be starting
        if not items:
            wait = min(idle_until, deadline) - time.monotonic()
            if wait <= 0:
                idle = time.monotonic() < deadline
                if idle:
                    break
                continue  # the run's time is up: the loop's top ends it (or hands its sessions on)
            timeout = max(0.01, min(wait, 0.5))
            items = store.wait_pending(queue, POP, timeout, WORKER_ID, shared=_shed.takes_shared())
            if not items:
                continue
        limit = linger_limit(last_round)
        if burst_starting(items, waited, limit, time.time()):
            items += linger(store, queue, len(items), limit=limit)
        idle_until = time.monotonic() + IDLE_SECONDS
        round_started = time.monotonic()
        done, later, elsewhere = run_round(store, settings, items)
        last_round = time.monotonic() - round_started
        handled += done
        store.push_back(queue, later, WORKER_ID)
        store.push_back(queue, elsewhere)  # locked by another worker: where any worker looks
        waiting = {id(i) for i in later + elsewhere} | {id(w.item) for w, _ in _decoding}  # held: by settle
        answered = [i for i in items if id(i) not in waiting]
        store.round_done(queue, answered, time.time())
        if answered and time.time() - min(i.t for i in answered) > settings.stream_shed_lag_seconds:
            overloaded(store, queue, load())
        if (later or elsewhere) and not done:
            time.sleep(IDLE_SLEEP)
    drain(store, settings, queue)
    if not idle and node and not stopping and not node_stopping():
        # still serving: its next run, on this node's own queue, starts within milliseconds and
        # finds the flags and its list as this one leaves them (no replay anywhere)
        now = time.monotonic()
        if _handed_over is None or now - _handed_over > HANDOVER_STALE:
            enqueue_stream(queue, node=node, holder=WORKER_ID)
            _handed_over = now
        _serving = queue
        return handled
    if stopping:
        _shed.count, _shed.hold_until = 0, 0.0
    stop_serving(store, queue)
    return handled


def stop_serving(store: SessionStore, queue: str) -> None:
    """This process stops serving ``queue``: its list moves to the shared one, and the flags go."""
    global _serving
    _serving = None
    store.release(queue, WORKER_ID)
    # the API wakes a worker only while no flag is set: after the flags are gone, nothing is left
    # unseen (a piece queued before the DEL is seen by LLEN, one after it sends a wake-up)
    store.r.delete(awake_key(queue), wake_key(queue))
    if store.r.llen(pending_key(queue)):
        enqueue_stream(queue)


def overloaded(store: SessionStore, queue: str, sessions: int) -> None:
    """A round's oldest piece waited TONE_STREAM_SHED_LAG_SECONDS: this worker, holding
    ``sessions``, carries more than it can advance in time, and says so (``busy``: nobody hands
    sessions to it). When another serving worker that is not busy holds at least 2 fewer, it hands
    on half the difference, so that both hold as many (each saved with a checkpoint and no holder at
    its next piece: its next pieces go to the shared list, and whoever takes them loads the
    checkpoint, nothing to replay), and leaves the shared list, new sessions included, to the others
    for SHED_HOLD s. Sessions never go back and forth between two workers that are both over: the
    difference is 0 or 1 then. Otherwise it wakes another live worker, if the deployment has one
    idle (unless a wake-up is already waiting to be taken); once that one serves, the next round
    over the lag hands it its share (only hand-ons wait SHED_EVERY for their effect to show)."""
    store.busy(queue, WORKER_ID)  # nobody hands sessions to this worker meanwhile
    now = time.monotonic()
    if now - _shed.last < SHED_EVERY:
        return
    other = store.least_loaded(queue, WORKER_ID)
    if other is not None and sessions - other >= 2:
        _shed.last = now
        _shed.count = (sessions - other) // 2
        _shed.hold_until = now + SHED_HOLD
        log.info(
            "stream: over capacity (%d sessions, another %d): handing %d on", sessions, other, _shed.count
        )
    else:
        wake_another(store, queue)


def hand_all_on(store: SessionStore, queue: str) -> float:
    """This worker's node is in warm shutdown (a rolling restart): the next piece of every session
    it holds is saved with a checkpoint and no holder, as in shedding, so whoever takes the session
    next replays nothing; it leaves the shared list alone meanwhile and wakes another worker.
    Returns until when the run may go on handing sessions on (HAND_ON_SECONDS)."""
    until = time.monotonic() + HAND_ON_SECONDS
    _shed.count = CACHED_SESSIONS + ROUND_SESSIONS  # all of them
    _shed.hold_until = until
    log.info("stream: the node is shutting down: handing %d sessions on", len(_states))
    wake_another(store, queue)
    return until


def wake_another(store: SessionStore, queue: str) -> None:
    """A Celery wake-up for another live worker of the queue, unless one already waits to be taken
    (the ``wake`` flag, as the API's)."""
    if store.r.set(wake_key(queue), "1", nx=True, px=WAKE_MS):
        enqueue_stream(queue)


LINGER_SECONDS = 0.030  # a round waits at most this long for the rest of a burst of pieces,
LINGER_SHARE = 0.2  # ... and at most this share of the last round's time, but
LINGER_FLOOR = 0.010  # ... at least this long (the earlier fixed wait),
LINGER_GAP = 0.006  # ... and stops waiting once no piece came for this long
LINGER_POLL = 0.002


def linger_limit(last_round: float) -> float:
    """How long a round may wait for the rest of a burst: a piece that misses the round waits for
    all of it, so waiting is worth a share of what a round takes (the cost model's rounds, ~150 ms:
    30 ms), and no more than the earlier fixed 10 ms where rounds are cheap (the tones model at 200
    `/v1/stream` sessions, where pieces trickle in without a gap and a 30 ms wait every round put
    p95 256 / 262 → 322 / 368 ms)."""
    return min(LINGER_SECONDS, max(LINGER_FLOOR, LINGER_SHARE * last_round))


def burst_starting(items: list[Item], waited: bool, limit: float, now: float) -> bool:
    """Whether a round should linger for more pieces: only at the start of a burst, when the worker
    had been waiting for its first piece (``waited``) or every piece in hand was queued within the
    last ``limit`` s. A round that starts on pieces which queued up during the last round (the
    worker is busy, and calls that began at unrelated moments send at unrelated moments) does not
    wait: its pieces have waited already, more arrive all the time, and every ms of a busy worker's
    rounds is paid again by the pieces arriving meanwhile (cost model, 24 streams started at random
    moments, ``/v1/stream``, three interleaved pairs: p95 448 / 442 / 452 ms lingering every round,
    338 / 454 / 340 with this rule; streams in step unchanged). The times are the API's clock: an
    API host whose clock runs ahead makes pieces look new, and rounds linger as they did before."""
    return waited or now - min(i.t for i in items) < limit


def linger(
    store: SessionStore, queue: str, have: int, *, gap: float = LINGER_GAP, limit: float = LINGER_SECONDS
) -> list[Item]:
    """Items that arrive while more keep arriving (looked for every LINGER_POLL s; the wait ends
    ``gap`` s after the last arrival, and ``limit`` s after it began): the rest of a burst joins
    this round. Clients in step (calls opened together, a sender's timer) send their pieces within
    a few ms; a round that started on the first few made the others wait for it and then for their
    own: the tail of the cost model's latencies, where a round is hundreds of ms of model time.
    The gap is what an API process takes per HTTP piece (~4 ms here): with the earlier rule (stop
    at the first empty look, 2 ms) HTTP bursts of 16 went into rounds of 9 on average."""
    got: list[Item] = []
    now = last = time.monotonic()
    end = now + limit
    while have + len(got) < POP and now < end:
        time.sleep(LINGER_POLL)
        more = store.pop_pending(queue, POP - have - len(got), WORKER_ID, shared=_shed.takes_shared())
        now = time.monotonic()
        if more:
            got += more
            last = now
        elif now - last >= gap:
            break
    return got


def run_round(
    store: SessionStore, settings: Settings, items: list[Item]
) -> tuple[int, list[Item], list[Item]]:
    """One round: the first item of each session (up to ROUND_SESSIONS) in one batched advance.
    Returns (items answered, items to put back on this worker's list, items of sessions another
    worker has locked)."""
    taken: dict[str, Item] = {}
    later: list[Item] = []
    for item in items:
        if item.id in taken or len(taken) >= ROUND_SESSIONS:
            later.append(item)
        else:
            taken[item.id] = item
    work: list[Work] = []
    done = 0
    # a session whose states this worker does not hold (new, or taken over) reads its checkpoint's
    # fields in the same step: before, each one's own HMGET, one after another, in a new burst's round
    wanted = [
        (
            i.id,
            [*SMALL_FIELDS, f"answer:{i.seq}", *(() if i.id in _states else CHECKPOINT_FIELDS)],
            i.seq if i.kind == "chunk" else None,
        )
        for i in taken.values()
    ]
    got = store.take_many(wanted, WORKER_ID)  # locked, with their small fields and chunks
    locked: list[tuple[Item, str]] = []
    refused: list[Item] = []
    read: dict[str, tuple[set[str], dict[str, bytes], bytes | None]] = {}
    for item, (_, names, _), g in zip(taken.values(), wanted, got):
        if g is None:
            refused.append(item)
        else:
            locked.append((item, g[0]))
            read[item.id] = (set(names), g[1], g[2])
    held = {w.item.id for w, _ in _decoding}  # locked by this worker, waiting for the pool
    later += [item for item in refused if item.id in held]
    elsewhere = [item for item in refused if item.id not in held]  # another worker's
    fetched = Prefetched(store, read)
    unlocks: list[tuple[str, str]] = []
    replies: list[tuple[Item, dict[str, Any]]] = []
    for item, token in locked:
        try:
            outcome = prepare(fetched, settings, item, token)  # type: ignore[arg-type]
        except ToneError as exc:  # the model cannot be loaded (or a state is unreadable)
            log.error("stream %s: seq %d: %s", item.id, item.seq, exc)
            outcome = {"status": 503, "error": {"code": exc.code, "message": exc.message}}
        except Exception as exc:  # a session that cannot be read answers an error, alone
            log.exception("stream %s: cannot prepare seq %d", item.id, item.seq)
            outcome = {"status": 500, "error": {"code": "internal_error", "message": str(exc)}}
        if isinstance(outcome, Work):
            work.append(outcome)
            continue
        unlocks.append((item.id, token))
        if isinstance(outcome, str):  # "defer"
            later.append(item)
        else:
            replies.append((item, outcome))
            done += 1
    if unlocks or replies:
        store.finish_many(unlocks, replies)
    if work:
        store.heartbeat(WORKER_ID)  # the states may have taken a while to load
        work = replay(store, settings, work)
        if work:
            advance(store, settings, work)
        done += len(work)
    return done, later, elsewhere


def replay(store: SessionStore, settings: Settings, work: list[Work]) -> list[Work]:
    """Bring the sessions read from a checkpoint up to date: their journaled chunks in one batched
    call (phrases closed again are dropped: they were released already). Returns the work that can
    go on (a session whose replay failed is answered with the error)."""
    todo = [w for w in work if w.replay]
    if not todo:
        return work
    recognizer = get_recognizer(settings)
    started = time.perf_counter()
    try:
        flat = recognizer.advance(
            [
                (state, np.concatenate([r[:, c] for r in w.replay]), False)
                for w in todo
                for c, state in enumerate(w.states)
            ],
            max_batch=MODEL_BATCH,
        )
    except (StreamStateError, ValueError) as exc:
        log.exception("stream replay failed")
        for w in todo:
            store.unlock(w.item.id, w.token)
            store.reply(w.item, {"status": 500, "error": {"code": "internal_error", "message": str(exc)}})
        return [w for w in work if not w.replay]
    at = 0
    for w in todo:
        results, at = flat[at : at + len(w.states)], at + len(w.states)
        release(w, results)  # recomputes ``held``; the released phrases are in ``phrases`` already
    log.info(
        "stream replay of %d sessions (%d journaled chunks) from their checkpoints in %.3f s",
        len(todo),
        sum(len(w.replay) for w in todo),
        time.perf_counter() - started,
    )
    return work


def prepare(store: SessionStore, settings: Settings, item: Item, token: str) -> Work | dict[str, Any] | str:
    """Under the session's lock: the Work to advance, an answer, or "defer"."""
    # no model, no piece can advance: every item (a finalize waiting for an unapplied chunk too) is
    # answered the model's error at once (a ToneError: 503) instead of being deferred until it times out
    get_recognizer(settings)
    s = store.load_fields(item.id, [*SMALL_FIELDS, f"answer:{item.seq}"])
    if "ttl" not in s:
        return expired(item.id).to_reply()
    ttl = int(s["ttl"])
    next_seq = int(s["next_seq"])
    if item.kind == "finalize" and "final" in s:
        return cast("dict[str, Any]", json.loads(s["final"]))
    if item.seq < next_seq:
        stored = s.get(f"answer:{item.seq}")
        if stored:
            return cast("dict[str, Any]", json.loads(stored))
        return SessionError(
            409, "sequence_stale", f"chunk seq {item.seq} was applied long ago; its answer is no longer kept"
        ).to_reply()
    if "finished" in s:
        return finished(item.id).to_reply()
    if item.seq > next_seq:  # earlier chunks are still queued or being applied
        if time.time() - item.t > settings.stream_chunk_timeout_seconds:
            return SessionError(
                504, "timeout", f"chunk seq {item.seq} waited too long for seq {next_seq}"
            ).to_reply()
        return "defer"
    options = Options.from_json(s["options"])
    ckpt = int(s.get("ckpt", next_seq))  # layout 2: the state was written every piece
    ckpt_t = float(s.get("ckpt_t", time.time()))
    cached = _states.pop(item.id, None)  # taken out: put back only once this round saved it
    hit = cached is not None and cached[0] == s.get("rev")
    replayed: list[np.ndarray] = []
    if cached is not None and hit:
        states, resampler = cached[1], cached[2]
        held = cast("list[list[Any]]", json.loads(s.get("held", b"[]")))
    else:
        states, at_ckpt, resampler = load_states(store, settings, item.id, options, ckpt < next_seq)
        held = at_ckpt if at_ckpt is not None else cast("list[list[Any]]", json.loads(s.get("held", b"[]")))
        for seq, data in zip(range(ckpt, next_seq), store.journal(item.id, ckpt, next_seq)):
            if data is None:
                message = f"chunk seq {seq} since the session's last checkpoint is gone: start a new session"
                return SessionError(410, "session_expired", message).to_reply()
            if data:  # b"": a refused chunk, consumed without audio
                replayed.append(decode_chunk(data, options, resampler))
    samples = resampler.flush() if resampler is not None and item.kind == "finalize" else None
    if item.kind == "chunk":
        data = store.chunk(item.id, item.seq)
        if data is None:
            # not consumed: a retry with the audio applies it
            return SessionError(
                410, "chunk_expired", f"the audio of chunk seq {item.seq} is gone: send it again"
            ).to_reply()
        try:
            samples = decode_chunk(data, options, resampler)
        except (ToneError, ValueError) as exc:
            code = getattr(exc, "code", "corrupt_audio")
            status = 415 if code == "unsupported_format" else 400
            answer = {"status": status, "error": {"code": code, "message": str(exc)}}
            consumed = {"next_seq": str(item.seq + 1), f"answer:{item.seq}": json.dumps(answer)}
            store.r.hset(journal_key(item.id), str(item.seq), b"")  # a replay skips it
            commit(store, settings, item, token, ttl, consumed)  # type: ignore[arg-type]
            if cached is not None and hit:  # the states are unchanged (and so is rev)
                _remember(item.id, cached[0], cached[1], cached[2])
            return answer
    phrases = cast("list[dict[str, Any]]", json.loads(s.get("phrases", b"[]")))
    text = TextOptions.from_stored(options.text_options())
    hotwords = text.hotwords(LABELS)
    for state in states:  # not in the binary layout: the session's options say them each round
        state.hotwords = hotwords
    return Work(
        item, token, ttl, states, samples, held, cached=hit, ckpt=ckpt, ckpt_t=ckpt_t, replay=replayed,
        phrases=phrases, text=text, resampler=resampler,
    )  # fmt: skip


def load_states(
    store: SessionStore, settings: Settings, sid: str, options: Options, journaled: bool = False
) -> tuple[list[StreamState], list[list[Any]] | None, LiveResampler | None]:
    """The session's stream states at its checkpoint (new streams before its first one), ``held``
    at the checkpoint when chunks were journaled since (else None: ``held`` is current), and the
    resampler's state at the checkpoint (raw audio at another rate)."""
    channels = stream_count(options)
    s = store.load_fields(sid, [*(f"state:{c}" for c in range(channels)), "state", "ckpt_held", "ckpt_rs"])
    states = []
    for c in range(channels):
        raw = s.get(f"state:{c}", s.get("state") if c == 0 else None)  # "state": layout 1
        if raw is not None:
            states.append(StreamState.from_bytes(raw))
        else:
            decoder = None if options.decoder == "auto" else options.decoder
            if decoder is None and TextOptions.from_stored(options.text_options()).hotwords(LABELS):
                decoder = "beam"  # a vocabulary needs beam search
            states.append(get_recognizer(settings).new_stream(channel=c, decoder=decoder))
    held = cast("list[list[Any]]", json.loads(s.get("ckpt_held", b"[]"))) if journaled else None
    resampler = LiveResampler.from_bytes(s["ckpt_rs"]) if "ckpt_rs" in s else new_resampler(options)
    return states, held, resampler


def open_phrase(state: StreamState) -> str:
    """The open phrase's text so far: the splitter's buffer, greedy-decoded (for partial results)."""
    return GreedyDecoder().decode(state.buffer)[0] if len(state.buffer) else ""


def release(w: Work, results: list[list[Phrase]]) -> list[dict[str, Any]]:
    """The phrases the round completed, in the offline split run's time order (start frame, channel,
    end frame): a phrase is released once no channel can still close an earlier one; the others
    stay held in the session."""
    if len(w.states) == 1:
        return [p.to_dict() for p in results[0]]
    w.held += [[p.start_frame, p.channel, p.end_frame, p.to_dict()] for ps in results for p in ps]
    w.held.sort(key=lambda h: (h[0], h[1], h[2]))
    open_offsets = [s.offset for s in w.states if not s.finished]
    horizon = min(open_offsets) if open_offsets else None
    out = [h for h in w.held if horizon is None or h[0] < horizon]
    w.held = w.held[len(out) :]
    return [h[3] for h in out]


def commit(
    store: SessionStore,
    settings: Settings,
    item: Item,
    token: str,
    ttl: int,
    fields: dict[str, str | bytes],
    journal: tuple[int, int] = (0, 0),
) -> bool:
    """Save the fields under the lock, drop the ``journal`` entries (from, to) a checkpoint made
    needless (to < 0: all) and extend the others."""
    fields["updated"] = str(time.time())
    keep = journal_seconds(settings.stream_ttl_seconds, settings.stream_chunk_timeout_seconds)
    return store.save(item.id, token, ttl, fields, stale_answer(item.seq), journal, keep)


def stale_answer(seq: int) -> str | None:
    """The answer field that the save of chunk ``seq`` drops: only the last KEEP_ANSWERS are kept."""
    return f"answer:{seq - KEEP_ANSWERS}" if seq >= KEEP_ANSWERS else None


def advance(store: SessionStore, settings: Settings, work: list[Work]) -> None:
    """Advance every session of the round in one batched call, then save, answer and unlock."""
    recognizer = get_recognizer(settings)
    started = time.perf_counter()
    try:
        flat = recognizer.advance_decoding(
            [
                (state, None if w.samples is None else w.samples[:, c], w.item.kind == "finalize")
                for w in work
                for c, state in enumerate(w.states)
            ],
            max_batch=MODEL_BATCH,
        )
    except (StreamStateError, ValueError) as exc:  # should not happen: answer each on its own
        log.exception("stream batch failed")
        for w in work:
            store.unlock(w.item.id, w.token)
            store.reply(w.item, {"status": 500, "error": {"code": "internal_error", "message": str(exc)}})
        return
    log.info(
        "stream batch of %d sessions (%d finalized, %d states from this worker's cache) in %.3f s",
        len(work),
        sum(w.item.kind == "finalize" for w in work),
        sum(w.cached for w in work),
        time.perf_counter() - started,
    )
    ready: list[tuple[Work, list[Decoding]]] = []
    at = 0
    for w in work:
        decodings, at = flat[at : at + len(w.states)], at + len(w.states)
        if all(d.done() for d in decodings):
            ready.append((w, decodings))
        else:  # the decoder pool still decodes a phrase of it: answered by ``settle``, still locked
            _decoding.append((w, decodings))
    conclude(store, settings, ready)


def settle(store: SessionStore, settings: Settings, timeout: float = 0.0, queue: str = "") -> int:
    """Save and answer the held sessions whose phrases the decoder pool has decoded, after
    waiting up to ``timeout`` s for one more phrase when none is ready; returns how many. With
    ``queue``, their pieces count in its lag now (admission sees the wait for the pool too)."""
    if not _decoding:
        return 0
    recognizer = get_recognizer(settings)

    def done() -> list[bool]:
        return [all(d.done() for d in ds) for _, ds in _decoding]

    flags = done()
    if timeout > 0 and not any(flags):
        recognizer.wait_any([d for _, ds in _decoding for d in ds], drain=True, timeout=timeout)
        flags = done()
    ready = [h for h, f in zip(_decoding, flags) if f]
    _decoding[:] = [h for h, f in zip(_decoding, flags) if not f]
    conclude(store, settings, ready)
    if queue:
        store.round_done(queue, [w.item for w, _ in ready], time.time())
    return len(ready)


def drain(store: SessionStore, settings: Settings, queue: str = "") -> int:
    """``settle`` until no session is held (the run hands over: nothing may stay behind), keeping
    this worker's heartbeat, and so its locks, alive meanwhile."""
    handled = 0
    while _decoding:
        store.heartbeat(WORKER_ID)
        handled += settle(store, settings, timeout=1.0, queue=queue)
    return handled


def conclude(store: SessionStore, settings: Settings, ready: list[tuple[Work, list[Decoding]]]) -> None:
    """Save the stepped sessions whose phrases are all decoded, answer their pieces, unlock them."""
    if not ready:
        return
    recognizer = get_recognizer(settings)
    work: list[Work] = []
    flat: list[list[Phrase]] = []
    failed: list[tuple[Item, dict[str, Any]]] = []
    unlocks: list[tuple[str, str]] = []
    for w, decodings in ready:
        try:
            phrases = [recognizer.phrases(d) for d in decodings]
        except Exception as exc:  # a decoder process failed: this session's piece only
            log.exception("stream %s: decoding seq %d failed", w.item.id, w.item.seq)
            failed.append((w.item, {"status": 500, "error": {"code": "internal_error", "message": str(exc)}}))
            unlocks.append((w.item.id, w.token))
            continue
        work.append(w)
        flat += phrases
    if failed:
        store.finish_many(unlocks, failed)
        unlocks = []
    if not work:
        return
    at = 0
    keep = journal_seconds(settings.stream_ttl_seconds, settings.stream_chunk_timeout_seconds)
    checkpoints = due_checkpoints(work, settings.stream_checkpoint_seconds, time.time())
    shed: set[int] = set()
    if _shed.count > 0:  # handed on: checkpointed now, no holder, not kept here
        chosen = [w for w in work if w.item.kind != "finalize"][: _shed.count]
        _shed.count -= len(chosen)
        shed = {id(w) for w in chosen}
        checkpoints |= shed
    saves: list[Save] = []
    pending: list[tuple[Work, dict[str, Any], str]] = []  # (work, its answer, its new rev)
    replies: list[tuple[Item, dict[str, Any]]] = []
    earlier = released_before([w.item.id for w in work if w.item.kind == "finalize"], store)
    for w in work:
        results, at = flat[at : at + len(w.states)], at + len(w.states)
        item = w.item
        try:
            new = display_phrases(release(w, results), w.text)[0]
            fields: dict[str, str | bytes] = {
                "layout": str(LAYOUT),
                "next_seq": str(item.seq + 1),
                "held": json.dumps(w.held, ensure_ascii=False),
            }
            now = time.time()
            checkpoint = id(w) in checkpoints
            journal = (0, -1) if item.kind == "finalize" else (0, 0)  # a finished session needs none
            if checkpoint:
                for c, state in enumerate(w.states):
                    state.seq = item.seq
                    fields[f"state:{c}"] = state.to_bytes()
                fields.update(ckpt=str(item.seq + 1), ckpt_t=str(now), ckpt_held=fields["held"])
                if w.resampler is not None:
                    fields["ckpt_rs"] = w.resampler.to_bytes()
                journal = (w.ckpt, item.seq + 1)
            rev = secrets.token_hex(8)
            fields["rev"] = rev
            fields["holder"] = "" if id(w) in shed else WORKER_ID  # its next pieces: this worker's list
            if item.kind == "finalize":
                if earlier is None:
                    raise RuntimeError("the session's phrases could not be read")
                answer = ok({"phrases": earlier[item.id] + new, "state_id": item.id, "is_final": True})
                appended = []  # the final answer holds them all: the list goes with the journal
                fields.update(finished="1", final=json.dumps(answer, ensure_ascii=False))
                fields["duration"] = str(w.states[0].samples_in / SAMPLE_RATE)
            else:
                appended = w.phrases + new  # a layout-3 session's phrases move to its list first
                body = {"phrases": new, "state_id": item.id, "is_final": False, "seq": item.seq}
                partial = " ".join(t for t in (open_phrase(st) for st in w.states) if t)
                if w.text.redact:  # an open phrase cannot be redacted reliably: none is sent
                    partial = ""
                answer = ok({**body, "partial": partial})
            fields[f"answer:{item.seq}"] = json.dumps(answer, ensure_ascii=False)
            fields["updated"] = str(now)
            saves.append(
                Save(
                    item.id,
                    w.token,
                    w.ttl,
                    fields,
                    stale_answer(item.seq),
                    journal,
                    keep,
                    appended,
                    unlock=True,
                )
            )
            pending.append((w, answer, rev))
        except Exception as exc:
            log.exception("stream %s: cannot save seq %d", item.id, item.seq)
            replies.append((item, {"status": 500, "error": {"code": "internal_error", "message": str(exc)}}))
            unlocks.append((item.id, w.token))
    try:
        saved = store.save_many(saves)  # each save unlocks its session too
    except Exception as exc:
        log.exception("stream: cannot save a round of %d sessions", len(saves))
        saved = [False] * len(saves)
        unlocks += [(w.item.id, w.token) for w, _, _ in pending]  # (a save that did run, unlocked: no-op)
        pending = [
            (w, {"status": 500, "error": {"code": "internal_error", "message": str(exc)}}, "")
            for w, _, _ in pending
        ]
    for (w, answer, rev), ok_ in zip(pending, saved):
        if not ok_ and rev:
            log.warning("stream %s: lock lost or expired before seq %d was saved", w.item.id, w.item.seq)
            answer = expired(w.item.id).to_reply()
        elif ok_ and w.item.kind != "finalize" and id(w) not in shed:
            _remember(w.item.id, rev.encode(), w.states, w.resampler)
        replies.append((w.item, answer))
    store.finish_many(unlocks, replies)


def released_before(sids: list[str], store: SessionStore) -> dict[str, list[dict[str, Any]]] | None:
    """The phrases each finalizing session released before this piece (read once, for its final
    answer); None when Redis cannot be read (those pieces answer an error)."""
    if not sids:
        return {}
    try:
        return dict(zip(sids, store.phrases_many(sids)))
    except Exception:
        log.exception("stream: cannot read the phrases of %d finalizing sessions", len(sids))
        return None


CHECKPOINT_SHARE = 8  # a round checkpoints at most 1/8 of its sessions (at least 8) unless overdue


def due_checkpoints(work: list[Work], every: float, now: float) -> set[int]:
    """The ``id``s of the round's work whose states are written this round: those past
    CHECKPOINT_PIECES always (a replay's bound), then the oldest of those past ``every`` seconds,
    up to a share of the round. Sessions opened together would all checkpoint in the same round
    (hundreds of KiB each; at 200 streams that round's pieces made the p95: 331 vs 261 ms with
    no checkpoint at all); the budget spreads them over the next rounds, and they stay spread."""
    must: set[int] = set()
    may: list[Work] = []
    for w in work:
        if w.item.kind == "finalize":
            continue
        if every <= 0 or w.item.seq + 1 - w.ckpt >= CHECKPOINT_PIECES:  # 0: every piece
            must.add(id(w))
        elif now - w.ckpt_t >= every:
            may.append(w)
    budget = max(8, -(-len(work) // CHECKPOINT_SHARE)) - len(must)
    may.sort(key=lambda w: w.ckpt_t)
    return must | {id(w) for w in may[: max(0, budget)]}


@app.task(name=STREAM_TASK, bind=True)
def stream(self: Any, queue: str | None = None, holder: str = "") -> int:
    """Advance the pending chunks of the queue's streaming sessions (see the module docstring)."""
    return run(queue or get_settings().worker_queue, node=self.request.hostname or "", holder=holder)


@worker_process_shutdown.connect
def _process_ending(**_: Any) -> None:
    """This pool process exits while it still serves, its next run on its way: a warm shutdown
    whose mark came after its run's last look (the node will not start that run), or a pool
    restart. It stops serving now: its list moves to the shared one and another worker is woken,
    which loads the sessions from their checkpoints and journals, instead of their pieces waiting
    until its flag expires and the API re-queues them (TONE_STREAM_REQUEUE_SECONDS)."""
    if _serving is None:
        return
    try:
        stop_serving(store_for(get_settings()), _serving)
    except Exception:
        log.warning("stream: could not hand this process's sessions on as it exits", exc_info=True)


@worker_ready.connect
def _started(sender: Any = None, **_: Any) -> None:
    """A node (re)started under its name: the mark of an earlier warm shutdown no longer holds."""
    node = getattr(sender, "hostname", None)
    if node:
        _mark_stopping(str(node), False)


@worker_shutting_down.connect
def _stopping(sender: Any = None, **_: Any) -> None:
    """A node's warm shutdown: its live runs end serving (their sessions move to the shared list)
    instead of handing over to a next run that the stopping node would never start."""
    if sender:
        _mark_stopping(str(sender), True)


def _mark_stopping(node: str, stopping: bool) -> None:
    """Set (for 120 s) or clear ``node``'s warm-shutdown mark, on a short-lived connection of its
    own (Celery's main process, where these signals come, holds none). With Redis down the runs'
    flags expire and the sweep moves their lists; a mark that stays expires by itself."""
    try:
        with redis.Redis.from_url(get_settings().redis_url, socket_timeout=2) as client:
            if stopping:
                client.set(stopping_key(node), "1", ex=120)
            else:
                client.delete(stopping_key(node))
    except Exception:
        log.warning("could not %s node %s as stopping", "mark" if stopping else "unmark", node, exc_info=True)
