"""A background thread that produces items ahead of their consumer (decoding while writing, reading while predicting)."""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def prefetch(items: Iterable[T], depth: int = 1, init: Callable[[], None] | None = None, name: str = "wsiseg-prefetch") -> Iterator[T]:
    """Iterate ``items`` produced by a background thread (named ``name``, which first calls ``init``),
    at most ``depth`` items ahead.

    The producer starts an item only when a slot is free, so at most ``depth``
    items exist besides the one being consumed; an exception in the producer
    is re-raised in the consumer, and the producer stops when the consumer
    stops (an error, ``close()``): no thread is left waiting with items in hand.
    """
    ready: queue.Queue = queue.Queue()
    slots, stop, done = threading.Semaphore(max(1, depth)), threading.Event(), object()

    def produce() -> None:
        try:
            if init is not None:
                init()
            iterator = iter(items)
            while slots.acquire() and not stop.is_set():
                item = next(iterator, done)
                ready.put(item)
                if item is done:
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            ready.put(err)

    worker = threading.Thread(target=produce, daemon=True, name=name)
    worker.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            slots.release()  # start on the next item while this one is consumed
            yield item
    finally:
        stop.set()
        slots.release()  # wake a producer waiting for a slot
        worker.join()
