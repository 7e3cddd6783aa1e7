"""Auth server answers, authorization matching and the query nsqd sends (no sockets)."""

from __future__ import annotations

import json

import pytest

from gnsq_server.nsqd.auth import (
    AuthError,
    auth_endpoint,
    auth_query,
    parse_auth_response,
    remote_ip,
)

GOOD = {
    "ttl": 3600,
    "identity": "fixture-user",
    "identity_url": "http://auth.invalid/fixture-user",
    "authorizations": [
        {"topic": "auth_ok.*", "channels": [".*"], "permissions": ["subscribe", "publish"]}
    ],
}
SUB_ONLY = {
    "ttl": 60,
    "identity": "reader",
    "authorizations": [
        {"topic": "^auth_ok$", "channels": ["^allowed$"], "permissions": ["subscribe"]}
    ],
}


def parse(data) -> object:
    return parse_auth_response(json.dumps(data).encode())


def test_reply_frame_is_nsqds_bytes():
    expected = bytes.fromhex(
        "00000066000000007b226964656e74697479223a22666978747572652d75736572222c226964656e7469"
        "74795f75726c223a22687474703a2f2f617574682e696e76616c69642f666978747572652d7573657222"
        "2c227065726d697373696f6e5f636f756e74223a317d"
    )
    assert parse(GOOD).response() == expected


def test_reply_escapes_as_go_does():
    state = parse({**GOOD, "identity": "<a&b>"})
    assert b'"identity":"\\u003ca\\u0026b\\u003e"' in state.response()


@pytest.mark.parametrize(
    "topic, channel, allowed",
    [
        ("auth_ok", "", True),  # publish: channel ""
        ("auth_ok_more", "anything", True),
        ("xauth_ok", "c", True),  # Go's regexp match is unanchored
        ("other", "", False),
    ],
)
def test_good_permissions(topic, channel, allowed):
    assert parse(GOOD).is_allowed(topic, channel) is allowed


@pytest.mark.parametrize(
    "topic, channel, allowed",
    [
        ("auth_ok", "allowed", True),
        ("auth_ok", "nope", False),
        ("auth_ok", "", False),  # no publish permission
        ("auth_ok2", "allowed", False),
    ],
)
def test_sub_only_permissions(topic, channel, allowed):
    assert parse(SUB_ONLY).is_allowed(topic, channel) is allowed


def test_publish_needs_a_channel_pattern_matching_the_empty_string():
    state = parse({"ttl": 1, "authorizations": [
        {"topic": ".*", "channels": ["^c$"], "permissions": ["publish"]}
    ]})
    assert not state.is_allowed("t", "")


def test_ttl_and_case_insensitive_keys():
    state = parse({"TTL": 5, "Identity": "x", "authorizations": None})
    assert state.ttl == 5 and state.identity == "x" and state.authorizations == []
    assert not state.is_expired()


@pytest.mark.parametrize(
    "data, problem",
    [
        ({**GOOD, "ttl": 0}, "invalid TTL"),
        ({**GOOD, "ttl": -5}, "invalid TTL"),
        ({"identity": "x"}, "invalid TTL"),
        ({**GOOD, "ttl": "60"}, "bad ttl"),
        ({**GOOD, "authorizations": [{"topic": "t", "channels": [], "permissions": ["admin"]}]},
         "unknown permission admin"),
        ({**GOOD, "authorizations": [{"topic": "(", "channels": [], "permissions": []}]},
         "unable to compile topic"),
        ({**GOOD, "authorizations": [{"topic": "t", "channels": ["["], "permissions": []}]},
         "unable to compile channel"),
        ([1, 2], "bad auth response"),
    ],
)
def test_invalid_answers(data, problem):
    with pytest.raises(AuthError, match=problem):
        parse(data)


def test_not_json():
    with pytest.raises(AuthError):
        parse_auth_response(b"<html>")


def test_query_is_sorted_and_escaped_like_go():
    assert auth_query("127.0.0.1", False, b"good", "") == (
        "common_name=&remote_ip=127.0.0.1&secret=good&tls=false"
    )
    assert auth_query("::1", True, b"a b&c\xff", "CN x") == (
        "common_name=CN+x&remote_ip=%3A%3A1&secret=a+b%26c%FF&tls=true"
    )


def test_endpoint_and_remote_ip():
    assert auth_endpoint("127.0.0.1:4181") == "http://127.0.0.1:4181/auth"
    assert auth_endpoint("https://auth.example:8443/check") == "https://auth.example:8443/check"
    assert remote_ip("127.0.0.1:5555") == "127.0.0.1"
    assert remote_ip("[::1]:5555") == "::1"
