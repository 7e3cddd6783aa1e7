#!/usr/bin/env python3
"""CPU time per keep-alive ``POST /pub`` in gnsqd's own code, without the kernel.

An in-process gnsqd serves one connection whose socket hands over the same request again and
again and swallows the answers: the request goes through the real HTTP connection, parser,
fast lane, topic, channel and disk queue, and no system call or other process takes a share.
Python work is what limits keep-alive /pub (see issue #14), and this figure moves with it
while side-by-side ratios against nsqd carry the machine's noise. Compare two trees with it,
not two machines.

Example::

  .venv/bin/python scripts/http_cost.py --rounds 7 --requests 20000
"""

from __future__ import annotations

import argparse
import tempfile
import time

from gnsq_server import config
from gnsq_server.httpserver import Connection
from gnsq_server.nsqd.server import NSQDServer

REQUEST = (
    b"POST /pub?topic=cost HTTP/1.1\r\nHost: 127.0.0.1:4151\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 200\r\n\r\n" + b"x" * 200
)


class ReplayedSocket:
    """Hands over ``REQUEST`` ``count`` times, then EOF; every send is taken whole."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.answers = 0

    def recv(self, size: int) -> bytes:
        if self.count <= 0:
            return b""
        self.count -= 1
        return REQUEST

    recv_when_readable = recv

    def send(self, data: bytes) -> int:
        self.answers += data.count(b"HTTP/1.1 200 OK")
        return len(data)

    def setsockopt(self, *args: object) -> None:
        pass

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        pass


def cost_per_request(rounds: int, requests: int, mem_queue_size: int) -> float:
    """The best of ``rounds`` rounds, in microseconds of process CPU time per request."""
    with tempfile.TemporaryDirectory() as data_path:
        opts = config.default_options(
            "nsqd", tcp_address="127.0.0.1:0", http_address="127.0.0.1:0",
            broadcast_address="127.0.0.1", data_path=data_path, mem_queue_size=mem_queue_size)
        daemon = NSQDServer(opts)
        daemon.start()
        try:
            daemon.nsqd.get_topic("cost").get_channel("c")  # messages are kept, as in a bench
            http = daemon._http_server
            best = float("inf")
            for _ in range(rounds):
                sock = ReplayedSocket(requests)
                started = time.process_time()
                Connection(http, sock, ("127.0.0.1", 1)).serve()
                best = min(best, (time.process_time() - started) / requests * 1e6)
                if sock.answers != requests:
                    raise RuntimeError(f"{sock.answers} of {requests} requests answered 200 OK")
            return best
        finally:
            daemon.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=20000, help="per round")
    parser.add_argument("--mem-queue-size", type=int, default=10000,
                        help="gnsqd's default: the rest spills to the disk queue, as in a bench")
    args = parser.parse_args(argv)
    cost = cost_per_request(args.rounds, args.requests, args.mem_queue_size)
    print(f"{cost:.2f} us of CPU per keep-alive POST /pub "
          f"(best of {args.rounds} x {args.requests}, mem-queue-size {args.mem_queue_size})")


if __name__ == "__main__":
    main()
