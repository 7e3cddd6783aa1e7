"""A channel: its queue, its in-flight and deferred sets, and the consumers it feeds.

Delivery is push-driven: a message put into a channel goes straight to a ready consumer when
there is one, and a consumer that becomes ready pulls from the queue. There is no pump greenlet
per channel or per client, so a message costs no greenlet switch on its way through. Messages
move in batches (a publish, a run of FINs, a consumer's free window): one clock reading, one
in-flight insert run and one output buffer per batch, not per message.
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Protocol

from . import metadata
from .message import Message, encode_many
from .pqueue import DeadlineQueue

if TYPE_CHECKING:
    from .topic import Topic

log = logging.getLogger(__name__)

#: most messages one consumer gets in one hand-over before the next ready consumer's turn
DELIVERY_BATCH = 256


class Consumer(Protocol):
    """What a channel needs of a subscribed connection (client.Client provides it)."""

    id: int
    ready_count: int
    in_flight_count: int
    msg_timeout: float
    sample_rate: int

    def is_ready(self) -> bool: ...
    def send_messages(self, msgs: list[Message]) -> None: ...
    def close(self) -> None: ...


class ChannelError(Exception):
    """A FIN/REQ/TOUCH that cannot be applied; its text follows nsqd's."""


class QueueFull(Exception):
    """No room in memory and no backend to spill to."""


