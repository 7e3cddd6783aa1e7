"""nsqd/policy.py without sockets: dead-letter names, validation, the side file."""

from __future__ import annotations

import json

import pytest

from gnsq_server import config
from gnsq_server.nsqd import stats
from gnsq_server.nsqd.nsqd import NSQD
from gnsq_server.nsqd.policy import (
    POLICY_FILE,
    DepthExceeded,
    PolicyError,
    Settings,
    dead_letter_name,
)
from gnsq_server.wire import is_valid_name


@pytest.fixture
def nsqd(tmp_path):
    core = NSQD(config.default_options("nsqd", data_path=str(tmp_path)))
    core.open()
    yield core
    core.stop()


def test_dead_letter_names_are_valid_and_name_the_source():
    assert dead_letter_name("orders", "billing") == "orders.billing.dlq"
    assert dead_letter_name("t#ephemeral", "c#ephemeral") == "t.c.dlq"
    long_a = dead_letter_name("t" * 64, "a" * 64)
    long_b = dead_letter_name("t" * 64, "b" * 64)
    for name in (long_a, long_b):
        assert len(name) == 64 and is_valid_name(name) and name.endswith(".dlq")
    assert long_a != long_b  # the hash keeps sources that share a prefix apart
    assert dead_letter_name("t" * 64, "a" * 64) == long_a


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_attempts": -1}, "max_attempts"),
        ({"max_attempts": 65536}, "max_attempts"),
        ({"max_depth": 1.5}, "max_depth"),
        ({"msg_ttl": -1.0}, "msg_ttl"),
        ({"overflow": "spill"}, "overflow"),
        ({"dead_letter_topic": "a b"}, "dead_letter_topic"),
        ({"dead_letter_topic": "x#ephemeral"}, "dead_letter_topic"),
        ({"dead_letter_topic": "src"}, "dead_letter_topic"),
    ],
)
def test_bad_settings_name_their_field(fields, field):
    with pytest.raises(PolicyError) as caught:
        Settings(**fields).checked("src")
    assert caught.value.field == field


def test_no_policy_means_none_and_no_stats_key(nsqd):
    channel = nsqd.get_topic("t").get_channel("c")
    assert channel.policy is None
    assert "policy" not in stats.channel_stats(channel)


def test_policies_persist_beside_an_unchanged_nsqd_dat(nsqd, tmp_path):
    channel = nsqd.get_topic("t").get_channel("c")
    nsqd.policies.update(channel, {"max_attempts": 3, "overflow": "drop_oldest"})
    assert channel.policy is not None
    assert nsqd.policies.update(channel, {"max_depth": 7}).max_attempts == 3  # fields merge
    nsqd.persist_metadata()
    dat = json.loads((tmp_path / "nsqd.dat").read_text())
    assert dat["topics"] == [{"name": "t", "paused": False,
                              "channels": [{"name": "c", "paused": False}]}]
    saved = json.loads((tmp_path / POLICY_FILE).read_text())
    assert saved["channels"] == [{"topic": "t", "channel": "c", "max_attempts": 3,
                                  "overflow": "drop_oldest", "max_depth": 7}]
    nsqd.policies.reset(channel)
    assert channel.policy is None
    nsqd.persist_metadata()
    assert not (tmp_path / POLICY_FILE).exists()


def test_unreadable_policy_file_is_kept_aside(tmp_path):
    (tmp_path / POLICY_FILE).write_text("{not json")
    core = NSQD(config.default_options("nsqd", data_path=str(tmp_path)))
    core.open()
    core.stop()
    assert (tmp_path / (POLICY_FILE + ".bad")).read_text() == "{not json"


def test_text_stats_line():
    line = stats._policy_line({
        "max_attempts": 5, "msg_ttl": 60_000, "max_depth": 0, "overflow": "reject",
        "dead_letter_topic": "t.c.dlq", "rejected": 0, "dead_letter_pending": 0,
        "dead_lettered": {"max_attempts": 2, "msg_ttl": 1, "max_depth": 0},
        "dropped": {"msg_ttl": 4, "max_depth": 0},
    })
    assert line.startswith("policy: max-attempts: 5 msg-ttl: 1m0s max-depth: 0 (reject)")
    assert "dead-lettered: 3 (attempts 2, ttl 1, depth 0) dropped: ttl 4, depth 0" in line


def test_reject_counts_what_waits_in_a_paused_topic(nsqd):
    topic = nsqd.get_topic("held")
    channel = topic.get_channel("c")
    nsqd.policies.update(channel, {"max_depth": 100})
    topic.pause()
    topic.publish([b"m"] * 60)
    with pytest.raises(DepthExceeded):
        topic.publish([b"m"] * 50)
    assert (topic.depth(), channel.depth(), channel.policy.rejected) == (60, 0, 50)
    topic.publish([b"m"] * 40)  # exactly up to the limit is fine
