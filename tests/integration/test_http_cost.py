"""scripts/http_cost.py: the in-process cost figure for keep-alive /pub runs on real parts."""

from __future__ import annotations

from ..scriptload import load_script

http_cost = load_script("http_cost")


def test_every_replayed_request_is_published_and_answered(capsys):
    http_cost.main(["--rounds", "2", "--requests", "300", "--mem-queue-size", "100"])
    line = capsys.readouterr().out
    assert "us of CPU per keep-alive POST /pub" in line
    assert float(line.split()[0]) > 0


def test_the_replayed_socket_sees_each_answer_once():
    sock = http_cost.ReplayedSocket(2)
    assert sock.recv(65536) == http_cost.REQUEST
    assert sock.recv_when_readable(65536) == http_cost.REQUEST
    assert sock.recv(65536) == b""
    assert sock.send(b"HTTP/1.1 200 OK\r\n\r\nOKHTTP/1.1 200 OK\r\n\r\nOK") == 42
    assert sock.answers == 2
