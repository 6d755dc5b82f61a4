"""Live streaming sessions in Redis: any worker can continue any session.

Only Redis lives here (no Celery, no FastAPI): the API accepts chunks and waits for answers, the
workers (``worker.streaming``) load, advance and save sessions. Layout, every key with the
session's TTL (``stream_ttl_seconds``, or a shorter ``ttl_seconds`` option), extended on every
chunk and every save, never fixed from creation. Layout version 2 (``LAYOUT``; version 1 kept
one ``state`` field, which a worker still reads as ``state:0``)::

    tone:stream:<id>                 hash, the session:
        tenant                       the owning tenant's id
        layout                       the layout version, "2"
        options                      JSON {"sample_rate", "encoding", "channels", "decoder"}
        ttl                          seconds the session lives after its last activity
        state:<c>                    channel c's engine StreamState.to_bytes() (versioned,
                                     checksummed; never pickle); absent until the first chunk is
                                     processed. One stream (state:0) unless ``channels`` is 2: then
                                     state:0 (agent) and state:1 (client), split, not averaged
        held                         JSON [[start_frame, channel, end_frame, phrase], ...]: a stereo
                                     session's closed phrases not yet released in time order
        duration                     seconds of audio, once finalized
        job                          JSON {"webhook_url", "metadata", "started"} when the session is
                                     kept as a job at finalize (``store``); job_id once it was
        next_seq                     the next chunk the state will advance by
        accepted                     the next seq the API hands out / accepts (>= next_seq; the
                                     ones in between are queued or being processed)
        closing                      the seq of the finalize call, once it was accepted
        finished                     "1" once finalized
        phrases                      JSON list of every phrase so far (Phrase.to_dict())
        answer:<seq>                 the JSON answer to chunk <seq> (the last KEEP_ANSWERS are
                                     kept, for client retries)
        final                        the JSON answer to finalize
        created, updated             unix times
    tone:stream:<id>:known           the tenant, kept KNOWN_SECONDS: tells an expired session
                                     (410 session_expired) from one that never was (404)
    tone:stream:<id>:lock            SET NX PX (LOCK_MS) with a random token; released only by its
                                     owner (Lua): two chunks of a session never run at the same
                                     time; a dead worker's lock expires
    tone:stream:<id>:chunk:<seq>     a chunk's audio bytes, until a worker applied it
    tone:stream:<id>:reply:<nonce>   a list; the worker RPUSHes the answer, the API BLPOPs it
    tone:stream:pending:<queue>      a list of JSON work items {"id", "seq", "kind", "reply", "t"};
                                     the API queues an unanswered item again after
                                     ``stream_requeue_seconds`` (a worker may have died holding it):
                                     at-least-once, made idempotent by the seq check under the lock

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
from dataclasses import dataclass
from typing import Any, cast

import redis

from shared.asr.types import SAMPLE_RATE
from shared.errors import CodedError

PREFIX = "tone:stream:"
KEEP_ANSWERS = 16  # answers kept per session for client retries
KNOWN_SECONDS = 7 * 24 * 3600
LAYOUT = 2  # the session hash's layout version
LOCK_MS = 15_000  # a session lock held by a dead worker expires after this
REPLY_SECONDS = 120  # an unread reply list disappears after this
ENCODINGS = ("pcm_s16le", "mulaw", "alaw")
DECODERS = ("auto", "greedy", "beam")


def session_key(sid: str) -> str:
    return f"{PREFIX}{sid}"


def known_key(sid: str) -> str:
    return f"{PREFIX}{sid}:known"


def lock_key(sid: str) -> str:
    return f"{PREFIX}{sid}:lock"


def chunk_key(sid: str, seq: int) -> str:
    return f"{PREFIX}{sid}:chunk:{seq}"


def reply_key(sid: str, nonce: str) -> str:
    return f"{PREFIX}{sid}:reply:{nonce}"


def pending_key(queue: str) -> str:
    return f"{PREFIX}pending:{queue}"


class SessionError(CodedError):
    """A refused session call: an HTTP status, a machine-readable code and a message."""

    status: int

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code, status=status)

    def to_reply(self) -> dict[str, Any]:
        return {"status": self.status, "error": {"code": self.code, "message": self.message}}


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
    reply: str  # nonce of the reply list
    t: float  # when it was queued

    def to_json(self) -> str:
        return json.dumps(
            {"id": self.id, "seq": self.seq, "kind": self.kind, "reply": self.reply, "t": self.t}
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Item:
        d = json.loads(text)
        return cls(str(d["id"]), int(d["seq"]), str(d["kind"]), str(d["reply"]), float(d["t"]))


# KEYS: session, known. ARGV: tenant, seq ("" = arrival order), kind, now, known_seconds
_ACCEPT = """
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
"""

# KEYS: lock. ARGV: token
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: session, lock. ARGV: token, ttl, field-to-delete ("" = none), then field/value pairs
_SAVE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if ARGV[3] ~= '' then redis.call('HDEL', KEYS[1], ARGV[3]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


class SessionStore:
    """Session calls over one synchronous Redis client (the API runs them in its threadpool)."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._accept = client.register_script(_ACCEPT)
        self._unlock = client.register_script(_UNLOCK)
        self._save = client.register_script(_SAVE)

    # -- the API's side ---------------------------------------------------------------------------

    def create(self, tenant: str, options: Options, ttl: int, job: dict[str, Any] | None = None) -> str:
        """A new session; ``job``: keep it as a job at finalize (see the ``job`` field)."""
        sid = uuid.uuid4().hex
        now = str(time.time())
        fields = {
            "layout": str(LAYOUT), "tenant": tenant, "options": options.to_json(), "ttl": str(ttl),
            "next_seq": "0", "accepted": "0", "phrases": "[]", "created": now, "updated": now,
        }  # fmt: skip
        if job is not None:
            fields["job"] = json.dumps(job, ensure_ascii=False)
        pipe = self.r.pipeline()
        pipe.hset(session_key(sid), mapping=fields)  # type: ignore[arg-type]
        pipe.expire(session_key(sid), ttl)
        pipe.set(known_key(sid), tenant, ex=KNOWN_SECONDS)
        pipe.execute()
        return sid

    def accept(self, sid: str, tenant: str, kind: str, seq: int | None) -> Accepted:
        """Check the call against the session and the sequence rules, atomically (raises
        SessionError), extending the session's TTL."""
        if seq is not None and seq < 0:
            raise SessionError(422, "invalid_request", "seq must be 0 or more")
        out = self._accept(
            keys=[session_key(sid), known_key(sid)],
            args=[tenant, "" if seq is None else str(seq), kind, str(time.time()), KNOWN_SECONDS],
        )
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

    def next_seq(self, sid: str) -> int | None:
        value = self.r.hget(session_key(sid), "next_seq")
        return int(value) if value is not None else None

    def ttl_of(self, sid: str) -> int:
        value = self.r.hget(session_key(sid), "ttl")
        return int(value) if value else 60

    def store_chunk(self, sid: str, seq: int, data: bytes, ttl: int) -> None:
        self.r.set(chunk_key(sid, seq), data, ex=ttl)

    def stored_answer(self, sid: str, seq: int) -> dict[str, Any] | None:
        value = self.r.hget(session_key(sid), f"answer:{seq}")
        return json.loads(value) if value else None

    def stored_final(self, sid: str) -> dict[str, Any] | None:
        value = self.r.hget(session_key(sid), "final")
        return json.loads(value) if value else None

    def enqueue(self, queue: str, sid: str, seq: int, kind: str, nonce: str | None = None) -> str:
        """Queue a work item (again, with the same ``nonce``); returns the reply list's key to BLPOP."""
        nonce = nonce or secrets.token_hex(8)
        self.r.rpush(pending_key(queue), Item(sid, seq, kind, nonce, time.time()).to_json())
        return reply_key(sid, nonce)

    # -- the worker's side ------------------------------------------------------------------------

    def pop_pending(self, queue: str, count: int) -> list[Item]:
        raw = cast("list[bytes] | None", self.r.lpop(pending_key(queue), count)) or []
        items = []
        for value in raw:
            try:
                items.append(Item.from_json(value))
            except (ValueError, KeyError, TypeError):
                continue
        return items

    def push_back(self, queue: str, items: list[Item]) -> None:
        """Return items to the head of the pending list, in their order."""
        if items:
            self.r.lpush(pending_key(queue), *[i.to_json() for i in reversed(items)])

    def lock(self, sid: str) -> str | None:
        token = secrets.token_hex(16)
        return token if self.r.set(lock_key(sid), token, nx=True, px=LOCK_MS) else None

    def unlock(self, sid: str, token: str) -> None:
        self._unlock(keys=[lock_key(sid)], args=[token])

    def load(self, sid: str) -> dict[str, bytes]:
        data = cast("dict[bytes, bytes]", self.r.hgetall(session_key(sid)))
        return {k.decode(): v for k, v in data.items()}

    def load_fields(self, sid: str, names: list[str]) -> dict[str, bytes]:
        """Only the named fields of the session (those it has): the small ones, without the
        hundreds of KiB of stream state when the worker already holds it."""
        values = cast("list[bytes | None]", self.r.hmget(session_key(sid), names))
        return {n: v for n, v in zip(names, values) if v is not None}

    def chunk(self, sid: str, seq: int) -> bytes | None:
        return self.r.get(chunk_key(sid, seq))  # type: ignore[return-value]

    def save(
        self, sid: str, token: str, ttl: int, fields: dict[str, str | bytes], drop: str | None = None
    ) -> bool:
        """Write ``fields`` if this worker still holds the lock (and the session exists)."""
        args: list[str | bytes | int] = [token, ttl, drop or ""]
        for k, v in fields.items():
            args += [k, v]
        return int(self._save(keys=[session_key(sid), lock_key(sid)], args=args)) == 1

    def reply(self, item: Item, payload: dict[str, Any]) -> None:
        key = reply_key(item.id, item.reply)
        pipe = self.r.pipeline()
        pipe.rpush(key, json.dumps(payload))
        pipe.expire(key, REPLY_SECONDS)
        pipe.expire(known_key(item.id), KNOWN_SECONDS)
        pipe.execute()

    def drop_chunk(self, sid: str, seq: int) -> None:
        self.r.delete(chunk_key(sid, seq))
