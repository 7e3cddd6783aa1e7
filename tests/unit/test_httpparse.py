"""Request framing without sockets: bytes in, events out.

The cases live in tests/fixtures/http-requests/{valid,invalid}/*.http (as gunicorn keeps its
request cases): the first line holds what is expected, the rest is the request written with
Python escapes (``\\r\\n``, ``\\x00``) so that the files survive editors and git.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from gnsq_server.httpparse import END, RequestError, RequestHead, RequestParser

CASES = Path(__file__).resolve().parent.parent / "fixtures" / "http-requests"


def load(path: Path) -> tuple[list[str], bytes]:
    expect, _, raw = path.read_text().partition("\n")
    data = codecs.escape_decode(raw.strip("\n").encode("latin-1"))[0]
    return expect.lstrip("# ").split(" "), data


def events(data: bytes, step: int | None = None) -> list:
    parser = RequestParser()
    step = step or len(data)
    for start in range(0, len(data), step):
        parser.feed(data[start : start + step])
    out = []
    while (event := parser.next_event()) is not None:
        out.append(event)
    return out


def body_of(found: list) -> bytes:
    return b"".join(e for e in found if isinstance(e, bytes))


VALID = sorted((CASES / "valid").glob("*.http"))
INVALID = sorted((CASES / "invalid").glob("*.http"))


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
@pytest.mark.parametrize("step", [None, 1, 7])
def test_valid_requests(path, step):
    expect, data = load(path)
    method, target, version, connection, length, body, *flags = expect
    found = events(data, step)
    head = found[0]
    assert isinstance(head, RequestHead)
    assert (head.method, head.target.decode(), head.version) == (method, target, version)
    assert head.keep_alive is (connection == "keep-alive")
    assert str(head.content_length) == length.split("=")[1]
    assert head.expect_continue is ("expect" in flags)
    assert body_of(found) == body.split("=", 1)[1].encode()
    assert found[-1] is END and found.count(END) == 1


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
@pytest.mark.parametrize("step", [None, 1])
def test_invalid_requests(path, step):
    expect, data = load(path)
    found = events(data, step)
    error = found[-1]
    assert isinstance(error, RequestError), found
    assert error.status == int(expect[0])
    in_body = expect[1:] == ["body"]
    assert isinstance(found[0], RequestHead) is in_body
    assert END not in found
    response = error.response()
    assert response.startswith(f"HTTP/1.1 {error.status} {error.reason}\r\n".encode())
    assert b"\r\nConnection: close\r\n\r\n" in response


def test_go_400_is_byte_for_byte():
    _, data = load(CASES / "invalid" / "two_content_lengths.http")
    response = events(data)[-1].response()
    assert response.startswith(
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Connection: close\r\n\r\n400 Bad Request"
    )


def test_pipelined_requests_come_out_in_order():
    one = b"POST /pub HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    two = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
    found = events(one + two + one)
    kinds = [type(e).__name__ if e is not END else "END" for e in found]
    assert kinds == ["RequestHead", "bytes", "END", "RequestHead", "END", "RequestHead",
                     "bytes", "END"]
    assert [e.target for e in found if isinstance(e, RequestHead)] == [b"/pub", b"/ping", b"/pub"]


def test_chunked_trailers_do_not_leak_into_the_next_request():
    found = events(
        b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: t\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    heads = [e for e in found if isinstance(e, RequestHead)]
    assert [h.headers for h in heads] == [[(b"Transfer-Encoding", b"chunked")], [(b"Host", b"x")]]


def test_an_error_ends_the_stream_after_what_parsed_before_it():
    good = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    parser = RequestParser()
    parser.feed(good + b"GET /b HTTP/1.1\r\nHost x\r\n\r\n" + good)
    found = list(parser.events)
    assert isinstance(found[0], RequestHead) and found[1] is END
    assert isinstance(found[2], RequestError) and len(found) == 3
    assert parser.finished
    parser.feed(good)  # nothing more is parsed
    assert len(parser.events) == 3


@pytest.mark.parametrize(
    "data",
    [
        b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 3000,
        b"GET /ping?" + b"a" * 3000,
        b"GET /ping HTTP/1.1\r\n" + b"X-H: v\r\n" * 400,
    ],
    ids=["long_header", "long_target", "many_headers"],
)
def test_head_size_is_bounded(data):
    parser = RequestParser(max_head_bytes=2048)
    for start in range(0, len(data), 512):
        parser.feed(data[start : start + 512])
    error = parser.next_event()
    assert isinstance(error, RequestError) and error.status == 431
    assert parser.finished


def test_body_bytes_do_not_count_against_the_head_bound():
    head = b"POST /pub HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n"
    parser = RequestParser(max_head_bytes=2048)
    parser.feed(head)
    for _ in range(10):
        parser.feed(b"b" * 1000)
    found = list(parser.events)
    assert isinstance(found[0], RequestHead) and found[-1] is END
    assert body_of(found) == b"b" * 10000


def test_upgrade_serves_the_request_then_stops_parsing():
    parser = RequestParser()
    parser.feed(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"GET /next HTTP/1.1\r\n\r\n"
    )
    found = list(parser.events)
    assert isinstance(found[0], RequestHead) and found[-1] is END and len(found) == 2
    assert parser.finished


def test_idle_until_a_request_begins():
    parser = RequestParser()
    assert parser.idle
    parser.feed(b"GET /ping HTTP/1.1\r\n")
    assert not parser.idle
    parser.feed(b"Host: x\r\n\r\n")
    assert parser.idle  # between requests again


@pytest.mark.parametrize("method", ["GET", "POST", "PROPFIND", "M-SEARCH"])
def test_method_and_a_target_fed_in_pieces(method):
    parser = RequestParser()
    data = f"{method} /a/long/target?x=1&y=2 HTTP/1.1\r\nHost: h\r\n\r\n".encode()
    for index in range(len(data)):  # one byte at a time: llhttp hands the target in pieces
        parser.feed(data[index:index + 1])
    head = parser.next_event()
    assert (head.method, head.target) == (method, b"/a/long/target?x=1&y=2")
    assert parser.next_event() is END
