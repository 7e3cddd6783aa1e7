"""gnsqadmin shows a channel's delivery policy (per gnsqd node) on the channel page and in
its JSON API, in a real headless Chromium against a real gnsqlookupd + 2 gnsqd."""

from __future__ import annotations

import requests

from .test_admin_ui import browser, cluster, text_of, wait_for  # noqa: F401 (fixtures)


def test_channel_page_shows_the_policy(cluster, browser):  # noqa: F811
    cluster.publish(0, "orders", 1)
    cluster.create_channel("orders", "billing")
    reply = requests.post(f"{cluster.nsqd_url(0)}/channel/policy", timeout=5, params={
        "topic": "orders", "channel": "billing", "max_attempts": 5, "msg_ttl": "1m"})
    assert reply.status_code == 200, reply.text

    api = requests.get(f"{cluster.url}/api/topics/orders/billing", timeout=5).json()
    (policy,) = api["policies"]
    assert (policy["node"], policy["max_attempts"]) == (
        f"127.0.0.1:{cluster.nsqds[0].http_port}", 5)

    browser.get(cluster.url + "/topics/orders/billing")
    wait_for(lambda: text_of(browser, "p.policy"), what="the policy line")
    line = text_of(browser, "p.policy")
    assert "max attempts 5" in line and "TTL 1m0s" in line and "orders.billing.dlq" in line
