"""The StateBank: state rows kept in preallocated buffers between steps (ORT I/O binding).

Every step is checked against the plain way (stack the rows, ``session.run``, take ``state_next``)
while streams join, leave, change order and are read or overwritten from outside, with numpy views
of the rows (the CPU) and without them (the device path, as on CUDA, run here on the CPU).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from shared.asr.engine import Recognizer
from shared.asr.model import AcousticModel, lane_count
from shared.asr.state_bank import LANE_ROWS, Lanes, StateBank
from shared.asr.stream import StreamState
from shared.asr.types import CHUNK_SAMPLES, STATE_SIZE
from shared.dev.models.tones import synthesize


@pytest.mark.parametrize(
    ("host_views", "lanes"),
    [(True, 1), (False, 1), (True, 2), (True, 3), (False, 2)],
    ids=["cpu-views", "device-path", "2-lanes", "3-lanes", "2-lanes-device-path"],
)
def test_bank_steps_equal_plain_session_runs(
    recognizer: Recognizer, tone_model, host_views: bool, lanes: int
) -> None:
    """With lanes, a batch of at least LANE_ROWS rows per lane is split into slices that sessions of
    their own step at once: every logprob and state row still equals one plain run of the batch."""
    session = recognizer.model.session
    lane_sessions = AcousticModel(tone_model, threads=lanes, lanes=lanes).lanes if lanes > 1 else None
    bank = StateBank(session, "cpu", host_views=host_views, lanes=lane_sessions)
    rnd = random.Random(3)
    audio, _ = synthesize(["абв где ёжз", "ийк лмн", "опр сту фхц"])
    streams = [StreamState() for _ in range(7)]
    for i, s in enumerate(streams):  # rows that differ from the start: a slice off by a row shows
        s.model_state = np.full(STATE_SIZE, i / 8, np.float16)
    plain = {id(s): s.model_state.copy() for s in streams}
    pos = {id(s): rnd.randrange(0, 40) for s in streams}
    for step in range(60):
        batch = rnd.sample(streams, rnd.randint(1, len(streams)))
        if step % 7 == 3:  # the same set again, in the same order: the in-place path
            batch = list(bank.rows) or batch
        chunks = []
        for s in batch:
            k = pos[id(s)] % (len(audio) // CHUNK_SAMPLES)
            chunks.append(audio[k * CHUNK_SAMPLES : (k + 1) * CHUNK_SAMPLES])
            pos[id(s)] += 1
        signal = np.stack(chunks).astype(np.int32)[..., None]
        want_lp, want_state = session.run(
            ["logprobs", "state_next"], {"signal": signal, "state": np.stack([plain[id(s)] for s in batch])}
        )
        got_lp = bank.step(batch, signal.copy())
        assert np.array_equal(got_lp, want_lp)
        for s, row in zip(batch, want_state):
            plain[id(s)] = row
        probe = rnd.choice(streams)
        if step % 5 == 0:  # read from outside: equal to the plain state (on a device: brought home)
            assert np.array_equal(probe.model_state, plain[id(probe)])
        if step % 11 == 0:  # overwritten from outside: the next step must use the new row
            probe.model_state = np.full(STATE_SIZE, 0.5, np.float16)
            plain[id(probe)] = probe.model_state.copy()
    for s in streams:
        assert np.array_equal(s.model_state, plain[id(s)])
    assert bank.gathers < 60  # the in-place path was taken at times
    if lanes > 1:
        assert 0 < bank.lane_steps < 60  # both ways were taken: split batches and small ones


def test_lane_count() -> None:
    assert lane_count(None, 2, "cpu") == 2
    assert lane_count(None, 16, "cpu") == 2  # each lane is the model's weights again: at most 2 unasked
    assert lane_count(4, 16, "cpu") == 4  # asked for: as many as there are threads
    assert lane_count(None, 1, "cpu") == 1
    assert lane_count(3, 2, "cpu") == 2  # never more lanes than threads
    assert lane_count(1, 8, "cpu") == 1
    assert lane_count(None, 8, "cuda") == 1  # a GPU runs one call at a time
    with pytest.raises(ValueError, match="at least 1"):
        lane_count(0, 2, "cpu")
    assert Lanes.bounds(7, 3) == [(0, 2), (2, 4), (4, 7)]
    assert Lanes.bounds(4, 2) == [(0, 2), (2, 4)]


def test_lanes_sessions_have_their_share_of_threads(tone_model) -> None:
    model = AcousticModel(tone_model, threads=4, lanes=2)
    assert len(model.lanes) == 2
    assert all(s.get_session_options().intra_op_num_threads == 2 for s in model.lanes.sessions)
    assert model.session.get_session_options().intra_op_num_threads == 4  # small batches: every thread
    assert len(AcousticModel(tone_model, threads=1).lanes) == 0


class _FailingSession:
    """A lane whose model call fails (a unit-test stand-in: ORT's own errors come from a real call)."""

    class _Binding:
        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return lambda *args, **kwargs: None  # bind_input, bind_output, ...: nothing to bind

    def io_binding(self):  # type: ignore[no-untyped-def]
        return self._Binding()

    def run_with_iobinding(self, io) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("lane failed")


def test_a_failed_lane_gives_every_stream_its_state_back(recognizer: Recognizer, tone_model) -> None:
    """One lane fails while the other has written its rows: every stream gets its row from before
    the step back (the source buffer), and the bank goes on."""
    good = AcousticModel(tone_model, threads=2, lanes=2).lanes.sessions[0]
    bank = StateBank(recognizer.model.session, "cpu", lanes=Lanes([good, _FailingSession()]))
    streams = [StreamState() for _ in range(2 * LANE_ROWS)]
    signal = np.ones((len(streams), CHUNK_SAMPLES, 1), np.int32)
    bank.step(streams[:1], signal[:1])  # one row: the bank's own session, no lanes
    before = [s.model_state.copy() for s in streams]
    with pytest.raises(RuntimeError, match="lane failed"):
        bank.step(streams, signal)
    assert all(s._slot is None for s in streams)
    assert all(np.array_equal(s.model_state, b) for s, b in zip(streams, before))
    bank.step(streams[:1], signal[:1])


def test_model_state_views_write_through_on_the_cpu(recognizer: Recognizer) -> None:
    bank = StateBank(recognizer.model.session, "cpu")
    s = StreamState()
    signal = np.zeros((1, CHUNK_SAMPLES, 1), np.int32)
    bank.step([s], signal)
    assert s._slot is not None
    s.model_state[:5] = 7  # a view of its row in the bank
    assert np.all(bank.host_view(0)[:5] == 7)
    blob = s.to_bytes()
    assert np.array_equal(StreamState.from_bytes(blob).model_state, s.model_state)


def test_rows_going_home_reuse_the_banks_array_but_never_one_handed_out(recognizer: Recognizer) -> None:
    """A row leaving a CPU bank is copied into the host array the bank gave that stream before (no
    allocation per round); an array read through ``model_state`` is the caller's from then on."""
    bank = StateBank(recognizer.model.session, "cpu")
    a, b = StreamState(), StreamState()
    signal = np.ones((1, CHUNK_SAMPLES, 1), np.int32)
    bank.step([a], signal)
    bank.step([b], signal)  # a goes home: a fresh array the bank owns
    first = a._model
    assert a._slot is None and a._bank_owned
    for _ in range(3):
        bank.step([a], signal)
        bank.step([b], signal)  # a goes home again: into the same array, with its new row
        assert a._model is first
    plain = np.zeros(STATE_SIZE, np.float16)
    for _ in range(4):
        plain = recognizer.model.session.run(["state_next"], {"signal": signal, "state": plain[None]})[0][0]
    assert np.array_equal(a._model, plain)
    handed = a.model_state  # escapes to the caller
    kept = handed.copy()
    bank.step([a], signal)
    bank.step([b], signal)
    assert a._model is not handed and np.array_equal(handed, kept)  # never written behind its back


def test_bank_grows_and_keeps_rows(recognizer: Recognizer) -> None:
    bank = StateBank(recognizer.model.session, "cpu", host_views=False)
    streams = [StreamState() for _ in range(20)]
    for i, s in enumerate(streams):
        s.model_state = np.full(STATE_SIZE, i, np.float16)
    signal = np.zeros((20, CHUNK_SAMPLES, 1), np.int32)
    bank.step(streams[:3], signal[:3])
    before = [s.model_state[-1] for s in streams[:3]]  # the tone model passes the tail through
    bank.step(streams, signal)  # 20 > 8 rows: the bank grows
    assert bank.capacity >= 20
    assert [s.model_state[-1] for s in streams] == [*before, *range(3, 20)]


@pytest.mark.parametrize("host_views", [True, False], ids=["cpu-views", "device-path"])
def test_a_failed_model_call_gives_every_stream_its_state_back(
    recognizer: Recognizer, host_views: bool
) -> None:
    bank = StateBank(recognizer.model.session, "cpu", host_views=host_views)
    streams = [StreamState() for _ in range(3)]
    signal = np.zeros((3, CHUNK_SAMPLES, 1), np.int32)
    bank.step(streams, signal)
    before = [s.model_state.copy() for s in streams]
    with pytest.raises(Exception, match=r"(?i)signal|shape|dimension"):
        bank.step(streams, np.zeros((3, 100, 1), np.int32))  # not T-one's chunk: ORT refuses it
    assert all(s._slot is None for s in streams)
    assert all(np.array_equal(s.model_state, b) for s, b in zip(streams, before))
    bank.step(streams, signal)  # and the bank goes on
