"""Live streaming sessions in Redis: any worker can continue any session.

Only Redis lives here (no Celery, no FastAPI): the API accepts chunks and waits for answers, the
workers (``worker.streaming``) load, advance and save sessions. Layout, every key with the
session's TTL (``stream_ttl_seconds``, or a shorter ``ttl_seconds`` option), extended on every
chunk and every save, never fixed from creation. Layout version 4 (``LAYOUT``; version 3 kept every
phrase in the hash's ``phrases`` field, read and written whole by every piece: a worker moves it to
the ``phrases`` list at its first save; version 2 wrote the state every piece and had no ``ckpt``:
a worker reads it as checkpointed at ``next_seq``; version 1 kept one ``state`` field, which a
worker still reads as ``state:0``)::

    tone:stream:<id>                 hash, the session:
        tenant                       the owning tenant's id
        layout                       the layout version, "4"
        options                      JSON {"sample_rate", "encoding", "channels", "decoder", "text"}
        ttl                          seconds the session lives after its last activity
        state:<c>                    channel c's engine StreamState.to_bytes() (versioned,
                                     checksummed; never pickle) at the checkpoint: after the chunks
                                     before ``ckpt``; absent until the first checkpoint. One stream
                                     (state:0) unless ``channels`` is 2: then state:0 (agent) and
                                     state:1 (client), split, not averaged
        ckpt                         the next_seq the states were saved at (the checkpoint); the
                                     chunks from it to next_seq are in the journal
        ckpt_t                       unix time of the checkpoint
        ckpt_held                    ``held`` at the checkpoint
        held                         JSON [[start_frame, channel, end_frame, phrase], ...]: a stereo
                                     session's closed phrases not yet released in time order
        rev                          random, written by every save: a worker holding the states it
                                     saved uses them while ``rev`` is still its own
        holder                       the worker that saved last: while its ``serving`` flag is
                                     set the API queues the session's pieces on its own list
                                     ("": handed on, checkpointed, to whichever worker takes it)
        duration                     seconds of audio, once finalized
        job                          JSON {"webhook_url", "metadata", "started"} when the session is
                                     kept as a job at finalize (``store``); job_id once it was
        next_seq                     the next chunk the state will advance by
        accepted                     the next seq the API hands out / accepts (>= next_seq; the
                                     ones in between are queued or being processed)
        closing                      the seq of the finalize call, once it was accepted
        finished                     "1" once finalized
        phrases                      layout 3 only: JSON list of every phrase so far (moved to
                                     the ``phrases`` list by the next save)
        answer:<seq>                 the JSON answer to chunk <seq> (the last KEEP_ANSWERS are
                                     kept, for client retries)
        final                        the JSON answer to finalize
        created, updated             unix times
    tone:stream:<id>:known           the tenant, kept KNOWN_SECONDS: tells an expired session
                                     (410 session_expired) from one that never was (404)
    tone:stream:<id>:lock            "<worker>|<random>", PX LOCK_MS; released only by its owner
                                     (Lua): two chunks of a session never run at the same time;
                                     a lock whose worker's heartbeat is gone is taken over (Lua)
    tone:stream:worker:<worker>      a live worker's heartbeat (PX HEARTBEAT_MS, every round)
    tone:stream:<id>:phrases         list, every phrase released so far, one JSON object each
                                     (Phrase.to_dict(), in its written form), appended by the
                                     save of the piece that released it: a piece costs its own
                                     phrases, not the whole session's again (layout 3 rewrote them
                                     all every piece: 25 → 68 KiB into Redis per piece over a
                                     6-minute session); read once, by the finalize, whose answer
                                     holds them all, and deleted with the journal then
    tone:stream:<id>:journal         hash seq -> a chunk's audio bytes as sent: queued chunks and
                                     the applied ones since the checkpoint (b"" for a refused one),
                                     so that a worker without the states replays them exactly from
                                     the checkpoint; a checkpoint drops the entries before it
    tone:stream:inbox:<api>          a list per API process: the workers RPUSH the answers to the
                                     pieces it queued, each JSON {"to": "<id>:<nonce>", "status",
                                     "body" | "error"}; one task of that process reads them all and
                                     hands each to its waiting piece (one BLPOP per batch of answers,
                                     not one per piece)
    tone:stream:<id>:reply:<nonce>   a list: the answer to an item queued without an inbox
    tone:stream:pending:<queue>      the shared list of JSON work items {"id", "seq", "kind",
                                     "reply", "inbox", "t"}: pieces of sessions that no serving
                                     worker holds (new sessions, a holder gone or between runs);
                                     the API queues an unanswered item again here after
                                     ``stream_requeue_seconds`` (a worker may have died holding it):
                                     at-least-once, made idempotent by the seq check under the lock
    tone:stream:pending:<queue>:@<worker>
                                     a serving worker's own list: the pieces of the sessions it
                                     holds (the session's ``holder``), which the API queues here
                                     while the worker's ``serving`` flag is set; the worker pops it
                                     before the shared list; at the end of its serving (or, once its
                                     flag expired, by any worker's sweep) what is left moves to the
                                     head of the shared list
    tone:stream:serving:<queue>:<worker>
                                     set (PX AWAKE_MS, every round) while ``worker`` drains its own
                                     list and the shared one, to the number of sessions it holds
                                     (its load: a worker over capacity hands sessions to the least
                                     loaded other); deleted, atomically with the move of its list,
                                     when it stops serving
    tone:stream:servers:<queue>      sorted set, worker -> unix time of its last round: the sweep
                                     finds the workers whose ``serving`` flag expired (killed)
    tone:stream:busy:<queue>:<worker>
                                     set (PX AWAKE_MS) while the worker's pieces wait longer than
                                     ``stream_shed_lag_seconds``: no one hands sessions to it
    tone:stream:stopping:<node>      set by a Celery node's warm shutdown (cleared when it starts
                                     again): its live runs hand every session on, checkpointed, to
                                     the other workers and end, instead of handing over to a next
                                     run of their own
    tone:stream:awake:<queue>        set (PX AWAKE_MS) while a worker drains the queue's pending
                                     list: the API sends the Celery wake-up only when it is absent
    tone:stream:wake:<queue>         set by whoever sends a Celery wake-up (the piece that found no
                                     worker awake, or the shared list's head waiting; a worker over
                                     capacity): while it is set no other is sent; the run that the
                                     wake-up starts deletes it, so at most one waits at a time
                                     however long the workers are busy (PX WAKE_MS in case that
                                     message is lost; a run's end deletes it too, with ``awake``)
    tone:stream:open:<queue>         sorted set, session id -> unix time of its last answered piece:
                                     the sessions active in the last ACTIVE_SECONDS (admission's
                                     count; a finalized session leaves it)
    tone:stream:lag:<queue>          seconds the oldest piece of the last round waited from its
                                     queueing to its answer (PX LAG_MS: gone when the queue idles)
    tone:stream:waiting:<queue>      sorted set, "<session id>:<reply nonce>" -> unix time queued: the
                                     pieces an API is waiting on (added with the item, removed by
                                     the worker's answer or the API's 504; purged past the chunk
                                     timeout): a piece popped by a stalled worker still shows here

Admission (``AsyncSessionStore.admit``, one Lua call when a session is opened): a new session is
refused with 503 ``over_capacity`` (close 1013 on the WebSockets) while live pieces wait longer than
``stream_admit_lag_seconds`` (the last round's lag, or the age of the oldest piece still waiting for
its answer: a stalled worker shows too, even one that popped the piece before it stopped), or
while ``stream_max_sessions`` sessions are active. Sessions already open are never refused: their
latency is what the guard protects.

Sequence rules (checked atomically in Lua when the API accepts a chunk, and again by the worker
under the lock): ``seq == accepted`` is new work; ``next_seq <= seq < accepted`` is a retry of a
chunk still queued (it is queued again and answered once the first copy is applied);
``seq < next_seq`` is a retry of an applied chunk: its stored answer, no second advance;
``seq > accepted`` is a gap (409 ``sequence_gap``). A chunk without ``seq`` gets ``accepted``,
i.e. arrival order. After finalize was accepted, chunks at or past its seq get ``session_finished``.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from shared.asr.types import SAMPLE_RATE
from shared.errors import CodedError
from shared.platform.scripts import Coalescer, run_scripts

PREFIX = "tone:stream:"
KEEP_ANSWERS = 16  # answers kept per session for client retries
KNOWN_SECONDS = 7 * 24 * 3600
LAYOUT = 4  # the session hash's layout version
AWAKE_MS = 3000  # a draining worker's awake flag lives this long unless refreshed
WAKE_MS = 10_000  # a wake-up not taken within this long (lost) no longer holds back the next one
LOCK_MS = 15_000  # a session lock expires after this (sooner when its holder's heartbeat is gone)
HEARTBEAT_MS = 4_000  # a live worker's heartbeat lives this long unless refreshed (every round)
REPLY_SECONDS = 120  # an unread reply list disappears after this
ACTIVE_SECONDS = 30  # a session with no piece answered for this long no longer counts as active
LAG_MS = 3_000  # the last round's lag counts this long (a later round replaces it)
OWN_MS = 60_000  # a worker's own list outlives its last piece this long (a killed worker's: swept sooner)
SPILL_SECONDS = 0.5  # a shared item waiting this long although a worker is awake: wake another one
ENCODINGS = ("pcm_s16le", "mulaw", "alaw")
DECODERS = ("auto", "greedy", "beam")


def journal_seconds(ttl_seconds: int, chunk_timeout_seconds: float) -> int:
    """How long a session's journal is kept: past any session's TTL (at most ``ttl_seconds``) and
    past any piece's wait (``chunk_timeout_seconds``)."""
    return max(ttl_seconds, int(chunk_timeout_seconds) + 60)


