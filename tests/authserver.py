"""A small auth server for the AUTH tests, answering by secret as the fixture's stub did."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

GOOD = {
    "ttl": 3600,
    "identity": "fixture-user",
    "identity_url": "http://auth.invalid/fixture-user",
    "authorizations": [
        {"topic": "auth_ok.*", "channels": [".*"], "permissions": ["subscribe", "publish"]}
    ],
}

#: the answers of the stub used for the nsqd 1.3.0 captures (fixture README)
FIXTURE_ANSWERS: dict[str, tuple[int, dict]] = {
    "good": (200, GOOD),
    "sub-only": (
        200,
        {
            "ttl": 3600,
            "identity": "reader",
            "identity_url": "",
            "authorizations": [
                {"topic": "^auth_ok$", "channels": ["^allowed$"], "permissions": ["subscribe"]}
            ],
        },
    ),
    "none": (200, {"ttl": 3600, "identity": "nobody", "identity_url": "", "authorizations": []}),
    "denied": (403, {"message": "denied"}),
    "bad-permission": (
        200,
        {
            "ttl": 3600,
            "identity": "x",
            "identity_url": "",
            "authorizations": [{"topic": ".*", "channels": [".*"], "permissions": ["admin"]}],
        },
    ),
}


class AuthServer:
    """Serves ``GET /auth`` on 127.0.0.1 from ``answers`` (secret -> (status, JSON body))."""

    def __init__(self, answers: dict[str, tuple[int, dict]] | None = None) -> None:
        self.answers = dict(FIXTURE_ANSWERS if answers is None else answers)
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                parts = urlsplit(self.path)
                query = parse_qs(parts.query, keep_blank_values=True)
                server.requests.append(
                    {
                        "method": "GET",
                        "path": parts.path,
                        "query": parts.query,
                        "params": {k: v[0] for k, v in query.items()},
                        "accept": self.headers.get("Accept"),
                    }
                )
                secret = query.get("secret", [""])[0]
                status, body = server.answers.get(secret, (403, {"message": "unknown"}))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> AuthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
