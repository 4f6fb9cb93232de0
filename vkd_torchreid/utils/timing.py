"""Where a loop's time goes: the time spent waiting for each item of an iterable."""
from __future__ import annotations

import time
from typing import Any, Iterable, Iterator


class TimedIterable:
    """An iterable whose iterators add the time each ``next()`` takes to :attr:`wait_s`.

    Around a data loader it is the time the consumer waited for its batches, which is
    torchreid's ``data_time`` summed over an epoch. Everything else (``len``, ``dataset``,
    ``batch_sampler``...) is the wrapped object's.

    Attributes:
        wrapped: the iterable.
        wait_s: seconds spent in ``next()`` of its iterators since construction or
            :meth:`reset` (the ``StopIteration`` that ends a pass included).
    """

    def __init__(self, wrapped: Iterable) -> None:
        self.wrapped = wrapped
        self.wait_s = 0.0

    def reset(self) -> None:
        self.wait_s = 0.0

    def __iter__(self) -> Iterator:
        start = time.perf_counter()
        it = iter(self.wrapped)  # starts (or resets) a loader's workers: part of the wait
        self.wait_s += time.perf_counter() - start
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.wait_s += time.perf_counter() - start
                return
            self.wait_s += time.perf_counter() - start
            yield item

    def __len__(self) -> int:
        return len(self.wrapped)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "wrapped":  # not yet set (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.wrapped, name)
