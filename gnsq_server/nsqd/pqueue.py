"""The deadline queue behind a channel's in-flight and deferred sets."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from .message import Message


class DeadlineQueue:
    """Messages by id, released in deadline order.

    FIN and TOUCH would need a removable heap; instead a removed or re-timed message leaves a
    stale heap entry behind, skipped when it reaches the top, and the heap is rebuilt from the
    live set whenever stale entries outnumber live ones. Every operation stays O(log n) in C's
    heapq, amortised, with no per-message index bookkeeping in Python.
    """

    __slots__ = ("_items", "_heap", "_order")

    def __init__(self) -> None:
        self._items: dict[bytes, Message] = {}
        self._heap: list[tuple[float, int, Message]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, msg_id: bytes) -> bool:
        return msg_id in self._items

    def __iter__(self) -> Iterator[Message]:
        return iter(list(self._items.values()))

    def get(self, msg_id: bytes) -> Message | None:
        return self._items.get(msg_id)

    def push(self, msg: Message, deadline: float) -> None:
        """Add (or re-time) a message; its deadline is kept in `msg.deadline`."""
        msg.deadline = deadline
        self._items[msg.id] = msg
        heapq.heappush(self._heap, (deadline, next(self._order), msg))

    def remove(self, msg_id: bytes) -> Message | None:
        msg = self._items.pop(msg_id, None)
        if msg is not None and len(self._heap) > 2 * len(self._items) + 64:
            self._compact()
        return msg

    def pop_due(self, now: float) -> list[Message]:
        """Remove and return every message whose deadline is at or before `now`."""
        heap, items, due = self._heap, self._items, []
        while heap and heap[0][0] <= now:
            deadline, _, msg = heapq.heappop(heap)
            if items.get(msg.id) is msg and msg.deadline == deadline:
                del items[msg.id]
                due.append(msg)
        return due

    def next_deadline(self) -> float | None:
        heap, items = self._heap, self._items
        while heap:
            deadline, _, msg = heap[0]
            if items.get(msg.id) is msg and msg.deadline == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def clear(self) -> list[Message]:
        """Drop everything, returning the live messages."""
        live = list(self._items.values())
        self._items.clear()
        self._heap.clear()
        return live

    def _compact(self) -> None:
        self._heap = [(m.deadline, next(self._order), m) for m in self._items.values()]
        heapq.heapify(self._heap)