def session_key(sid: str) -> str:
    return f"{PREFIX}{sid}"


def known_key(sid: str) -> str:
    return f"{PREFIX}{sid}:known"


def heartbeat_key(worker: str) -> str:
    return f"{PREFIX}worker:{worker}"


def lock_key(sid: str) -> str:
    return f"{PREFIX}{sid}:lock"


def journal_key(sid: str) -> str:
    return f"{PREFIX}{sid}:journal"


def phrases_key(sid: str) -> str:
    return f"{PREFIX}{sid}:phrases"


def awake_key(queue: str) -> str:
    return f"{PREFIX}awake:{queue}"


def reply_key(sid: str, nonce: str) -> str:
    return f"{PREFIX}{sid}:reply:{nonce}"


def inbox_key(inbox: str) -> str:
    return f"{PREFIX}inbox:{inbox}"


def wake_key(queue: str) -> str:
    return f"{PREFIX}wake:{queue}"


def pending_key(queue: str) -> str:
    return f"{PREFIX}pending:{queue}"


def own_key(queue: str, worker: str) -> str:
    """A serving worker's own pending list (the pieces of the sessions it holds)."""
    return f"{PREFIX}pending:{queue}:@{worker}"


def serving_key(queue: str, worker: str) -> str:
    return f"{PREFIX}serving:{queue}:{worker}"


