"""Work that runs ahead in a background thread (reading, writing), with its errors raised in the caller."""

from __future__ import annotations

import queue
import threading


class Background:
    """One worker thread fed through a bounded queue; errors surface in the caller."""

    def __init__(self, maxsize: int):
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.error: BaseException | None = None

    def check(self):
        if self.error is not None:
            raise self.error


def prefetch(iterator, depth: int = 2):
    """Yield from `iterator`, produced in a background thread up to `depth` items ahead."""
    bg, done = Background(depth), object()

    def run():
        try:
            for item in iterator:
                bg.queue.put(item)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            bg.error = e
        bg.queue.put(done)

    threading.Thread(target=run, daemon=True).start()
    while (item := bg.queue.get()) is not done:
        yield item
    bg.check()
