"""Wiring and lifecycle of gnsqadmin: the HTTP listener (under ``--base-path``), the rate
sampler and the notification sender."""

from __future__ import annotations

import logging
import ssl
import sys
import time

import gevent
import gevent.event
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from gnsq_server.admin.app import create_app
from gnsq_server.admin.client import HTTPFetcher, tls_context
from gnsq_server.admin.cluster import ClusterInfo, UpstreamError
from gnsq_server.admin.notify import Notifier
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
        tls = tls_context(
            opts.http_client_tls_insecure_skip_verify, opts.http_client_tls_root_ca_file,
            opts.http_client_tls_cert, opts.http_client_tls_key,
        )
        fetch = HTTPFetcher(
            opts.http_client_connect_timeout, opts.http_client_request_timeout, tls
        )
        self.cluster = ClusterInfo(
            fetch, opts.nsqlookupd_http_addresses, opts.nsqd_http_addresses
        )
        self.history = RateHistory(min_interval=opts.refresh_interval / 2)
        self.notifier = Notifier(
            opts.notification_http_endpoint, lambda url, body: fetch("POST", url, body)
        )
        self.app = create_app(
            self.cluster, self.history, opts.refresh_interval, opts=opts, notifier=self.notifier
        )
        base = base_path(opts.base_path)
        if base:
            self.app.wsgi_app = DispatcherMiddleware(NotFound(), {base: self.app.wsgi_app})
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
        self.notifier.stop()
        if self._sampler is not None:
            self._sampler.kill()
            self._sampler = None
        if self._http_server is not None:
            self._http_server.stop(timeout=STOP_TIMEOUT)
            self._http_server = None


def base_path(text: str) -> str:
    """``--base-path`` as a WSGI mount point: ``/admin/`` -> ``/admin``, ``/`` -> ``""``."""
    return "/" + "/".join(part for part in text.split("/") if part) if text.strip("/") else ""


def option_problem(opts: Options) -> str:
    """What nsqadmin refuses at startup beyond the option table's checks, else ``""``."""
    if bool(opts.http_client_tls_cert) != bool(opts.http_client_tls_key):
        return "--http-client-tls-cert and --http-client-tls-key must be given together"
    if opts.graphite_url or opts.proxy_graphite:
        logger.warning("graphite is not supported: --graphite-url and --proxy-graphite are "
                       "ignored; the charts are built in")
    return ""


def run(opts: Options) -> int:
    """Run until SIGTERM or SIGINT; 0 after a clean stop, 1 when the listener cannot be bound,
    2 for options nsqadmin refuses (or TLS files that cannot be loaded)."""
    try:
        problem = option_problem(opts)
        server = None if problem else AdminServer(opts)
    except (OSError, ssl.SSLError, ValueError) as exc:
        problem = f"cannot set up the HTTP client - {exc}"
    if problem:
        print(f"gnsqadmin: {problem}", file=sys.stderr)
        return 2
    return run_until_signalled(server)