def servers_key(queue: str) -> str:
    return f"{PREFIX}servers:{queue}"


def busy_key(queue: str, worker: str) -> str:
    return f"{PREFIX}busy:{queue}:{worker}"


def stopping_key(node: str) -> str:
    return f"{PREFIX}stopping:{node}"


def open_key(queue: str) -> str:
    return f"{PREFIX}open:{queue}"


def lag_key(queue: str) -> str:
    return f"{PREFIX}lag:{queue}"


def waiting_key(queue: str) -> str:
    return f"{PREFIX}waiting:{queue}"


def waiting_member(sid: str, nonce: str) -> str:
    return f"{sid}:{nonce}"


class SessionError(CodedError):
    """A refused session call: an HTTP status, a machine-readable code and a message."""

    status: int

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code=code, status=status, headers=headers)

    def to_reply(self) -> dict[str, Any]:
        return {"status": self.status, "error": {"code": self.code, "message": self.message}}


def over_capacity(why: str, retry_after: int) -> SessionError:
    message = f"the live workers are at capacity ({why}): open the session again later"
    return SessionError(503, "over_capacity", message, {"Retry-After": str(retry_after)})


def not_found(sid: str) -> SessionError:
    return SessionError(404, "session_not_found", f"no streaming session {sid!r}")


def expired(sid: str) -> SessionError:
    return SessionError(
        410,
        "session_expired",
        f"the streaming session {sid!r} expired: it received no chunk within its TTL; start a new one",
    )


def finished(sid: str) -> SessionError:
    return SessionError(409, "session_finished", f"the streaming session {sid!r} was finalized")


@dataclass(frozen=True)
class Options:
    sample_rate: int = SAMPLE_RATE
    encoding: str = "pcm_s16le"
    channels: int = 1
    decoder: str = "auto"
    text: str = "{}"  # the shared.text options (validated), as JSON

    def text_options(self) -> dict[str, Any]:
        return cast("dict[str, Any]", json.loads(self.text))

    def __post_init__(self) -> None:
        if not 4000 <= self.sample_rate <= 192_000:
            raise SessionError(422, "invalid_request", "sample_rate must be between 4000 and 192000")
        if self.encoding not in ENCODINGS:
            raise SessionError(422, "invalid_request", f"encoding must be one of {', '.join(ENCODINGS)}")
        if not 1 <= self.channels <= 8:
            raise SessionError(422, "invalid_request", "channels must be between 1 and 8")
        if self.decoder not in DECODERS:
            raise SessionError(422, "invalid_request", f"decoder must be one of {', '.join(DECODERS)}")

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str | bytes) -> Options:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Accepted:
    """What the API does with a chunk or finalize call: ``new`` / ``queued`` (enqueue and wait),
    ``done`` (answer stored; a retry), ``final`` (finalize already done)."""

    action: str
    seq: int


@dataclass(frozen=True)
class Item:
    """A unit of work in the pending list."""

    id: str
    seq: int
    kind: str  # "chunk" or "finalize"
    reply: str  # the piece's nonce
    t: float  # when it was queued
    inbox: str = ""  # the waiting API process's inbox ("": the per-piece reply list)

    def to_json(self) -> str:
        return json.dumps(
            {"id": self.id, "seq": self.seq, "kind": self.kind, "reply": self.reply, "inbox": self.inbox,
             "t": self.t}
        )  # fmt: skip

    @classmethod
    def from_json(cls, text: str | bytes) -> Item:
        d = json.loads(text)
        inbox = str(d.get("inbox", ""))
        return cls(str(d["id"]), int(d["seq"]), str(d["kind"]), str(d["reply"]), float(d["t"]), inbox)

    @property
    def member(self) -> str:
        """The piece in the waiting set, and the ``to`` of its answer in an inbox."""
        return waiting_member(self.id, self.reply)


# KEYS: open, lag, waiting. ARGV: now, active_seconds, max_sessions, max_lag, sid, waiting_horizon
_ADMIT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[6]))
local max_lag = tonumber(ARGV[4])
if max_lag > 0 then
  local lag = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if oldest[2] then lag = math.max(lag, now - tonumber(oldest[2])) end
  if lag > max_lag then return {'lagging', tostring(lag)} end
