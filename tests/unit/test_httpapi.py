"""The shared HTTP conventions, checked against nsqd 1.3.0's captured headers and bodies."""

from __future__ import annotations

import pytest
from flask import Flask

from gnsq_server.httpapi import (
    HTTPError,
    create_flask_app,
    first,
    go_json,
    parse_query,
    query_params,
    read_body,
    route,
)

JSON = "application/json; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
NSQ = "nsq; version=1.0"


@pytest.fixture()
def app() -> Flask:
    app = create_flask_app(__name__)

    @route(app, "/ping", ["GET"], v1=False)
    def ping():
        if first(query_params(), "sick"):
            raise HTTPError(500, "NOK - sick")
        return "OK"

    @route(app, "/text", ["GET"])
    def text():
        return "OK"

    @route(app, "/empty", ["POST"])
    def empty():
        return None

    @route(app, "/json", ["GET"])
    def json_view():
        return {"b": 1, "a": [1.5, None, True], "s": "<&>"}

    @route(app, "/fail", ["POST"])
    def fail():
        raise HTTPError(400, "MISSING_ARG_TOPIC")

    @route(app, "/extra", ["GET"])
    def extra():
        raise HTTPError(403, "TLS_REQUIRED", https_port=4152)

    @route(app, "/boom", ["GET"])
    def boom():
        raise RuntimeError("boom")

    @route(app, "/config/<opt>", ["GET", "PUT"])
    def config(opt):
        return [opt]

    @route(app, "/body", ["POST"])
    def body():
        return read_body(4)

    return app


@pytest.fixture()
def client(app):
    return app.test_client()


def test_plain_text_has_no_nsq_header(client):
    resp = client.get("/ping")
    assert (resp.status_code, resp.data) == (200, b"OK")
    assert resp.headers["Content-Type"] == TEXT
    assert "X-NSQ-Content-Type" not in resp.headers


def test_plain_text_error_is_text(client):
    resp = client.get("/ping?sick=1")
    assert (resp.status_code, resp.data) == (500, b"NOK - sick")
    assert resp.headers["Content-Type"] == TEXT


def test_v1_string(client):
    resp = client.get("/text")
    assert resp.data == b"OK"
    assert resp.headers["Content-Type"] == TEXT
    assert resp.headers["X-NSQ-Content-Type"] == NSQ


def test_v1_none_has_no_content_type(client):
    resp = client.post("/empty")
    assert (resp.status_code, resp.data) == (200, b"")
    assert "Content-Type" not in resp.headers
    assert resp.headers["X-NSQ-Content-Type"] == NSQ
    assert resp.headers["Content-Length"] == "0"


def test_v1_json_in_key_order_with_go_escapes(client):
    resp = client.get("/json")
    assert resp.data == b'{"b":1,"a":[1.5,null,true],"s":"\\u003c\\u0026\\u003e"}'
    assert resp.headers["Content-Type"] == JSON
    assert resp.headers["X-NSQ-Content-Type"] == NSQ


def test_error_message(client):
    resp = client.post("/fail")
    assert (resp.status_code, resp.data) == (400, b'{"message":"MISSING_ARG_TOPIC"}')
    assert resp.headers["Content-Type"] == JSON
    assert resp.headers["X-NSQ-Content-Type"] == NSQ


def test_error_with_extra_fields_is_written_like_nsqd(client):
    resp = client.get("/extra")
    assert resp.status_code == 403
    assert resp.data == b'{"message": "TLS_REQUIRED", "https_port": 4152}'


def test_not_found(client):
    resp = client.get("/nope")
    assert (resp.status_code, resp.data) == (404, b'{"message":"NOT_FOUND"}')
    assert resp.headers["X-NSQ-Content-Type"] == NSQ


def test_options_on_unknown_path_is_404(client):
    assert client.options("/nope").status_code == 404


