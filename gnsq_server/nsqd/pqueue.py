"""The deadline queue behind a channel's in-flight and deferred sets."""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict

from .message import Message


class DeadlineQueue:
    """Messages by id, released in deadline order.

    Deadlines mostly arrive in order: a channel's consumers share a msg_timeout, so each new
    in-flight message is due after the previous one, and a TOUCH moves a message to the back.
    Those go into an insertion-ordered FIFO where push, FIN and expiry are O(1) operations of
    C's OrderedDict. A deadline earlier than the FIFO's last (a shorter msg_timeout, a capped
    TOUCH, a shorter REQ delay) goes into a heap instead; entries removed from the heap are
    skipped when they reach its top, and the heap is rebuilt once they outnumber live ones.
    """

    __slots__ = ("_fifo", "_fifo_last", "_late", "_heap", "_order")

    def __init__(self) -> None:
        self._fifo: OrderedDict[bytes, Message] = OrderedDict()
        self._fifo_last = float("-inf")
        self._late: dict[bytes, Message] = {}
        self._heap: list[tuple[float, int, Message]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._fifo) + len(self._late)

    def get(self, msg_id: bytes) -> Message | None:
        msg = self._fifo.get(msg_id)
        return msg if msg is not None else self._late.get(msg_id)

    def push(self, msg: Message, deadline: float) -> None:
        """Add (or re-time) a message; its deadline is kept in `msg.deadline`."""
        msg_id = msg.id
        if self._fifo.pop(msg_id, None) is None:
            self._late.pop(msg_id, None)
        msg.deadline = deadline
        if deadline >= self._fifo_last or not self._fifo:
            self._fifo[msg_id] = msg
            self._fifo_last = deadline
        else:
            self._late[msg_id] = msg
            heapq.heappush(self._heap, (deadline, next(self._order), msg))

    def push_many(self, msgs: list[Message], deadline: float) -> None:
        """Add a delivery batch sharing one deadline: the common case (nothing late, the
        deadline not before the FIFO's last, the ids new) costs one dict store per message."""
        fifo = self._fifo
        if self._late or (fifo and deadline < self._fifo_last):
            for msg in msgs:
                self.push(msg, deadline)
            return
        expected = len(fifo) + len(msgs)
        for msg in msgs:
            msg.deadline = deadline
            fifo[msg.id] = msg
        self._fifo_last = deadline
        if len(fifo) != expected:  # some were queued already and kept their old place
            for msg in msgs:
                fifo.move_to_end(msg.id)

    def remove_many(self, msg_ids: list[bytes]) -> list[Message | None]:
        """Remove a run of ids (a FIN run); None for each one not queued."""
        pop = self._fifo.pop
        msgs = [pop(msg_id, None) for msg_id in msg_ids]
        if self._late:
            remove = self.remove
            msgs = [m if m is not None else remove(i) for i, m in zip(msg_ids, msgs, strict=True)]
        return msgs

    def remove(self, msg_id: bytes) -> Message | None:
        msg = self._fifo.pop(msg_id, None)
        if msg is not None:
            return msg
        msg = self._late.pop(msg_id, None)
        if msg is not None and len(self._heap) > 2 * len(self._late) + 64:
            self._heap = [(m.deadline, next(self._order), m) for m in self._late.values()]
            heapq.heapify(self._heap)
        return msg

    def pop_due(self, now: float) -> list[Message]:
        """Remove and return every message whose deadline is at or before `now`."""
        due = []
        fifo = self._fifo
        while fifo:
            msg = fifo[next(iter(fifo))]
            if msg.deadline > now:
                break
            fifo.popitem(last=False)
            due.append(msg)
        heap, late = self._heap, self._late
        while heap and heap[0][0] <= now:
            deadline, _, msg = heapq.heappop(heap)
            if late.get(msg.id) is msg and msg.deadline == deadline:
                del late[msg.id]
                due.append(msg)
        return due

    def next_deadline(self) -> float | None:
        heap, late = self._heap, self._late
        while heap:
            deadline, _, msg = heap[0]
            if late.get(msg.id) is msg and msg.deadline == deadline:
                break
            heapq.heappop(heap)
        candidates = []
        if self._fifo:
            candidates.append(self._fifo[next(iter(self._fifo))].deadline)
        if heap:
            candidates.append(heap[0][0])
        return min(candidates) if candidates else None

    def clear(self) -> list[Message]:
        """Drop everything, returning the live messages."""
        live = [*self._fifo.values(), *self._late.values()]
        self._fifo.clear()
        self._late.clear()
        self._heap.clear()
        return live