end
local max_sessions = tonumber(ARGV[3])
local n = redis.call('ZCARD', KEYS[1])
if max_sessions > 0 and n >= max_sessions then return {'full', tostring(n)} end
redis.call('ZADD', KEYS[1], now, ARGV[5])
return {'ok', tostring(n + 1)}
"""

# The sequence rules (see above) for a chunk or finalize call, as a Lua function of the piece
# script below. KEYS: session, known. ARGV: tenant, seq ("" = arrival order), kind, now,
# known_seconds. Returns {action, seq} ({'gap', seq, accepted}; an error's name as action).
_ACCEPT_FUNCTION = """
local function accept()
  local h = KEYS[1]
  if redis.call('EXISTS', h) == 0 then
    local owner = redis.call('GET', KEYS[2])
    if (not owner) or owner ~= ARGV[1] then return {'not_found', 0} end
    return {'expired', 0}
  end
  if redis.call('HGET', h, 'tenant') ~= ARGV[1] then return {'not_found', 0} end
  local nxt = tonumber(redis.call('HGET', h, 'next_seq'))
  local acc = tonumber(redis.call('HGET', h, 'accepted'))
  local closing = redis.call('HGET', h, 'closing')
  local ttl = tonumber(redis.call('HGET', h, 'ttl'))
  redis.call('EXPIRE', h, ttl)
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
  redis.call('HSET', h, 'updated', ARGV[4])
  if ARGV[3] == 'finalize' then
    if closing then
      if redis.call('HGET', h, 'finished') then return {'final', tonumber(closing)} end
      return {'queued', tonumber(closing)}
    end
    redis.call('HSET', h, 'closing', acc, 'accepted', acc + 1)
    return {'new', acc}
  end
  local seq = acc
  if ARGV[2] ~= '' then seq = tonumber(ARGV[2]) end
  if closing and seq >= tonumber(closing) then return {'finished', seq} end
  if seq < nxt then return {'done', seq} end
  if seq < acc then return {'queued', seq} end
  if seq == acc then
    redis.call('HSET', h, 'accepted', acc + 1)
    return {'new', seq}
  end
  return {'gap', seq, acc}
end
"""

# A piece in one call: ``accept`` it and, when it is work to do (new, or a retry still queued),
# journal its audio, count it as waiting and queue its work item: on its holder's own list while the
# holder serves (the worker that has the session's states in memory: no reload, no replay), else on
# the shared list. KEYS: session, known, journal, waiting, pending, awake, wake. ARGV: accept's,
# then the session id, the piece's nonce, the API's inbox, "1" when audio follows, the audio, the
# journal's TTL, WAKE_MS, the serving flags' prefix, the own lists' prefix, OWN_MS, SPILL_SECONDS.
# Returns {action, seq, wake} (``accept``'s answer when there is nothing to queue); wake = 1: no
# worker is awake (or the shared list's head waited SPILL_SECONDS: the awake ones are saturated)
# and no wake-up is waiting to be taken, so this caller sends one (every piece sent one before: at
# the end of each worker's run, a storm of Celery messages, 7 % of the API at 200 streams).
_PIECE = (
    _ACCEPT_FUNCTION
    + """
local out = accept()
if out[1] ~= 'new' and out[1] ~= 'queued' then return out end
local seq = out[2]
if ARGV[9] == '1' then
  redis.call('HSET', KEYS[3], tostring(seq), ARGV[10])
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[11]))
end
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[6] .. ':' .. ARGV[7])
local item = cjson.encode({id = ARGV[6], seq = seq, kind = ARGV[3], reply = ARGV[7], inbox = ARGV[8],
  t = tonumber(ARGV[4])})
local holder = redis.call('HGET', KEYS[1], 'holder')
if holder and redis.call('EXISTS', ARGV[13] .. holder) == 1 then
  redis.call('RPUSH', ARGV[14] .. holder, item)
  redis.call('PEXPIRE', ARGV[14] .. holder, tonumber(ARGV[15]))
else
  redis.call('RPUSH', KEYS[5], item)
end
if redis.call('EXISTS', KEYS[6]) == 1 then
  local head = redis.call('LINDEX', KEYS[5], 0)
  if not head then return {out[1], seq, 0} end
  local ok, first = pcall(cjson.decode, head)
  if not (ok and type(first) == 'table' and tonumber(first.t)) then return {out[1], seq, 0} end
  if tonumber(ARGV[4]) - tonumber(first.t) < tonumber(ARGV[16]) then return {out[1], seq, 0} end
end
if redis.call('SET', KEYS[7], '1', 'NX', 'PX', tonumber(ARGV[12])) then return {out[1], seq, 1} end
return {out[1], seq, 0}
"""
)

# A worker's own list moved to the head of the shared list, in order; returns the items moved.
_MOVE_FUNCTION = """
local function move(own, shared)
  local items = redis.call('LRANGE', own, 0, -1)
  for i = #items, 1, -1 do redis.call('LPUSH', shared, items[i]) end
  redis.call('DEL', own)
  return #items
end
"""

# KEYS: own list, pending (shared), serving flag, servers. ARGV: worker. The worker stops serving:
# its flag goes and what is left on its own list moves to the head of the shared list, in order,
# in one step (a piece the API queues after it goes to the shared list). Returns the items moved.
_RELEASE = (
    _MOVE_FUNCTION
    + """
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
return move(KEYS[1], KEYS[2])
"""
)

# KEYS: servers, pending (shared). ARGV: the cut-off time, the serving flags' prefix, the own lists'
# prefix. Every worker registered before the cut-off whose serving flag is gone (killed, or stopped
# for longer than its flag) is released as above (one whose flag is still set, its clock behind
# ours, stays). Returns the items moved.
_SWEEP = (
    _MOVE_FUNCTION
    + """
local moved = 0
for _, worker in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do
  if redis.call('EXISTS', ARGV[2] .. worker) == 0 then
    moved = moved + move(ARGV[3] .. worker, KEYS[2])
    redis.call('ZREM', KEYS[1], worker)
  end
