"""The registration db alone: nsqlookupd's add/remove/find rules, liveness and tombstones."""

from __future__ import annotations

import pytest

from gnsq_server.lookupd.registry import (
    CLIENT_REGISTRATION,
    PeerInfo,
    Producer,
    Registration,
    RegistrationDB,
    channel_registration,
    filter_by_active,
    topic_registration,
)

S = 1_000_000_000


class FakeClock:
    """Nanoseconds that only move when the test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000 * S

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(clock: FakeClock) -> RegistrationDB:
    return RegistrationDB(clock=clock)


def peer(n: int, clock: FakeClock, http_port: int = 4151) -> PeerInfo:
    address = f"127.0.0.1:{50000 + n}"
    return PeerInfo(
        id=address,
        remote_address=address,
        hostname=f"host{n}",
        broadcast_address=f"10.0.0.{n}",
        tcp_port=4150,
        http_port=http_port,
        version="1.3.0",
        last_update=clock(),
    )


def identify(db: RegistrationDB, info: PeerInfo) -> PeerInfo:
    db.add_producer(CLIENT_REGISTRATION, Producer(info))
    return info


def test_register_channel_also_registers_topic(db, clock):
    a = identify(db, peer(1, clock))
    db.register(a, "t", "c")
    assert db.topics() == ["t"]
    assert db.channels("t") == ["c"]
    assert [p.id for p in db.find_producers("channel", "t", "c")] == [a.id]
    assert [p.id for p in db.find_producers("topic", "t", "")] == [a.id]


def test_add_producer_is_idempotent_and_keeps_the_tombstone(db, clock):
    a = peer(1, clock)
    key = topic_registration("t")
    assert db.add_producer(key, Producer(a)) is True
    db.tombstone_topic_producer("t", "10.0.0.1:4151")
    assert db.add_producer(key, Producer(a)) is False
    assert db.find_producers("topic", "t", "")[0].tombstoned


def test_find_producers_dedups_across_keys(db, clock):
    a, b = peer(1, clock), peer(2, clock)
    db.register(a, "t1", "c")
    db.register(a, "t2")
    db.register(b, "t2")
    assert sorted(p.id for p in db.find_producers("topic", "*", "")) == [a.id, b.id]
    assert sorted(p.id for p in db.find_producers("channel", "t1", "*")) == [a.id]


def test_wildcard_matching():
    key = Registration("channel", "t", "c")
    assert key.matches("channel", "*", "*")
    assert key.matches("channel", "t", "*")
    assert not key.matches("topic", "*", "*")
    assert not key.matches("channel", "t", "")


def test_keys_stay_when_their_producers_leave(db, clock):
    a = identify(db, peer(1, clock))
    db.register(a, "t", "c")
    removed = db.remove_producer_everywhere(a.id)
    assert set(removed) == {
        CLIENT_REGISTRATION,
        topic_registration("t"),
        channel_registration("t", "c"),
    }
    assert db.topics() == ["t"]
    assert db.channels("t") == ["c"]
    assert db.find_producers("topic", "t", "") == []


def test_disconnect_keeps_even_ephemeral_keys(db, clock):
    """nsqlookupd only drops ephemeral keys on UNREGISTER, not when the connection closes."""
    a = identify(db, peer(1, clock))
    db.register(a, "e#ephemeral", "c#ephemeral")
    db.remove_producer_everywhere(a.id)
    assert db.topics() == ["e#ephemeral"]
    assert db.channels("e#ephemeral") == ["c#ephemeral"]


def test_unregister_channel(db, clock):
    a, b = peer(1, clock), peer(2, clock)
    db.register(a, "t", "c")
    db.register(b, "t", "c")
    db.unregister(a.id, "t", "c")
    assert [p.id for p in db.find_producers("channel", "t", "c")] == [b.id]
    db.unregister(b.id, "t", "c")
    assert db.channels("t") == ["c"]  # not ephemeral: the empty key stays
    assert [p.id for p in db.find_producers("topic", "t", "")] == [a.id, b.id]


def test_unregister_ephemeral_channel_removes_the_key_when_empty(db, clock):
    a, b = peer(1, clock), peer(2, clock)
    db.register(a, "t", "c#ephemeral")
    db.register(b, "t", "c#ephemeral")
    db.unregister(a.id, "t", "c#ephemeral")
    assert db.channels("t") == ["c#ephemeral"]
    db.unregister(b.id, "t", "c#ephemeral")
    assert db.channels("t") == []


def test_unregister_topic_leaves_all_its_channels(db, clock):
    a = peer(1, clock)
    db.register(a, "t", "c1")
    db.register(a, "t", "c2#ephemeral")
    db.register(a, "other", "c1")
    db.unregister(a.id, "t")
    assert db.find_producers("channel", "t", "*") == []
    assert db.find_producers("topic", "t", "") == []
    assert sorted(db.channels("t")) == ["c1", "c2#ephemeral"]  # channel keys stay
    assert [p.id for p in db.find_producers("channel", "other", "c1")] == [a.id]


def test_unregister_ephemeral_topic_removes_the_topic_key(db, clock):
    a = peer(1, clock)
    db.register(a, "e#ephemeral")
    db.unregister(a.id, "e#ephemeral")
    assert db.topics() == []


def test_unregister_unknown_is_harmless(db, clock):
    db.unregister("127.0.0.1:1", "nope", "c#ephemeral")
    db.unregister("127.0.0.1:1", "nope#ephemeral")
    assert len(db) == 0


def test_inactive_producers_are_hidden_from_lookup_and_nodes(db, clock):
    a = identify(db, peer(1, clock))
    b = identify(db, peer(2, clock))
    db.register(a, "t")
    db.register(b, "t")
    clock.now += 200 * S
    b.last_update = clock.now  # b pinged
    clock.now += 100 * S  # a is now exactly 300 s old: still active
    active = db.active_topic_producers("t", 300 * S, 45 * S)
    assert sorted(p.id for p in active) == [a.id, b.id]
    clock.now += 1
    assert [p.id for p in db.active_topic_producers("t", 300 * S, 45 * S)] == [b.id]
    assert [info.id for info, _, _ in db.nodes(300 * S, 45 * S)] == [b.id]


def test_tombstone_hides_from_lookup_for_its_lifetime(db, clock):
    a = identify(db, peer(1, clock))
    b = identify(db, peer(2, clock, http_port=5151))
    for info in (a, b):
        db.register(info, "t")
        db.register(info, "u")
    db.tombstone_topic_producer("t", "10.0.0.1:4151")
    assert [p.id for p in db.active_topic_producers("t", 300 * S, 45 * S)] == [b.id]
    # tombstones are per topic
    assert sorted(p.id for p in db.active_topic_producers("u", 300 * S, 45 * S)) == [a.id, b.id]
    nodes = {
        info.id: dict(zip(topics, tombstones, strict=True))
        for info, topics, tombstones in db.nodes(300 * S, 45 * S)
    }
    assert nodes == {a.id: {"t": True, "u": False}, b.id: {"t": False, "u": False}}
    clock.now += 45 * S
    assert sorted(p.id for p in db.active_topic_producers("t", 300 * S, 45 * S)) == [a.id, b.id]
    producer = db.find_producers("topic", "t", "")[0]
    assert producer.tombstoned  # the flag stays; only its effect expires


def test_tombstone_unknown_node_or_topic_is_harmless(db, clock):
    a = peer(1, clock)
    db.register(a, "t")
    db.tombstone_topic_producer("t", "10.9.9.9:1")
    db.tombstone_topic_producer("nope", "10.0.0.1:4151")
    assert not any(p.tombstoned for _, ps in db.items() for p in ps)


def test_filter_by_active():
    info = PeerInfo("a", "a", "h", "b", 1, 2, "v", last_update=0)
    live, tombstoned = Producer(info), Producer(info)
    tombstoned.tombstone(5)
    assert filter_by_active([live, tombstoned], 10, 10, 10) == [live]
    assert filter_by_active([live, tombstoned], 10, 5, 10) == [live, tombstoned]
    assert filter_by_active([live], 9, 10, 10) == []


def test_http_create_and_delete(db, clock):
    db.create_topic("t")
    db.create_topic("t")
    db.create_channel("t2", "c")
    assert db.topics() == ["t", "t2"]
    assert db.channels("t2") == ["c"]
    assert db.delete_channel("t2", "c") is True
    assert db.delete_channel("t2", "c") is False
    db.create_channel("t", "c")
    db.delete_topic("t")
    assert db.topics() == ["t2"]
    assert db.channels("t") == []
    db.delete_topic("never")


def test_has_topic(db):
    assert not db.has_topic("t")
    assert not db.has_topic("*")
    db.create_topic("t")
    assert db.has_topic("t")
    assert db.has_topic("*")  # nsqlookupd matches the wildcard here too
