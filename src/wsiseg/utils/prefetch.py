"""A background thread that produces items ahead of their consumer (decoding while writing, reading while predicting)."""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


class prefetch(Iterator[T]):  # noqa: N801 - used like the generator function it replaced
    """Iterate ``items`` produced by a background thread (named ``name``, which first calls ``init``),
    at most ``depth`` items ahead.

    The thread starts at once, so the first item is produced while the caller sets up (creating
    arrays, loading a model) rather than after.  The producer starts an item only when a slot is
    free, so at most ``depth`` items exist besides the one being consumed; an exception in the
    producer is re-raised in the consumer, and the producer stops when the consumer stops (an
    error, ``close()``, or dropping the iterator, iterated or not): no thread is left waiting with
    items in hand.
    """

    def __init__(
        self, items: Iterable[T], depth: int = 1, init: Callable[[], None] | None = None, name: str = "wsiseg-prefetch"
    ):
        self._closed = True  # until the thread runs (close() and __del__ have nothing to stop before)
        self._ready: queue.Queue = queue.Queue()
        self._slots, self._stop, self._done = threading.Semaphore(max(1, depth)), threading.Event(), object()
        # (the thread gets the queue and its signals, not self: dropping the iterator must reach __del__)
        args = (items, init, self._ready, self._slots, self._stop, self._done)
        self._worker = threading.Thread(target=_produce, args=args, daemon=True, name=name)
        self._worker.start()
        self._closed = False

    def __next__(self) -> T:
        if self._closed:
            raise StopIteration
        item = self._ready.get()
        if item is self._done:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        self._slots.release()  # start on the next item while this one is consumed
        return item

    def close(self) -> None:
        """Stop the producer (after the item it is making, if any) and wait for its thread."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._slots.release()  # wake a producer waiting for a slot
        self._worker.join()

    def __del__(self) -> None:
        self.close()


def _produce(
    items: Iterable,
    init: Callable[[], None] | None,
    ready: queue.Queue,
    slots: threading.Semaphore,
    stop: threading.Event,
    done: object,
) -> None:
    """The producer thread of :class:`prefetch`: an item per free slot into ``ready`` until ``stop``, then ``done``
    (or the exception it met)."""
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