end
return moved
"""
)

# KEYS[1]: lock. ARGV: token ("<worker>|<random>"), px, the heartbeat keys' prefix. A lock whose
# holder's heartbeat is gone (the worker died or is stopped) is taken over at once.
_LOCK_FUNCTION = """
local function lock()
  local cur = redis.call('GET', KEYS[1])
  if cur then
    local owner = string.match(cur, '^([^|]+)|')
    if (not owner) or redis.call('EXISTS', ARGV[3] .. owner) == 1 then return 0 end
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
"""

_LOCK = _LOCK_FUNCTION + "return lock()"

# A round's first step for one session: ``lock`` it and, once locked, read the named fields of its
# hash and one chunk of its journal in the same step (before: a lock, an HMGET and an HGET, three
# commands per session in two round trips). KEYS: lock, session, journal. ARGV: lock's, the chunk's
# field ("" = none), the field names. Returns {0} (another live worker holds it), or {1, the chunk,
# the fields' values} (false where missing).
_TAKE = (
    _LOCK_FUNCTION
    + """
if lock() == 0 then return {0} end
local chunk = false
if ARGV[4] ~= '' then chunk = redis.call('HGET', KEYS[3], ARGV[4]) end
return {1, chunk, unpack(redis.call('HMGET', KEYS[2], unpack(ARGV, 5)))}
"""
)

# KEYS: lock. ARGV: token
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: session, lock, journal, phrases. ARGV: token, ttl, field-to-delete ("" = none), the
# journal's TTL, the journal entries to drop: from, to (excluded; from >= to: none, to < 0: the
# whole journal, and the phrases list), the number n of phrases to append, "1" to unlock after
# (else ""), those n phrases, then field/value pairs. The hash's layout-3 ``phrases`` field goes
# when phrases are appended (the caller puts the field's phrases first among them) or the session
# ends. The phrases list lives as long as the journal: each save extends both by the journal's TTL,
# which is at least the session's, so a session's phrases never expire before its hash. Unlocking
# here saves a round's second command per session (the lock is this caller's: checked first).
_SAVE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[8] == '1' then redis.call('DEL', KEYS[2]) end
  return -1
end
if ARGV[3] ~= '' then redis.call('HDEL', KEYS[1], ARGV[3]) end
local n = tonumber(ARGV[7])
local from, to = tonumber(ARGV[5]), tonumber(ARGV[6])
if n > 0 or to < 0 then redis.call('HDEL', KEYS[1], 'phrases') end
redis.call('HSET', KEYS[1], unpack(ARGV, 9 + n))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
if to < 0 then
  redis.call('DEL', KEYS[3], KEYS[4])
else
  for seq = from, to - 1 do redis.call('HDEL', KEYS[3], tostring(seq)) end
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))
  if n > 0 then redis.call('RPUSH', KEYS[4], unpack(ARGV, 9, 8 + n)) end
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[4]))
end
if ARGV[8] == '1' then redis.call('DEL', KEYS[2]) end
return 1
"""


def _accept_args(tenant: str, kind: str, seq: int | None) -> list[str | int]:
    if seq is not None and seq < 0:
        raise SessionError(422, "invalid_request", "seq must be 0 or more")
    return [tenant, "" if seq is None else str(seq), kind, str(time.time()), KNOWN_SECONDS]


def _accepted(sid: str, out: list[Any]) -> Accepted:
    """The accept script's answer: what to do, or the SessionError it means."""
    action = out[0].decode() if isinstance(out[0], bytes) else str(out[0])

    if action == "not_found":
        raise not_found(sid)
    if action == "expired":
        raise expired(sid)
    if action == "finished":
        raise finished(sid)
    if action == "gap":
        raise SessionError(
            409,
            "sequence_gap",
            f"chunk seq {out[1]} is out of order: the session expects seq {out[2]} next",
        )
    return Accepted(action, int(out[1]))


class AsyncSessionStore:
    """The API's per-piece calls (accept, submit) on the event loop's Redis client: no threadpool
    hop per piece."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.r = client
        self._piece = client.register_script(_PIECE)
        self._admit = client.register_script(_ADMIT)
        self._scripts = Coalescer(client)  # a burst's calls go to Redis in one pipeline

    async def admit(
        self, queue: str, sid: str, max_sessions: int, max_lag: float, horizon: float = 60.0
    ) -> int:
        """Count ``sid`` in as an active session of ``queue``, or raise 503 ``over_capacity`` (see
        Admission above; waiting pieces older than ``horizon`` seconds were given up by their API
        and are purged). Returns the number of active sessions, this one included."""
        keys = [open_key(queue), lag_key(queue), waiting_key(queue)]
        args: list[str | float | int] = [time.time(), ACTIVE_SECONDS, max_sessions, max_lag, sid, horizon]
        verdict, value = (
            v.decode() if isinstance(v, bytes) else str(v)
            for v in await self._scripts.call(self._admit, keys, args)
        )
        if verdict == "lagging":
            raise over_capacity(f"live pieces wait {float(value):.1f} s, more than {max_lag:g} s", 2)
        if verdict == "full":
            raise over_capacity(f"{value} sessions active, the most this deployment takes", 5)
        return int(value)

    async def piece(
        self,
        queue: str,
        sid: str,
        tenant: str,
        kind: str,
        seq: int | None,
        audio: bytes | None,
        nonce: str,
        inbox: str,
        keep: int,
    ) -> tuple[Accepted, bool]:
        """``accept`` the call and, when it is work to do (``new``, or ``queued``: a retry of a
        piece not applied yet), journal its audio (kept ``keep`` s) and queue its work item,
        answered to ``inbox`` under ``nonce``: one round trip. Returns what was accepted and whether
        the caller must wake a worker (none is draining the queue, or the shared list's head has
        waited SPILL_SECONDS, and no wake-up is waiting to be taken). The item goes to the own list
        of the session's holder while it serves, else to the shared list."""
        args: list[str | int | bytes | float] = [*_accept_args(tenant, kind, seq), sid, nonce, inbox]
        args += ["0", b"", keep, WAKE_MS] if audio is None else ["1", audio, keep, WAKE_MS]
        args += [serving_key(queue, ""), own_key(queue, ""), OWN_MS, SPILL_SECONDS]
        keys = [session_key(sid), known_key(sid), journal_key(sid), waiting_key(queue), pending_key(queue),
                awake_key(queue), wake_key(queue)]  # fmt: skip
        out = await self._scripts.call(self._piece, keys, args)
        accepted = _accepted(sid, out)
        return accepted, accepted.action in ("new", "queued") and bool(out[2])

    async def given_up(self, queue: str, sid: str, nonce: str) -> None:
        """The API stopped waiting for this piece (504, or its client went away)."""
        await self.r.zrem(waiting_key(queue), waiting_member(sid, nonce))