class Channel:
    def __init__(
        self,
        topic: Topic,
        name: str,
        ephemeral: bool,
        backend,
        opts,
        scheduler,
        deferred_file: str | None = None,
    ) -> None:
        self.topic = topic
        self.topic_name = topic.name
        self.name = name
        self.ephemeral = ephemeral
        self.paused = False
        self.exiting = False
        self.backend = backend
        self._opts = opts
        self._scheduler = scheduler
        #: where deferred messages and their due times survive a clean restart
        self._deferred_file = deferred_file
        self._mem_capacity = opts.mem_queue_size
        #: crash-safe mode: the backend is a cursor over the topic log (cursor.py), which
        #: keeps every message until this channel finishes it
        self.durable = bool(getattr(backend, "acknowledged", False))
        self.memory: deque[Message] = deque()
        self.in_flight = DeadlineQueue()
        self.deferred = DeadlineQueue()
        self.clients: dict[int, Consumer] = {}
        # Ready consumers in round-robin order. An OrderedDict, not a dict: rotating a plain
        # dict leaves deleted slots at its front, and next(iter()) then scans them all.
        self._ready: OrderedDict[int, Consumer] = OrderedDict()
        self._disk_turn = False
        #: the deadline the scheduler will next wake this channel at, None when not scheduled
        self.wake_at: float | None = None
        self.message_count = 0
        self.requeue_count = 0
        self.timeout_count = 0
        #: e2e latency stream (nsqd/e2e.py attaches one when percentiles are configured)
        self.e2e = None
        #: delivery policy in force (policy.ChannelPolicy), None for nsqd's behaviour
        self.policy = None

    def __repr__(self) -> str:
        return f"<Channel {self.topic_name}:{self.name}>"

    # -- gauges -------------------------------------------------------------------------

    def depth(self) -> int:
        return len(self.memory) + self.backend_depth()

    def backend_depth(self) -> int:
        return self.backend.depth() if self.backend is not None else 0

    def in_flight_count(self) -> int:
        return len(self.in_flight)

    def deferred_count(self) -> int:
        return len(self.deferred)

    # -- messages in --------------------------------------------------------------------

    def room(self) -> int | None:
        """How many more messages fit, or None when overflow goes to a backend."""
        if self.backend is not None:
            return None
        return max(0, self._mem_capacity - len(self.memory)) + len(self._ready)

    def put_many(self, msgs: list[Message]) -> None:
        """Accept a batch from the topic; DPUB messages go to the deferred set.

        Ready consumers and the memory queue take what they can, in order; the rest goes to
        the disk queue in one write.
        """
        self.message_count += len(msgs)
        # What fits: the memory queue's room plus the ready consumers' free windows (the pump
        # below moves the latter straight on, so memory ends within its capacity).
        fits = self._mem_capacity - len(self.memory)
        if self._ready and not self.paused:
            fits += sum(c.ready_count - c.in_flight_count for c in self._ready.values())
        spill: list[Message] = []
        queue = self.memory
        for msg in msgs:
            if msg.defer > 0:
                self._defer(msg, msg.defer)
            elif spill or fits <= 0:
                spill.append(msg)  # once spilling, the rest follows to keep the order
            else:
                queue.append(msg)
                fits -= 1
        if self._ready:
            self._pump()
        if spill:
            if self.backend is None:
                raise QueueFull(f"channel {self.topic_name}:{self.name} memory queue is full")
            self.backend.put_many(encode_many(spill))
        if self.policy is not None:
            self.policy.trim()

    def log_grew(self, count: int) -> None:
        """Crash-safe mode: `count` more messages of the topic log are visible: deliver."""
        self.message_count += count
        self._pump()
        if self.policy is not None:
            self.policy.trim()

    def replay(self, since_ns: int | None) -> tuple[int, int]:
        """Crash-safe mode: deliver again what was published since `since_ns` (unix ns;
        None: the oldest retained message). Returns the cursor's new position and how many
        messages it queued from there."""
        if not self.durable:
            raise ChannelError("replay needs --crash-safe")
        position = self.backend.rewind(self.backend.log.seq_at(since_ns))
        queued = self.backend.depth()
        self._pump()
        return position, queued

    def _enqueue(self, msg: Message) -> None:
        if self._ready and not self.paused:
            self._deliver(next(iter(self._ready.values())), [msg])
        elif msg.token is not None or len(self.memory) < self._mem_capacity:
            # a crash-safe message already has its place on disk: requeue it in memory
            self.memory.append(msg)
        elif self.backend is not None:
            self.backend.put(msg.encode())
        else:
            raise QueueFull(f"channel {self.topic_name}:{self.name} memory queue is full")

    def _defer(self, msg: Message, delay: float) -> None:
        deadline = time.monotonic() + delay
        self.deferred.push(msg, deadline)
        self._schedule(deadline)
        if msg.token is not None:
            self.backend.defer(msg.token, deadline)  # the cursor keeps it across a crash

    def _take(self) -> Message | None:
        """Next queued message: memory and disk take turns when both hold some."""
        if self.durable:
            return self.memory.popleft() if self.memory else self._take_pending()
        backend = self.backend
        if backend is not None and (self._disk_turn or not self.memory) and backend.readable():
            self._disk_turn = False
            data = backend.get()
            if data is not None:
                return Message.decode(data)
        self._disk_turn = True
        if self.memory:
            return self.memory.popleft()
        return None

    def _take_many(self, count: int) -> list[Message]:
        """Up to `count` queued messages; straight off the memory queue when disk has none."""
        memory = self.memory
        if not self.durable and (self.backend is None or not self.backend.readable()):
            self._disk_turn = True
            if len(memory) <= count:
                msgs = list(memory)
                memory.clear()
                return msgs
            popleft = memory.popleft
            return [popleft() for _ in range(count)]
        msgs = []
        while len(msgs) < count:
            msg = self._take()
            if msg is None:
                break
            msgs.append(msg)
        return msgs

    def _take_pending(self) -> Message | None:
        """Crash-safe mode: the next message of the log, kept there until FIN; one still
        due later (DPUB, or a delayed requeue before a restart) goes to the deferred set."""
        while (msg := self.backend.read()) is not None:
            if msg.defer <= 0:
                return msg
            self._defer(msg, msg.defer)
        return None

    def _forget(self, msg: Message) -> None:
        """A crash-safe message is finished (or dropped): the cursor records it."""
        if msg.token is not None:
            self.backend.ack(msg.token)
            msg.token = None

    # -- delivery -----------------------------------------------------------------------

    def _deliver(self, client: Consumer, msgs: list[Message]) -> None:
        """Hand a batch to one ready consumer (no more than its free window)."""
        if self.policy is not None:
            msgs = [msg for msg in msgs if not self.policy.expired(msg)]
        if client.sample_rate:
            msgs = self._sampled(client, msgs)
        if not msgs:
            return
        now = time.monotonic()
        for msg in msgs:
            msg.attempts += 1
            msg.client = client
            msg.delivered_at = now
        deadline = now + client.msg_timeout
        self.in_flight.push_many(msgs, deadline)
        wake_at = self.wake_at
        if wake_at is None or deadline < wake_at:
            self._schedule(deadline)
        client.in_flight_count += len(msgs)
        client.send_messages(msgs)
        # Rotate for round robin, or drop out of the ready set once the window is full.
        if client.in_flight_count < client.ready_count:
            self._ready.move_to_end(client.id)
        else:
            del self._ready[client.id]

    def _sampled(self, client: Consumer, msgs: list[Message]) -> list[Message]:
        """nsqd drops unsampled messages for the whole channel."""
        kept = []
        for msg in msgs:
            if random.randrange(100) > client.sample_rate:
                self._forget(msg)
            else:
                kept.append(msg)
        return kept

    def _pump(self) -> None:
        """Hand queued messages to ready consumers until one side runs out."""
        ready = self._ready
        while ready and not self.paused:
            client = next(iter(ready.values()))
            room = client.ready_count - client.in_flight_count
            msgs = self._take_many(min(room, DELIVERY_BATCH))
            if not msgs:
                return
            # reading the disk queue can yield (fsync): things may have changed meanwhile
            if self.paused or client.id not in ready:
                self.memory.extendleft(reversed(msgs))
                continue
            room = client.ready_count - client.in_flight_count  # >= 1 while it is ready
            if room < len(msgs):
                self.memory.extendleft(reversed(msgs[room:]))
                del msgs[room:]
            self._deliver(client, msgs)

    def update_ready(self, client: Consumer) -> None:
        """Re-evaluate one consumer's readiness after RDY, FIN, REQ or a timeout."""
        if client.id not in self.clients:
            return
        if client.is_ready():
            if client.id not in self._ready:
                self._ready[client.id] = client
                self._pump()
        else:
            self._ready.pop(client.id, None)

    # -- consumers ----------------------------------------------------------------------

    def add_client(self, client: Consumer) -> None:
        if self.exiting:
            raise ChannelError("channel is exiting")
        limit = self._opts.max_channel_consumers
        if limit and len(self.clients) >= limit:
            raise ChannelError(
                f"consumers for {self.topic_name}:{self.name} exceeds limit of {limit}"
            )
        self.clients[client.id] = client

    def remove_client(self, client: Consumer) -> None:
        """A consumer left; its in-flight messages stay until they time out, as in nsqd."""
        if self.clients.pop(client.id, None) is None:
            return
        self._ready.pop(client.id, None)
        if self.ephemeral and not self.clients and not self.exiting:
            self.topic.delete_channel(self.name)

    # -- FIN / REQ / TOUCH --------------------------------------------------------------

    def _owned(self, client: Consumer, msg_id: bytes) -> Message:
        msg = self.in_flight.get(msg_id)
        if msg is None:
            raise ChannelError("ID not in flight")
        if msg.client is not client:
            raise ChannelError("client does not own message")
        return msg

    def finish(self, client: Consumer, msg_id: bytes) -> None:
        failed = self.finish_many(client, [msg_id])
        if failed:
            raise ChannelError(failed[0][1])

    def finish_many(self, client: Consumer, msg_ids: list[bytes]) -> list[tuple[bytes, str]]:
        """FIN a run of ids from one consumer, with one release (and pump) for the lot; the
        ids that could not be finished come back with nsqd's reason, in order."""
        msgs = self.in_flight.remove_many(msg_ids)
        failed: list[tuple[bytes, str]] = []
        if not all([msg is not None and msg.client is client for msg in msgs]):
            msgs = self._sort_out_failed(client, msg_ids, msgs, failed)
        if self.e2e is not None:
            for msg in msgs:
                self.e2e.insert(msg.timestamp)
        if self.durable:
            for msg in msgs:
                self._forget(msg)
        if msgs:
            self._release(client, len(msgs))
        return failed

    def _sort_out_failed(
        self,
        client: Consumer,
        msg_ids: list[bytes],
        msgs: list[Message | None],
        failed: list[tuple[bytes, str]],
    ) -> list[Message]:
        """The owned messages of a FIN run; the others' reasons go to `failed`, and another
        consumer's message goes back in flight untouched."""
        owned = []
        for msg_id, msg in zip(msg_ids, msgs, strict=True):
            if msg is None:
                failed.append((msg_id, "ID not in flight"))
            elif msg.client is not client:
                self.in_flight.push(msg, msg.deadline)
                failed.append((msg_id, "client does not own message"))
            else:
                owned.append(msg)
        return owned

    def requeue(self, client: Consumer, msg_id: bytes, delay: float) -> None:
        msg = self._owned(client, msg_id)
        if self.exiting:
            raise ChannelError("exiting")
        self.in_flight.remove(msg_id)
        self.requeue_count += 1
        self._release(client)
        if self.policy is not None and self.policy.retry(msg):
            return
        if delay > 0:
            self._defer(msg, delay)
        else:
            self._enqueue(msg)

    def touch(self, client: Consumer, msg_id: bytes) -> None:
        msg = self._owned(client, msg_id)
        now = time.monotonic()
        deadline = min(now + client.msg_timeout, msg.delivered_at + self._opts.max_msg_timeout)
        self.in_flight.push(msg, deadline)

    def _release(self, client: Consumer, count: int = 1) -> None:
        client.in_flight_count -= count
        if client.id in self.clients and client.id not in self._ready and client.is_ready():
            self._ready[client.id] = client
            self._pump()

    # -- timeouts and deferrals (driven by the daemon's single sweeper) ------------------

    def _schedule(self, deadline: float) -> None:
        wake_at = self.wake_at
        if wake_at is None or deadline < wake_at:
            self.wake_at = deadline
            self._scheduler.schedule(self, deadline)

    def sweep(self, now: float) -> float | None:
        """Requeue timed-out messages and release due deferred ones; return the next deadline."""
        for msg in self.in_flight.pop_due(now):
            self.timeout_count += 1
            client = msg.client
            msg.client = None
            if client is not None:
                self._release(client)
            if self.policy is None or not self.policy.retry(msg):
                self._enqueue_or_spill(msg)
        for msg in self.deferred.pop_due(now):
            self._enqueue_or_spill(msg)
        next_in_flight = self.in_flight.next_deadline()
        next_deferred = self.deferred.next_deadline()
        candidates = [d for d in (next_in_flight, next_deferred) if d is not None]
        self.wake_at = min(candidates) if candidates else None
        return self.wake_at

    def _enqueue_or_spill(self, msg: Message) -> None:
        """Timed-out and due messages were already accepted: never refuse them."""
        try:
            self._enqueue(msg)
        except (QueueFull, OSError):
            self.memory.append(msg)

    # -- administration -----------------------------------------------------------------

    def pause(self) -> None:
        self.paused = True
        self.topic.nsqd.notify("channel_paused", self)

    def unpause(self) -> None:
        self.paused = False
        self.topic.nsqd.notify("channel_unpaused", self)
        self._pump()

    def empty(self) -> None:
        """Drop queued, in-flight and deferred messages; consumers' in-flight counts reset."""
        self.memory.clear()
        if self.backend is not None:
            self.backend.empty()
        self.in_flight.clear()
        self.deferred.clear()
        for client in list(self.clients.values()):
            client.in_flight_count = 0
            self.update_ready(client)

    def close_clients(self) -> None:
        for client in list(self.clients.values()):
            client.close()

    def restore_deferred(self) -> None:
        """Take back the deferred messages a clean shutdown saved, with their remaining delay."""
        if self._deferred_file is None:
            return
        now_ns = time.time_ns()
        for due_ns, data in metadata.load_deferred(self._deferred_file):
            self._defer(Message.decode(data), max(0.0, (due_ns - now_ns) / 1e9))

    def flush(self) -> None:
        """Clean shutdown: queued and in-flight messages to the disk queue, deferred ones to
        their own file with their due time; ephemeral channels just drop theirs."""
        queued = list(self.memory)
        self.memory.clear()
        if self.policy is not None:
            queued += self.policy.take_pending()
        for msg in self.in_flight.clear():
            msg.client = None
            queued.append(msg)
        deferred = self.deferred.clear()
        if self.backend is None or self.ephemeral:
            return
        if self.durable:
            # every message is still in the topic log; the cursor keeps what was finished
            # and the due times of delayed requeues
            self.backend.close()
            return
        now, now_ns = time.monotonic(), time.time_ns()
        entries = [(now_ns + int((m.deadline - now) * 1e9), m.encode()) for m in deferred]
        if queued:
            self.backend.put_many(encode_many(queued))
        self.backend.close()
        if self._deferred_file is not None:
            metadata.save_deferred(self._deferred_file, entries)
        log.info(
            "CHANNEL(%s:%s): flushed %d messages, %d deferred",
            self.topic_name,
            self.name,
            len(queued),
            len(deferred),
        )

    def remove_files(self) -> None:
        """After deletion: nothing of this channel may come back at the next start."""
        if self.backend is not None:
            self.backend.empty()
            self.backend.delete()
        if self._deferred_file is not None:
            metadata.save_deferred(self._deferred_file, [])
