"""Group commit: many publishers waiting on one fsync instead of one each."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import gevent
from gevent.event import AsyncResult


class Durable(Protocol):
    """Storage whose writes so far become durable with sync_data() (OSError otherwise)."""

    def sync_data(self) -> None: ...


class GroupCommit:
    """Make writes durable for many waiting publishers with as few fsyncs as possible.

    Each caller names the queues it wrote to and waits. One worker greenlet syncs everything
    named so far; callers who arrive while an fsync runs are served together by the next
    round, so concurrent publishers share fsyncs instead of queueing for one each.
    """

    def __init__(self) -> None:
        self._queues: dict[int, Durable] = {}
        self._waiters: list[AsyncResult] = []
        self._worker: gevent.Greenlet | None = None
        self.rounds = 0

    def commit(self, queues: Iterable[Durable]) -> None:
        """Return once every record put into `queues` so far is on disk; OSError otherwise."""
        result = AsyncResult()
        for queue in queues:
            self._queues[id(queue)] = queue
        self._waiters.append(result)
        if self._worker is None:
            self._worker = gevent.spawn(self._run)
        result.get()

    def _run(self) -> None:
        try:
            while self._waiters:
                queues, waiters = list(self._queues.values()), self._waiters
                self._queues, self._waiters = {}, []
                error = None
                for queue in queues:
                    try:
                        queue.sync_data()
                    except OSError as exc:
                        error = exc
                self.rounds += 1
                for waiter in waiters:
                    if error is None:
                        waiter.set(None)
                    else:
                        waiter.set_exception(error)
        finally:
            self._worker = None