@dataclass
class Save:
    """One session's save (:data:`_SAVE`): its ``fields``, the answer field to ``drop``, the
    ``journal`` entries (from, to) to drop, the journal's and phrases' TTL (0: the session's
    ``ttl``), the ``phrases`` the piece released (appended to the session's list), and whether
    to ``unlock`` it after."""

    sid: str
    token: str
    ttl: int
    fields: dict[str, str | bytes]
    drop: str | None = None
    journal: tuple[int, int] = (0, 0)
    journal_ttl: int = 0
    phrases: Sequence[dict[str, Any]] = ()
    unlock: bool = False  # the lock released in the same step (when it is still this caller's)

    def keys(self) -> list[str]:
        return [session_key(self.sid), lock_key(self.sid), journal_key(self.sid), phrases_key(self.sid)]

    def args(self) -> list[str | bytes | int]:
        args: list[str | bytes | int] = [self.token, self.ttl, self.drop or "", self.journal_ttl or self.ttl]
        args += [*self.journal, len(self.phrases), "1" if self.unlock else ""]
        args += [json.dumps(p, ensure_ascii=False) for p in self.phrases]
        for k, v in self.fields.items():
            args += [k, v]
        return args


class SessionStore:
    """Session calls over one synchronous Redis client (the API runs them in its threadpool)."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._unlock = client.register_script(_UNLOCK)
        self._lock = client.register_script(_LOCK)
        self._take = client.register_script(_TAKE)
        self._save = client.register_script(_SAVE)
        self._release = client.register_script(_RELEASE)
        self._sweep = client.register_script(_SWEEP)

    # -- the API's side ---------------------------------------------------------------------------

    def create(
        self,
        tenant: str,
        options: Options,
        ttl: int,
        job: dict[str, Any] | None = None,
        sid: str | None = None,
    ) -> str:
        """A new session (``sid``: the id admission counted in); ``job``: keep it as a job at
        finalize (see the ``job`` field)."""
        sid = sid or uuid.uuid4().hex
        now = str(time.time())
        fields = {
            "layout": str(LAYOUT), "tenant": tenant, "options": options.to_json(), "ttl": str(ttl),
            "next_seq": "0", "accepted": "0", "created": now, "updated": now,
            "ckpt": "0", "ckpt_t": now,
        }  # fmt: skip
        if job is not None:
            fields["job"] = json.dumps(job, ensure_ascii=False)
        pipe = self.r.pipeline()
        pipe.hset(session_key(sid), mapping=fields)  # type: ignore[arg-type]
        pipe.expire(session_key(sid), ttl)
        pipe.set(known_key(sid), tenant, ex=KNOWN_SECONDS)
        pipe.execute()
        return sid

    def next_seq(self, sid: str) -> int | None:
        value = self.r.hget(session_key(sid), "next_seq")
        return int(value) if value is not None else None

    def ttl_of(self, sid: str) -> int:
        value = self.r.hget(session_key(sid), "ttl")
        return int(value) if value else 60

    def stored_answer(self, sid: str, seq: int) -> dict[str, Any] | None:
        value = self.r.hget(session_key(sid), f"answer:{seq}")
        return json.loads(value) if value else None

    def stored_final(self, sid: str) -> dict[str, Any] | None:
        value = self.r.hget(session_key(sid), "final")
        return json.loads(value) if value else None

    def enqueue(self, queue: str, sid: str, seq: int, kind: str, nonce: str, inbox: str = "") -> None:
        """Queue a work item again (same ``nonce`` and ``inbox``: its answer reaches the same waiter)."""
        self.r.rpush(pending_key(queue), Item(sid, seq, kind, nonce, time.time(), inbox).to_json())

    # -- the worker's side ------------------------------------------------------------------------

    def pop_pending(
        self, queue: str, count: int, worker: str = "", pid: int = 0, *, shared: bool = True, load: int = 0
    ) -> list[Item]:
        """Up to ``count`` items from the head of ``worker``'s own list, then as many from the shared
        list (unless not ``shared``); with ``pid`` too, in the same round trip, the worker serves:
        its heartbeat, its ``serving`` flag (to ``load``, the sessions it holds) and the queue's
        ``awake`` flag (its ``pid``) are refreshed."""
        pipe = self.r.pipeline(transaction=False)
        if worker and pid:
            pipe.set(awake_key(queue), str(pid), px=AWAKE_MS)
            pipe.set(heartbeat_key(worker), "1", px=HEARTBEAT_MS)
            pipe.set(serving_key(queue, worker), str(load), px=AWAKE_MS)
            pipe.zadd(servers_key(queue), {worker: time.time()})
        keys = _lists(queue, worker, shared)
        for key in keys:
            pipe.lpop(key, count)
        lists = pipe.execute()[len(pipe) - len(keys) :]
        return _items([v for got in lists for v in cast("list[bytes] | None", got) or []])

    def push_back(self, queue: str, items: list[Item], worker: str = "") -> None:
        """Return items to the head of ``worker``'s own list (else of the shared list), in order."""
        if items:
            key = own_key(queue, worker) if worker else pending_key(queue)
            self.r.lpush(key, *[i.to_json() for i in reversed(items)])

    def release(self, queue: str, worker: str) -> int:
        """``worker`` stops serving: its flag goes, its own list's items move to the head of the
        shared list (one Lua call); returns how many moved."""
        keys = [own_key(queue, worker), pending_key(queue), serving_key(queue, worker), servers_key(queue)]
        return int(self._release(keys=keys, args=[worker]))

    def sweep(self, queue: str, now: float | None = None) -> int:
        """Release every worker whose serving flag expired (a killed one: its own list's pieces go
        to the shared list now, not when their API re-queues them); returns the items moved."""
        cutoff = (now if now is not None else time.time()) - AWAKE_MS / 1000
        args: list[str | float] = [cutoff, serving_key(queue, ""), own_key(queue, "")]
        return int(self._sweep(keys=[servers_key(queue), pending_key(queue)], args=args))

    def serving(self, queue: str, worker: str) -> bool:
        return bool(self.r.exists(serving_key(queue, worker)))

    def round_done(self, queue: str, answered: list[Item], now: float) -> None:
        """After a round: its lag (the oldest answered piece's wait) for admission, its pieces no
        longer waiting; its sessions active now, the finalized ones no longer."""
        if not answered:
            return
        pipe = self.r.pipeline(transaction=False)
        pipe.set(lag_key(queue), f"{max(0.0, now - min(i.t for i in answered)):.3f}", px=LAG_MS)
        pipe.zrem(waiting_key(queue), *[i.member for i in answered])
        active = {i.id: now for i in answered if i.kind == "chunk"}
        if active:
            pipe.zadd(open_key(queue), active)
        ended = [i.id for i in answered if i.kind == "finalize"]
        if ended:
            pipe.zrem(open_key(queue), *ended)
        pipe.execute()

    def heartbeat(self, worker: str) -> None:
        """This worker is alive (and so are its locks) for HEARTBEAT_MS more."""
        self.r.set(heartbeat_key(worker), "1", px=HEARTBEAT_MS)

    def lock(self, sid: str, worker: str = "") -> str | None:
        """The session's lock for ``worker`` (its token), or None while another live worker holds
        it; one held by a worker without a heartbeat is taken over."""
        token = _lock_token(worker)
        taken = self._lock(keys=[lock_key(sid)], args=[token, LOCK_MS, heartbeat_key("")])
        return token if int(taken) == 1 else None

    def unlock(self, sid: str, token: str) -> None:
        self._unlock(keys=[lock_key(sid)], args=[token])

    # -- a round's calls, one round trip each (a round serves up to 64 sessions) -------------------

    def take_many(
        self, wanted: list[tuple[str, list[str], int | None]], worker: str
    ) -> list[tuple[str, dict[str, bytes], bytes | None] | None]:
        """For each (session, field names, journaled seq or None): ``lock`` it for ``worker`` and
        read those of its fields it has and that chunk's audio, in one step per session, pipelined;
        (the lock's token, the fields, the chunk), or None where another live worker holds it."""
        tokens = [_lock_token(worker) for _ in wanted]
        calls = []
        for (sid, names, seq), token in zip(wanted, tokens):
            keys = [lock_key(sid), session_key(sid), journal_key(sid)]
            args: list[str | int] = [
                token,
                LOCK_MS,
                heartbeat_key(""),
                "" if seq is None else str(seq),
                *names,
            ]
            calls.append((self._take, keys, args))
        out: list[tuple[str, dict[str, bytes], bytes | None] | None] = []
        for (_, names, _), token, got in zip(wanted, tokens, run_scripts(self.r, calls)):
            if int(got[0]) != 1:
                out.append(None)
                continue
            fields = {n: v for n, v in zip(names, got[2:]) if v is not None}
            out.append((token, fields, got[1]))
        return out

    def save_many(self, saves: list[Save]) -> list[bool]:
        """``save`` for each, pipelined (True: saved; each one's ``unlock`` is done either way
        where the lock was still its own)."""
        calls = [(self._save, save.keys(), save.args()) for save in saves]
        return [int(v) == 1 for v in run_scripts(self.r, calls)]

    def phrases_many(self, sids: list[str]) -> list[list[dict[str, Any]]]:
        """Every phrase each session released so far, in order (the ``phrases`` list, then a
        layout-3 session's ``phrases`` field, not moved yet), pipelined."""
        pipe = self.r.pipeline(transaction=False)
        for sid in sids:
            pipe.lrange(phrases_key(sid), 0, -1)
            pipe.hget(session_key(sid), "phrases")
        values = pipe.execute()
        return [
            [json.loads(p) for p in listed] + json.loads(legacy or b"[]")
            for listed, legacy in zip(values[::2], values[1::2])
        ]

    def finish_many(self, unlocks: list[tuple[str, str]], replies: list[tuple[Item, dict[str, Any]]]) -> None:
        """``unlock`` and ``reply`` for many, pipelined."""
        pipe = self.r.pipeline(transaction=False)
        for sid, token in unlocks:
            self._unlock(keys=[lock_key(sid)], args=[token], client=pipe)
        _push_replies(pipe, replies)
        pipe.execute()

    def load(self, sid: str) -> dict[str, bytes]:
        data = cast("dict[bytes, bytes]", self.r.hgetall(session_key(sid)))
        return {k.decode(): v for k, v in data.items()}

    def load_fields(self, sid: str, names: list[str]) -> dict[str, bytes]:
        """Only the named fields of the session (those it has): the small ones, without the
        hundreds of KiB of stream state when the worker already holds it."""
        values = cast("list[bytes | None]", self.r.hmget(session_key(sid), names))
        return {n: v for n, v in zip(names, values) if v is not None}

    def wait_pending(
        self, queue: str, count: int, timeout: float, worker: str = "", *, shared: bool = True
    ) -> list[Item]:
        """Like pop_pending (without the refresh), but waits up to ``timeout`` s for the first item
        of either list."""
        got = self.r.blpop(_lists(queue, worker, shared), timeout=timeout)
        if got is None:
            return []
        first = cast("tuple[bytes, bytes]", got)[1]
        return [*_items([first]), *self.pop_pending(queue, count - 1, worker, shared=shared)]

    def busy(self, queue: str, worker: str) -> None:
        """``worker`` is over its capacity (for AWAKE_MS): sessions are not handed to it."""
        self.r.set(busy_key(queue, worker), "1", px=AWAKE_MS)

    def least_loaded(self, queue: str, worker: str) -> int | None:
        """The fewest sessions held by a worker other than ``worker`` that serves ``queue`` (its
        ``serving`` flag is set, to a count) and is not busy; None when there is no such worker.
        A flag that holds no count names no taker (the pid that earlier versions wrote there reads
        as a large load)."""
        recent = self.r.zrangebyscore(servers_key(queue), time.time() - AWAKE_MS / 1000, "+inf")
        others = [w.decode() for w in cast("list[bytes]", recent) if w.decode() != worker]
        if not others:
            return None
        pipe = self.r.pipeline(transaction=False)
        for other in others:
            pipe.get(serving_key(queue, other))
            pipe.exists(busy_key(queue, other))
        flags = pipe.execute()
        loads = [
            int(held) for held, busy in zip(flags[::2], flags[1::2]) if held and held.isdigit() and not busy
        ]
        return min(loads) if loads else None

    def chunk(self, sid: str, seq: int) -> bytes | None:
        return self.r.hget(journal_key(sid), str(seq))  # type: ignore[return-value]

    def journal(self, sid: str, start: int, stop: int) -> list[bytes | None]:
        """The journaled chunks ``start`` .. ``stop - 1`` (None where one is missing)."""
        if start >= stop:
            return []
        names = [str(seq) for seq in range(start, stop)]
        return cast("list[bytes | None]", self.r.hmget(journal_key(sid), names))

    def save(
        self,
        sid: str,
        token: str,
        ttl: int,
        fields: dict[str, str | bytes],
        drop: str | None = None,
        journal: tuple[int, int] = (0, 0),
        journal_ttl: int = 0,
    ) -> bool:
        """Write ``fields`` if this worker still holds the lock (and the session exists); drop the
        journal entries ``journal`` = (from, to) (to < 0: the whole journal and the phrases list),
        extend the rest (``journal_ttl``, 0: the session's ``ttl``)."""
        save = Save(sid, token, ttl, fields, drop, journal, journal_ttl)
        return int(self._save(keys=save.keys(), args=save.args())) == 1

    def reply(self, item: Item, payload: dict[str, Any]) -> None:
        pipe = self.r.pipeline(transaction=False)
        _push_replies(pipe, [(item, payload)])
        pipe.execute()


