"""The model's state rows kept in a preallocated batch buffer, on the model's device, between steps.

Stacking B rows of 430 KiB every step (and letting ONNX Runtime allocate, and the kernel zero, a
fresh B-row output every step) was a fifth of the engine's time with a cheap model. A
:class:`StateBank` instead holds two buffers of ``capacity`` rows on the session's device (numpy
memory wrapped by ONNX Runtime on the CPU; ``OrtValue`` device memory on CUDA) and binds them with
ORT's I/O binding: a step reads rows ``[0, B)`` of one buffer and writes ``state_next`` into rows
``[0, B)`` of the other, then the two swap. Each stream occupies one row (its *slot*); as long as
the same streams step in the same order (the steady state of a batch), no row is copied by the
engine at all, and on CUDA only the signal goes up and only the logprobs come back.

When the set changes (a stream joins or leaves, or the order changes), one small ONNX graph of our
own (``Concat`` + ``Gather``, run on the same device) gathers the rows still in the bank and the
rows of newly joined streams (uploaded from their host arrays) into the other buffer, in the new
order; streams that leave get their row copied back to the host first (their ``model_state``
becomes a plain array again). A stream's ``model_state`` is read through :class:`StreamState`'s
property: on the CPU it is a view of its row (writes to it reach the next step), on another
device reading it copies the row to the host and releases the slot.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .types import STATE_SIZE

if TYPE_CHECKING:
    from .stream import StreamState


LANE_ROWS = 2  # a batch is split over the lanes only when each lane gets at least this many rows


class Lanes:
    """Sessions of the same model that step contiguous slices of one batch at once, each in its own
    thread (ONNX Runtime releases the GIL while it runs). Empty: the bank's one session runs all."""

    def __init__(self, sessions: list[Any]) -> None:
        self.sessions = sessions
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.sessions)

    def submit(self, session: Any, io: Any) -> Future[None]:
        """Run ``io`` on ``session`` in a lane thread. A model is used in the process that loaded it:
        ONNX Runtime's sessions are not fork-safe (a Celery pool process loads its own model)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(len(self.sessions) - 1, thread_name_prefix="tone-lane")
        return self._pool.submit(session.run_with_iobinding, io)

    @staticmethod
    def bounds(b: int, n: int) -> list[tuple[int, int]]:
        """``n`` contiguous slices of ``b`` rows, as even as they come."""
        cuts = [b * i // n for i in range(n + 1)]
        return list(pairwise(cuts))


def _gather_graph() -> bytes:
    """rows = Gather(Concat(bank, fresh), index): the bank's rows and newly joined rows, reordered."""
    from onnx import TensorProto, helper

    f16 = TensorProto.FLOAT16
    graph = helper.make_graph(
        [
            helper.make_node("Concat", ["bank", "fresh"], ["all"], axis=0),
            helper.make_node("Gather", ["all", "index"], ["rows"], axis=0),
        ],
        "tone_state_gather",
        [
            helper.make_tensor_value_info("bank", f16, ["N", STATE_SIZE]),
            helper.make_tensor_value_info("fresh", f16, ["K", STATE_SIZE]),
            helper.make_tensor_value_info("index", TensorProto.INT64, ["B"]),
        ],
        [helper.make_tensor_value_info("rows", f16, ["B", STATE_SIZE])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())


class StateBank:
    """Two buffers of state rows on one device, bound to a session's ``state``/``state_next``."""

    def __init__(
        self,
        session: Any,
        device: str = "cpu",
        device_id: int = 0,
        *,
        host_views: bool = True,
        lanes: Lanes | None = None,
    ) -> None:
        """``host_views=False`` on the CPU keeps the rows in ORT-allocated memory without numpy
        views, exactly as on CUDA (rows reach the host only through the gather graph): the tests
        run the device path that way on machines without a GPU. ``lanes``: sessions that step
        slices of a large enough batch at once (CPU only), ``session`` the smaller batches."""
        import onnxruntime as ort

        self.session = session
        self.lanes = lanes if lanes is not None and len(lanes) > 1 and device == "cpu" else None
        self.host_views = host_views and device == "cpu"
        self.device = device  # "cpu" or "cuda": ORT's device type names
        self.device_id = device_id
        providers = session.get_providers()
        self._gather = ort.InferenceSession(_gather_graph(), providers=providers)
        self._bufs: list[Any] = []  # per buffer: an OrtValue
        self._host: list[npt.NDArray[np.float16] | None] = []  # per buffer: its numpy memory (CPU)
        self.capacity = 0
        self._cur = 0  # which buffer holds the rows of self.rows
        self.rows: list[StreamState] = []  # the stream in each occupied row of the current buffer
        self._logprobs: npt.NDArray[np.float32] | None = None
        self._signal: npt.NDArray[np.int32] | None = None
        self.gathers = 0  # how many times the rows were re-laid (joins, leaves, reorders)
        self.lane_steps = 0  # steps whose batch was split over the lanes

    # -- rows, as the streams see them ----------------------------------------------------------------

    def host_view(self, row: int) -> npt.NDArray[np.float16] | None:
        """The row as a numpy view (CPU banks), else None."""
        host = self._host[self._cur] if self._host else None
        return None if host is None else host[row]

    def download(self, rows: list[int]) -> npt.NDArray[np.float16]:
        """Copies of rows of the current buffer, on the host."""
        host = self._host[self._cur] if self._host else None
        if host is not None:
            return host[rows]  # fancy indexing: already a copy
        return self._run_gather(len(self.rows), np.zeros((0, STATE_SIZE), np.float16), rows, None)

    def _owned(self) -> list[tuple[int, StreamState]]:
        """The rows whose stream still has its state here (not taken home or to another bank)."""
        return [(i, s) for i, s in enumerate(self.rows) if s._slot is not None and s._slot == (self, i)]

    def _send_home(self, owned: list[tuple[int, StreamState]]) -> None:
        """Rows leaving the bank become host arrays again. On the CPU a row goes back into the
        host array the bank gave that stream last time, when it has one: a live worker's rounds
        change their sessions every time, and a fresh array per row (a 430 KiB allocation, its
        pages faulted in, and a second copy) was a quarter of the live worker's samples at 200
        streams (py-spy)."""
        if not owned:
            return
        host = self._host[self._cur] if self._host else None
        if host is not None:
            fresh: list[tuple[int, StreamState]] = []
            for i, s in owned:
                mine = s._model if s._bank_owned else None
                if mine is not None:
                    np.copyto(mine, host[i])
                    s._slot = None
                else:
                    fresh.append((i, s))
            owned = fresh
            if not owned:
                return
        rows = self.download([i for i, _ in owned])
        for (_, s), row in zip(owned, rows):
            s._set_host_state(row, bank_owned=True)

    def release(self, stream: StreamState) -> None:
        """A stream leaves the bank: its row becomes a host array of its own."""
        slot = stream._slot
        if slot is not None and slot[0] is self:
            stream._set_host_state(self.download([slot[1]])[0])

    # -- a step -----------------------------------------------------------------------------------

    def step(self, streams: list[StreamState], signal: npt.NDArray[np.int32]) -> npt.NDArray[np.float32]:
        """One model call over ``streams`` (their state rows from the bank or from the host);
        afterwards every stream's state is its row of the bank. Returns the logprobs, a view
        of a buffer that the next step overwrites."""
        b = len(streams)
        if b > self.capacity:
            self._grow(b)
        if not self._in_place(streams):
            self._relayout(streams)
        assert self._logprobs is not None
        src, dst = self._cur, 1 - self._cur
        logprobs = self._logprobs[:b]
        lanes = self.lanes
        if lanes is not None and b >= LANE_ROWS * len(lanes):
            parts = list(zip(lanes.sessions, Lanes.bounds(b, len(lanes))))
            self.lane_steps += 1
        else:
            parts = [(self.session, (0, b))]
        runs = [
            (session, self._binding(session, src, dst, signal, logprobs, a, e)) for session, (a, e) in parts
        ]
        try:
            self._run(runs)
        except Exception:
            self._evict_all()  # the rows in ``src`` are intact: give them back to their streams
            raise
        self._cur = dst
        return logprobs

    def _binding(
        self,
        session: Any,
        src: int,
        dst: int,
        signal: npt.NDArray[np.int32],
        logprobs: npt.NDArray[np.float32],
        a: int,
        e: int,
    ) -> Any:
        """``session``'s I/O binding for rows ``[a, e)``: signal, state rows in ``src``, their next
        state into the same rows of ``dst``, logprobs into the same rows of ``logprobs``."""
        row = STATE_SIZE * 2  # float16 bytes
        io = session.io_binding()
        io.bind_cpu_input("signal", signal[a:e])
        shape = [e - a, STATE_SIZE]
        io.bind_input(
            "state", self.device, self.device_id, np.float16, shape, self._bufs[src].data_ptr() + a * row
        )
        io.bind_output(
            "state_next", self.device, self.device_id, np.float16, shape, self._bufs[dst].data_ptr() + a * row
        )
        part = logprobs[a:e]
        io.bind_output("logprobs", "cpu", 0, np.float32, list(part.shape), part.ctypes.data)
        return io

    def _run(self, runs: list[tuple[Any, Any]]) -> None:
        """Run the bindings: the first in this thread, the others in lane threads, all waited for
        (a failed lane must not leave another still writing into the buffers)."""
        lanes = self.lanes
        futures = [lanes.submit(session, io) for session, io in runs[1:]] if lanes is not None else []
        error: BaseException | None = None
        try:
            runs[0][0].run_with_iobinding(runs[0][1])
        except Exception as exc:
            error = exc
        for future in futures:
            error = error or future.exception()
        if error is not None:
            raise error

    def _in_place(self, streams: list[StreamState]) -> bool:
        rows = self.rows
        if len(rows) != len(streams):
            return False
        for i, (a, s) in enumerate(zip(rows, streams)):
            slot = s._slot
            if a is not s or slot is None or slot[0] is not self or slot[1] != i:
                return False
        return True

    def _relayout(self, streams: list[StreamState]) -> None:
        """Gather the new batch's rows (the bank's, and fresh host rows) into the current buffer's
        twin, release the streams that left, and make the twin current."""
        if self.host_views:
            self._relayout_host(streams)
            return
        self.gathers += 1
        index: list[int] = []
        fresh: list[npt.NDArray[np.float16]] = []
        n_bank = len(self.rows)
        seen: set[int] = set()
        for s in streams:
            slot = s._slot
            if slot is not None and slot[0] is self and id(s) not in seen:
                index.append(slot[1])
            else:
                index.append(n_bank + len(fresh))
                fresh.append(s._host_state())
            seen.add(id(s))
        staying = set(map(id, streams))
        self._send_home([(i, s) for i, s in self._owned() if id(s) not in staying])
        other = 1 - self._cur
        fresh_rows = np.stack(fresh) if fresh else np.zeros((0, STATE_SIZE), np.float16)
        self._run_gather(n_bank, fresh_rows, index, other)
        self._cur = other
        self.rows = list(streams)
        for i, s in enumerate(streams):
            s._slot = (self, i)

    def _relayout_host(self, streams: list[StreamState]) -> None:
        """``_relayout`` on the CPU, where both buffers are numpy memory: each row of the new batch
        is copied once, straight into the twin (the gather graph's Concat copied the whole bank and
        every fresh row again first: ~2.5x the bytes when live rounds change their sessions, the
        live worker's commonest case)."""
        self.gathers += 1
        staying = set(map(id, streams))
        self._send_home([(i, s) for i, s in self._owned() if id(s) not in staying])
        other = 1 - self._cur
        src, dst = self._host[self._cur], self._host[other]
        assert src is not None and dst is not None
        seen: set[int] = set()
        for i, s in enumerate(streams):
            slot = s._slot
            if slot is not None and slot[0] is self and id(s) not in seen:
                dst[i] = src[slot[1]]
            else:
                dst[i] = s._host_state()
            seen.add(id(s))
        self._cur = other
        self.rows = list(streams)
        for i, s in enumerate(streams):
            s._slot = (self, i)

    def _run_gather(
        self, n_bank: int, fresh: npt.NDArray[np.float16], index: list[int], into: int | None
    ) -> npt.NDArray[np.float16]:
        io = self._gather.io_binding()
        bank_ptr = self._bufs[self._cur].data_ptr() if self._bufs else 0
        if n_bank:
            io.bind_input("bank", self.device, self.device_id, np.float16, [n_bank, STATE_SIZE], bank_ptr)
        else:
            io.bind_cpu_input("bank", np.zeros((0, STATE_SIZE), np.float16))
        io.bind_cpu_input("fresh", np.ascontiguousarray(fresh, np.float16))
        io.bind_cpu_input("index", np.asarray(index, np.int64))
        if into is None:
            io.bind_output("rows", "cpu")
        else:
            io.bind_output(
                "rows", self.device, self.device_id, np.float16, [len(index), STATE_SIZE],
                self._bufs[into].data_ptr(),
            )  # fmt: skip
        self._gather.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()[0] if into is None else np.empty((0, STATE_SIZE), np.float16)

    def _grow(self, b: int) -> None:
        """Room for ``b`` rows: new buffers, the current rows copied over, twins freed."""
        import onnxruntime as ort

        capacity = max(b, 2 * self.capacity, 8)
        self._send_home(self._owned())  # keep the rows: home now, laid out again in the new buffers
        self.rows = []
        bufs: list[Any] = []
        host: list[npt.NDArray[np.float16] | None] = []
        for _ in range(2):
            if self.host_views:
                arr = np.empty((capacity, STATE_SIZE), np.float16)
                host.append(arr)
                bufs.append(ort.OrtValue.ortvalue_from_numpy(arr))
            else:
                host.append(None)
                bufs.append(
                    ort.OrtValue.ortvalue_from_shape_and_type(
                        [capacity, STATE_SIZE], np.float16, self.device, self.device_id
                    )
                )
        self._bufs, self._host, self.capacity, self._cur = bufs, host, capacity, 0
        self._logprobs = np.empty((capacity, 10, 35), np.float32)

    def _evict_all(self) -> None:
        self._send_home(self._owned())
        self.rows = []

    def signal_buffer(self, b: int) -> npt.NDArray[np.int32]:
        """A reusable [b, 2400, 1] int32 array for the step's signal."""
        if self._signal is None or len(self._signal) < b:
            self._signal = np.empty((max(b, self.capacity, 8), 2400, 1), np.int32)
        return self._signal[:b]
