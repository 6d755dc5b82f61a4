"""The cyclic garbage collector of a serving process (the API's, a worker's): fewer, shorter pauses.

Measured (``gc.callbacks``, the tones model, 200 ``/v1/stream`` sessions in step on this 2-core
machine): with CPython's default thresholds (700, 10, 10) the API process collected its oldest
generation 4 times in 2 tables of 20 bursts, each a pause of 160–240 ms of its event loop with
100 000–230 000 objects tracked, on top of every piece in flight; and dozens of young collections
of 6–12 ms. A live piece's burst takes ~150 ms, so each full collection put a burst or two past
300 ms: the tail of p95. Two causes:

- Everything the process imported and built at startup (FastAPI's routes, pydantic's schemas,
  SQLAlchemy's mappers, numpy, the model's session) is traversed by every full collection, though
  it lives as long as the process: ``gc.freeze()`` moves it out of the collector's sight once the
  process is warm.
- The young generation's threshold of 700 net allocations is reached many times in every burst (a
  piece in flight holds dozens of objects: its task, futures, frames, dicts): each young collection
  promotes what is in flight at that moment, and those promotions are what trigger full
  collections. A threshold of THRESHOLD_0 collects the young generation once in several bursts; the
  garbage it finds is cycles only (refcounting frees the rest at once), so memory is not held
  longer in any amount that matters.
"""

from __future__ import annotations

import gc

THRESHOLD_0 = 10_000  # net allocations of tracked objects between two young collections (default 700)
THRESHOLD_1 = 20  # young collections per middle one (default 10)
THRESHOLD_2 = 100  # middle collections per full one, at most (default 10; CPython also waits for
# the objects promoted since the last full one to be a quarter of the old generation)


def tune() -> None:
    """Set the thresholds (once per process; again after a fork is harmless)."""
    gc.set_threshold(THRESHOLD_0, THRESHOLD_1, THRESHOLD_2)


def freeze() -> None:
    """The process is warm: what exists now is collected once and then left out of every later
    collection (``gc.freeze``; a forked child keeps its parent's frozen objects frozen)."""
    gc.collect()
    gc.freeze()