def _lock_token(worker: str) -> str:
    """A new lock token: ``<worker>|<random>`` (the lock rule reads the worker's heartbeat by it),
    else random."""
    return f"{worker}|{secrets.token_hex(12)}" if worker else secrets.token_hex(16)


def _lists(queue: str, worker: str, shared: bool) -> list[str]:
    """The pending lists a worker pops, in order: its own (with ``worker``), then the shared one
    (unless a worker leaves it to the others: not ``shared``)."""
    return ([own_key(queue, worker)] if worker else []) + (
        [pending_key(queue)] if shared or not worker else []
    )


def _items(raw: list[bytes]) -> list[Item]:
    """Work items from the pending list (an unreadable one is dropped)."""
    items = []
    for value in raw:
        try:
            items.append(Item.from_json(value))
        except (ValueError, KeyError, TypeError):
            continue
    return items


def _push_replies(pipe: Any, replies: list[tuple[Item, dict[str, Any]]]) -> None:
    """Queue the answers on ``pipe``: one RPUSH per API inbox (an item without one: its own reply
    list), each list kept REPLY_SECONDS after its last answer."""
    inboxes: dict[str, list[str]] = {}
    for item, payload in replies:
        if item.inbox:
            inboxes.setdefault(inbox_key(item.inbox), []).append(json.dumps({"to": item.member, **payload}))
        else:
            key = reply_key(item.id, item.reply)
            pipe.rpush(key, json.dumps(payload))
            pipe.expire(key, REPLY_SECONDS)
        pipe.expire(known_key(item.id), KNOWN_SECONDS)
    for key, messages in inboxes.items():
        pipe.rpush(key, *messages)
        pipe.expire(key, REPLY_SECONDS)
