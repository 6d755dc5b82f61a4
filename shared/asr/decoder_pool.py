"""Decoding off the model's critical path: closed phrases go to a pool of decoder processes.

pyctcdecode's beam search (beam 200, with KenLM) takes 16 ms to seconds per phrase; run inside
``Recognizer.step`` it stalls every stream of the batch. With a :class:`DecoderPool`, the
recognizer hands each closed phrase's logprobs to a process of the pool and goes on with the next
model step; ``Recognizer.advance`` collects the answers at its end, in the order the phrases
closed, so transcripts are the same as decoding inline. Processes (not threads): beam search is
Python and holds the GIL, and processes use every core. Each process builds its own decoders
(the language model loaded once per process).

The standard library's ``ProcessPoolExecutor`` does the work (queues, a dead process breaking the
pool instead of hanging); processes are started with ``spawn`` so that a pool inside a process
that holds ONNX Runtime's threads is safe.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.process as mp_process
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from .decoder import BeamSearchDecoder, Decoder, GreedyDecoder, to_phrase
from .splitter import RawPhrase
from .types import Phrase

_decoders: dict[str, Decoder] = {}
_lm_path: str | None = None


PARENT_CHECK_SECONDS = 1.0


def _exit_with(parent: int) -> None:
    """End this pool process once its parent is gone (a worker killed with SIGKILL, or a Celery
    child replaced): a spawned process is reparented, never told, and would wait forever.
    ``parent`` is the pid of the process that made the pool, passed in, not read here: a process
    still starting when its parent died is already reparented when its initializer runs."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


def _init(lm_path: str | None, parent: int) -> None:
    global _lm_path
    _lm_path = lm_path
    _decoders.clear()
    _decoders["greedy"] = GreedyDecoder()
    threading.Thread(target=_exit_with, args=(parent,), name="exit-with-parent", daemon=True).start()


def _decode(name: str, raw: RawPhrase, channel: int, hotwords: tuple[str, ...] = ()) -> Phrase | None:
    dec = _decoders.get(name)
    if dec is None:
        dec = _decoders[name] = BeamSearchDecoder(_lm_path)
    return to_phrase(dec, raw, channel, hotwords)


def _warm(name: str) -> bool:
    """Build the decoder (load the LM) in a pool process before the first phrase needs it."""
    if name not in _decoders:
        _decoders[name] = BeamSearchDecoder(_lm_path)
    return True


class DecoderPool:
    """``workers`` decoder processes; ``submit`` returns a Future of the phrase (None when empty)."""

    def __init__(self, workers: int, lm_path: str | Path | None = None) -> None:
        if workers < 1:
            raise ValueError("a decoder pool needs at least one worker")
        self.workers = workers
        self.lm_path = str(lm_path) if lm_path else None
        # A Celery prefork child is a daemonic process, and multiprocessing refuses children to
        # those. Our decoder processes are ours to stop (close(), or the executor's exit hook; they
        # also end when this process dies and their pipes close), so the flag is lifted while the
        # pool starts them: all of them, now, by the warm-up tasks below. Billiard also gives its
        # children an authkey of its own type, which the standard library's spawn won't pickle:
        # the same key as the standard type, for as long.
        me = mp.current_process()
        daemonic = me._config.get("daemon")  # type: ignore[attr-defined]
        authkey = me._config.get("authkey")  # type: ignore[attr-defined]
        me._config["daemon"] = False  # type: ignore[attr-defined]
        if authkey is not None:
            me._config["authkey"] = mp_process.AuthenticationString(bytes(authkey))  # type: ignore[attr-defined]
        try:
            self._pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=mp.get_context("spawn"),
                initializer=_init,
                initargs=(self.lm_path, os.getpid()),
            )
            # the processes load the beam decoder now, not when the first phrase is waiting for it
            for f in [self._pool.submit(_warm, "beam") for _ in range(workers)]:
                f.result()
        finally:
            if authkey is not None:
                me._config["authkey"] = authkey  # type: ignore[attr-defined]
            if daemonic is None:
                me._config.pop("daemon", None)  # type: ignore[attr-defined]
            else:
                me._config["daemon"] = daemonic  # type: ignore[attr-defined]

    def submit(
        self, decoder: str, raw: RawPhrase, channel: int, hotwords: tuple[str, ...] = ()
    ) -> Future[Phrase | None]:
        """The phrase decoded in a pool process; ``hotwords``: the stream's vocabulary (beam only)."""
        return self._pool.submit(_decode, decoder, raw, channel, hotwords)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
