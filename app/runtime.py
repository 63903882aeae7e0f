"""Process-wide runtime tuning for serving: the garbage collector
(docs/decisions/0013-garbage-collector-at-scale.md)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# Collector thresholds while serving (young, middle, oldest); measured in decision 0013.
GC_THRESHOLDS = (50_000, 20, 100)


@contextmanager
def tuned_for_serving() -> Iterator[None]:
    """While the app serves: what was built at start-up frozen out of the collector's reach,
    and rarer young collections. Undone afterwards (a process may build more apps: the
    tests do)."""
    # Everything built so far lives as long as the process. Moved out of the collector's
    # reach, it is never scanned again: a full collection over it took 144 ms on the
    # benchmark machine, a pause every request in flight would wait for.
    gc.collect()
    gc.freeze()
    # What a request allocates dies by reference counting; only what is in flight when a
    # young collection runs survives it, and with CPython's default (700) that made each
    # request's objects reach the oldest generation, whose full collection then ran every
    # 1.3 s over every tenant's cached state (tokens, registry entries): 30-140 ms pauses,
    # growing with the tenant count. Rarer young collections promote far less.
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
