"""Overlap plate decoding with inference: a bounded, ordered prefetch over a thread pool."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Value = TypeVar("Value")


@dataclass(frozen=True)
class Slot(Generic[Item, Value]):
    """One item with either its prepared value or the error that preparing it raised."""

    item: Item
    value: Value | None
    error: BaseException | None


def prefetch_batches(
    items: Iterable[Item],
    prepare: Callable[[Item], Value],
    *,
    batch_size: int,
    workers: int,
    prefetch_batches: int = 2,
) -> Iterator[list[Slot[Item, Value]]]:
    """Yield batches in input order while later items are prepared in worker threads.

    At most ``(prefetch_batches + 1) * batch_size`` items are in flight, so memory stays
    bounded however long the input is. An item whose preparation raises is yielded with
    its error instead of stopping the stream: the caller decides what a bad item means.
    """
    if batch_size < 1 or workers < 1:
        raise ValueError("batch_size and workers must be >= 1")
    window = (prefetch_batches + 1) * batch_size
    iterator = iter(items)
    pending: deque[tuple[Item, Future]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="awb-decode") as pool:

        def fill() -> None:
            while len(pending) < window:
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                pending.append((item, pool.submit(prepare, item)))

        fill()
        while pending:
            batch = []
            while pending and len(batch) < batch_size:
                item, future = pending.popleft()
                error = future.exception()
                batch.append(Slot(item, None if error else future.result(), error))
            fill()
            yield batch
