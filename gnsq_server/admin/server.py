"""Wiring and lifecycle of gnsqadmin: the HTTP listener and the rate sampler."""

from __future__ import annotations

import logging
import time

import gevent
import gevent.event

from gnsq_server.admin.app import create_app
from gnsq_server.admin.client import HTTPFetcher
from gnsq_server.admin.cluster import ClusterInfo, UpstreamError
from gnsq_server.admin.rates import RateHistory
from gnsq_server.config import Options
from gnsq_server.httpapi import make_server
from gnsq_server.httpserver import HTTPServer
from gnsq_server.serving import format_address, listen, run_until_signalled

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 1.0


class AdminServer:
    """A gnsqadmin: ``start()`` binds and serves, and samples rates every refresh interval."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        fetch = HTTPFetcher(opts.http_client_connect_timeout, opts.http_client_request_timeout)
        self.cluster = ClusterInfo(
            fetch, opts.nsqlookupd_http_addresses, opts.nsqd_http_addresses
        )
        self.history = RateHistory(min_interval=opts.refresh_interval / 2)
        self.app = create_app(self.cluster, self.history, opts.refresh_interval)
        self.http_port: int | None = None
        self._http_server: HTTPServer | None = None
        self._sampler: gevent.Greenlet | None = None

    def start(self) -> None:
        """Bind the HTTP listener (ListenError when it cannot) and start serving and sampling."""
        listener = listen(self.opts.http_address)
        name = listener.getsockname()
        self.http_port = name[1]
        self._http_server = make_server(self.app, listener)
        self._http_server.start()
        logger.info("HTTP: listening on %s", format_address(name))
        self._sampler = gevent.spawn(self._sample_forever)

    def sample(self) -> None:
        """Record one snapshot of the cluster in the rate history."""
        errors: list[str] = []
        try:
            data = self.cluster.overview(errors)
        except UpstreamError as exc:
            logger.debug("rate sample failed - %s", exc)
            return
        self.history.record(time.time(), data["topics"])

    def _sample_forever(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # keep sampling; the page shows upstream errors itself
                logger.exception("rate sample failed")
            gevent.sleep(self.opts.refresh_interval)

    def stop(self) -> None:
        """Stop sampling and close the listener, letting requests finish for a moment."""
        if self._sampler is not None:
            self._sampler.kill()
            self._sampler = None
        if self._http_server is not None:
            self._http_server.stop(timeout=STOP_TIMEOUT)
            self._http_server = None


def run(opts: Options) -> int:
    """Run until SIGTERM or SIGINT; 0 after a clean stop, 1 when the listener cannot be bound."""
    return run_until_signalled(AdminServer(opts))