def test_method_not_allowed_has_allow(client):
    resp = client.post("/ping")
    assert (resp.status_code, resp.data) == (405, b'{"message":"METHOD_NOT_ALLOWED"}')
    assert resp.headers["Allow"] == "GET, OPTIONS"
    assert resp.headers["Content-Type"] == JSON
    assert resp.headers["X-NSQ-Content-Type"] == NSQ


def test_method_not_allowed_lists_every_method_sorted(client):
    resp = client.post("/config/x")
    assert resp.status_code == 405
    assert resp.headers["Allow"] == "GET, OPTIONS, PUT"


def test_head_is_405_without_body(client):
    resp = client.head("/ping")
    assert resp.status_code == 405
    assert resp.data == b""
    assert resp.headers["Allow"] == "GET, OPTIONS"
    assert resp.headers["Content-Length"] == "32"


def test_options(client):
    resp = client.options("/ping")
    assert (resp.status_code, resp.data) == (200, b"")
    assert resp.headers["Allow"] == "GET, OPTIONS"
    assert "Content-Type" not in resp.headers
    assert "X-NSQ-Content-Type" not in resp.headers


def test_unexpected_exception_is_500(client, caplog):
    resp = client.get("/boom")
    assert (resp.status_code, resp.data) == (500, b'{"message":"INTERNAL_ERROR"}')
    assert "panic in HTTP handler" in caplog.text


def test_trailing_slash_redirect_get(client):
    resp = client.get("/ping/")
    assert resp.status_code == 301
    assert resp.headers["Location"] == "/ping"
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert resp.data == b'<a href="/ping">Moved Permanently</a>.\n\n'
    assert "X-NSQ-Content-Type" not in resp.headers


def test_trailing_slash_redirect_post_keeps_query(client):
    resp = client.post("/empty/?topic=a", data=b"x")
    assert resp.status_code == 307
    assert resp.headers["Location"] == "/empty?topic=a"
    assert resp.data == b""
    assert "Content-Type" not in resp.headers


def test_no_redirect_for_a_method_the_other_path_lacks(client):
    assert client.post("/ping/").status_code == 404


def test_param_route_requires_a_value(client):
    assert client.get("/config/").status_code == 404
    assert client.get("/config/abc").data == b'["abc"]'


def test_read_body_is_bounded(client):
    assert client.post("/body", data=b"0123456789").data == b"0123"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", {}),
        ("topic=a&topic=b", {"topic": ["a", "b"]}),
        ("topic=", {"topic": [""]}),
        ("topic", {"topic": [""]}),
        ("a=x+y%21", {"a": ["x y!"]}),
        ("&&a=1&", {"a": ["1"]}),
    ],
)
def test_parse_query(raw, expected):
    assert parse_query(raw) == expected


@pytest.mark.parametrize("raw", ["topic=%zz", "a=%4", "a;b=1", "%"])
def test_parse_query_errors(raw):
    with pytest.raises(ValueError):
        parse_query(raw)


def test_query_params_invalid_is_400(app):
    @route(app, "/q", ["GET"])
    def q():
        return first(query_params(), "topic")

    resp = app.test_client().get("/q?topic=%zz")
    assert (resp.status_code, resp.data) == (400, b'{"message":"INVALID_REQUEST"}')


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.99, "0.99"),
        (5.0, "5"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1.5e-7, "1.5e-7"),
        (0.000001, "0.000001"),
        (-2.5, "-2.5"),
        (123456789.125, "123456789.125"),
        ("a\x01\x08\x0c\u2028\udcff", '"a\\u0001\\u0008\\u000c\\u2028\ufffd"'),
        ({"k": []}, '{"k":[]}'),
    ],
)
def test_go_json(value, expected):
    assert go_json(value) == expected


def test_v1_ok_is_rendered_as_any_other_text():
    from gnsq_server.httpapi import v1_parts

    assert v1_parts("OK") == v1_parts(b"OK") == ("200 OK", [
        ("X-NSQ-Content-Type", "nsq; version=1.0"), ("Content-Type", "text/plain; charset=utf-8")
    ], b"OK")
    assert v1_parts("OK", 201)[0] == "201 Created"
    assert v1_parts("ok")[2] == b"ok"
