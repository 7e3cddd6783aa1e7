"""gnsqadmin's UI in a real headless Chromium (Debian's chromium + chromedriver, via selenium),
against a real gnsqlookupd + 2 gnsqd: every page and every action is clicked through, and its
effect checked in the daemons' own /stats and in lookupd.

One cluster and one browser serve the whole module (each test uses its own topics). With
GNSQADMIN_SCREENSHOTS=<dir> each page is also saved there as a PNG (how docs/ is made).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import requests

from ..authserver import AuthServer
from ..conftest import RawConnection
from ..ops import wait_for
from ..servers import ServerProcess
from ..tlscerts import make_certs
from .test_admin_api import AdminCluster

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
SHOTS = os.environ.get("GNSQADMIN_SCREENSHOTS", "")


def _find_binaries() -> tuple[str | None, str | None]:
    browser = next((path for name in CHROMIUM if (path := shutil.which(name))), None)
    return browser, shutil.which("chromedriver")


def chromium_binaries() -> tuple[str, str]:
    """Chromium and chromedriver; installed from Debian when missing and we can (root, apt)."""
    browser, driver = _find_binaries()
    if (not browser or not driver) and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
                       env=env, check=False)
        browser, driver = _find_binaries()
    if not browser or not driver:
        pytest.skip("chromium and chromedriver are not installed (scripts/test.sh installs them)")
    return browser, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary, driver_path = chromium_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,900",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = AdminCluster(
        tmp_path_factory.mktemp("cluster"),
        nsqd_args=("--e2e-processing-latency-percentile=0.5,0.99",),
    ).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def consumers():
    opened: list[RawConnection] = []
    yield opened
    for conn in opened:
        conn.close()


# --- helpers ---------------------------------------------------------------------------------


def text_of(driver, selector: str) -> str | None:
    """The element's text, or None while it is missing or being re-rendered."""
    try:
        return driver.find_element(By.CSS_SELECTOR, selector).text
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def shows(driver, selector: str, expected: str, exact: bool = False) -> None:
    """Wait until the element's text contains (or is) ``expected``: the page re-renders
    sections as they change, so a single read may find a replaced element."""
    def check() -> bool:
        text = text_of(driver, selector)
        return text is not None and (text == expected if exact else expected in text)

    wait_for(check, what=f"{expected!r} in {selector}")


def click(driver, selector: str) -> None:
    def attempt() -> bool:
        try:
            driver.find_element(By.CSS_SELECTOR, selector).click()
            return True
        except (NoSuchElementException, StaleElementReferenceException):
            return False

    wait_for(attempt, what=f"click {selector}")


def confirm(driver, expected_text: str) -> None:
    """Answer the confirmation dialog with OK after checking what it asks."""
    wait_for(lambda: driver.find_element(By.ID, "confirm").is_displayed(), what="the dialog")
    assert expected_text in driver.find_element(By.ID, "confirm-text").text
    driver.find_element(By.ID, "confirm-ok").click()


def act(driver, selector: str, expected_text: str) -> None:
    click(driver, selector)
    confirm(driver, expected_text)


def open_page(driver, cluster: AdminCluster, path: str, ready: str) -> None:
    driver.get(cluster.url + path)
    wait_for(lambda: text_of(driver, ready) is not None, what=f"{ready} on {path}")


def shoot(driver, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.execute_script("window.scrollTo(0, 0)")
        assert driver.save_screenshot(str(Path(SHOTS) / f"{name}.png"))


def consume(cluster: AdminCluster, consumers: list, topic: str, channel: str, finish: int,
            client_id: str = "worker-1", sample_rate: int = 0) -> RawConnection:
    """A consumer on nsqd 0 that identifies itself, takes ``finish`` messages and FINs them."""
    conn = RawConnection(cluster.nsqds[0].tcp_port, timeout=15.0)
    consumers.append(conn)
    identify = {"client_id": client_id, "hostname": "ui-host", "user_agent": "ui-test/1.0",
                "feature_negotiation": True, "sample_rate": sample_rate}
    conn.command(b"IDENTIFY", json.dumps(identify).encode())
    conn.read_frame()
    conn.command(f"SUB {topic} {channel}".encode())
    assert conn.read_frame() == (0, b"OK")
    if finish:
        conn.command(f"RDY {finish}".encode())
        ids = []
        for _ in range(finish):
            frame_type, data = conn.read_frame()
            assert frame_type == 2
            ids.append(data[10:26])
        conn.command(b"RDY 0")  # before the FINs, so no more are sent
        for message_id in ids:
            conn.command(b"FIN " + message_id)
    return conn


def nsqd_topics(cluster: AdminCluster, index: int) -> list[str]:
    stats = requests.get(f"{cluster.nsqd_url(index)}/stats", params={"format": "json"},
                         timeout=5).json()
    return [t["topic_name"] for t in stats["topics"] or []]


def channel_depth(cluster: AdminCluster, index: int, topic: str, channel: str) -> int | None:
    stats = cluster.topic_stats(index, topic)
    found = [c for c in (stats or {}).get("channels") or [] if c["channel_name"] == channel]
    return found[0]["depth"] if found else None


def nsqd_channels(cluster: AdminCluster, index: int, topic: str) -> list[str]:
    stats = cluster.topic_stats(index, topic)
    return [c["channel_name"] for c in (stats or {}).get("channels") or []]


# --- pages and actions ----------------------------------------------------------------------


def test_topics_page_refreshes_live_and_pauses_a_channel(cluster, browser):
    cluster.publish(0, "orders", 3)
    cluster.publish(1, "orders", 2)
    open_page(browser, cluster, "/", 'tr[data-topic="orders"]')
    wait_for(lambda: text_of(browser, 'tr[data-topic="orders"] td.depth') == "5",
             what="orders depth 5 on the topics page")
    chips = text_of(browser, 'tr[data-topic="orders"] td.nodes')
    assert f"127.0.0.1:{cluster.nsqds[0].http_port} 3" in chips
    # Live refresh, without a page load: the marker set on this page survives.
    browser.execute_script("window.__sameDocument = true;")
    cluster.publish(1, "orders", 4)
    wait_for(lambda: text_of(browser, 'tr[data-topic="orders"] td.depth') == "9",
             what="depth 9 after a publish")
    assert browser.execute_script("return window.__sameDocument === true;")
    cluster.create_channel("orders", "billing")
    wait_for(lambda: "billing" in (text_of(browser, 'tr[data-topic="orders"] td.channels') or ""),
             what="the billing chip")
    shoot(browser, "topics")

    click(browser, 'tr[data-topic="orders"] a')
    wait_for(lambda: text_of(browser, 'tr[data-channel="billing"] td.depth') == "9",
             what="billing depth 9 on the topic page")
    assert browser.current_url == f"{cluster.url}/topics/orders"
    # A cancelled confirmation does nothing.
    click(browser, 'button[data-action="empty"][data-channel="billing"]')
    wait_for(lambda: browser.find_element(By.ID, "confirm").is_displayed(), what="dialog")
    browser.find_element(By.ID, "confirm-cancel").click()
    assert [cluster.channel_stats(i, "orders", "billing")["depth"] for i in range(2)] == [3, 6]
    # A confirmed pause pauses the channel on both nsqds; the badge is text, not a glyph.
    act(browser, 'button[data-action="pause"][data-channel="billing"]',
        "Pause channel orders/billing")
    wait_for(lambda: all(cluster.channel_stats(i, "orders", "billing")["paused"]
                         for i in range(2)), what="billing paused in /stats on both nsqds")
    wait_for(lambda: text_of(browser, 'tr[data-channel="billing"] .badge') == "paused",
             what="the paused badge")
    act(browser, 'button[data-action="unpause"][data-channel="billing"]', "Unpause channel")
    wait_for(lambda: not any(cluster.channel_stats(i, "orders", "billing")["paused"]
                             for i in range(2)), what="billing unpaused")
    browser.get(cluster.url + "/")
    wait_for(lambda: "⏸" not in (text_of(browser, "#topics-table") or "⏸"), what="no glyph")


def test_topic_page_columns_totals_e2e_and_topic_actions(cluster, browser, consumers):
    cluster.publish(0, "payments", 6)
    cluster.publish(1, "payments", 2)
    consume(cluster, consumers, "payments", "ledger", finish=4)
    cluster.create_channel("payments", "ledger")
    open_page(browser, cluster, "/topics/payments", "#topic-nodes")
    wait_for(lambda: text_of(browser, "#topic-nodes tr.total td.messages") == "8",
             what="8 messages in the totals row")
    # Memory and disk per channel, and E2E percentiles from the node that has samples.
    wait_for(lambda: text_of(browser, 'tr[data-channel="ledger"] td.memory') == "4",
             what="ledger memory depth 4 (2 + 2 unfinished)")
    shows(browser, 'tr[data-channel="ledger"] td.disk', "0", exact=True)
    wait_for(lambda: "p99" in (text_of(browser, "#e2e-table") or ""), what="the e2e table")
    shows(browser, "#e2e-table tr.total", "Total")
    shoot(browser, "topic")

    act(browser, 'button[data-action="pause"]:not([data-channel])', "Pause topic payments")
    wait_for(lambda: all(cluster.topic_stats(i, "payments")["paused"] for i in range(2)),
             what="payments paused on both nsqds")
    act(browser, 'button[data-action="unpause"]:not([data-channel])', "Unpause topic payments")
    wait_for(lambda: not any(cluster.topic_stats(i, "payments")["paused"] for i in range(2)),
             what="payments unpaused")
    act(browser, 'button[data-action="empty"]:not([data-channel])', "Empty topic payments")
    wait_for(lambda: all(cluster.topic_stats(i, "payments")["depth"] == 0 for i in range(2)),
             what="payments emptied")
    act(browser, 'button[data-action="delete"][data-channel="ledger"]',
        "Delete channel payments/ledger")
    wait_for(lambda: all("ledger" not in nsqd_channels(cluster, i, "payments") for i in range(2)),
             what="ledger deleted on both nsqds")
    act(browser, 'button[data-action="delete"]:not([data-channel])', "Delete topic payments")
    wait_for(lambda: all("payments" not in nsqd_topics(cluster, i) for i in range(2)),
             what="payments deleted on both nsqds")
    assert "payments" not in cluster.lookupd_get("/topics")["topics"]
    wait_for(lambda: browser.current_url == f"{cluster.url}/topics", what="back to topics")


def test_channel_page_clients_and_channel_actions(cluster, browser, consumers):
    cluster.publish(0, "events", 3)
    cluster.publish(1, "events", 1)
    consume(cluster, consumers, "events", "audit", finish=1, client_id="auditor-1")
    # A sampling client takes no message here: sampling could skip all three.
    consume(cluster, consumers, "events", "audit", finish=0, client_id="auditor-7",
            sample_rate=40)
    cluster.create_channel("events", "audit")
    open_page(browser, cluster, "/topics/events/audit", "#clients-table")
    row = 'tr[data-client="auditor-7"]'
    wait_for(lambda: text_of(browser, row), what="the client row")
    shows(browser, row, "ui-test/1.0")
    shows(browser, f"{row} td.features", "sample rate 40%")
    shows(browser, f"{row} td.auth", "no", exact=True)
    wait_for(lambda: text_of(browser, "#channel-nodes tr.total td.depth") is not None,
             what="the totals row")
    shoot(browser, "channel")
    act(browser, 'button[data-action="empty"][data-channel="audit"]', "Empty channel events/audit")
    wait_for(lambda: cluster.channel_stats(1, "events", "audit")["depth"] == 0, what="emptied")
    act(browser, 'button[data-action="pause"][data-channel="audit"]', "Pause channel events/audit")
    wait_for(lambda: cluster.channel_stats(0, "events", "audit")["paused"], what="paused")
    act(browser, 'button[data-action="delete"][data-channel="audit"]',
        "Delete channel events/audit")
    wait_for(lambda: all("audit" not in nsqd_channels(cluster, i, "events") for i in range(2)),
             what="audit deleted")
    wait_for(lambda: browser.current_url == f"{cluster.url}/topics/events", what="topic page")


def test_nodes_and_node_page_with_tombstone(cluster, browser, consumers):
    cluster.publish(0, "metrics", 2)
    cluster.publish(1, "metrics", 1)
    consume(cluster, consumers, "metrics", "graphs", finish=0, client_id="grapher")
    node = f"127.0.0.1:{cluster.nsqds[0].http_port}"
    open_page(browser, cluster, "/nodes", f'tr[data-node="{node}"]')
    shoot(browser, "nodes")
    click(browser, f'tr[data-node="{node}"] a')
    wait_for(lambda: text_of(browser, 'tr.channel[data-channel="metrics/graphs"] td.depth') == "2",
             what="the node page's channel row")
    wait_for(lambda: "grapher" in (text_of(
        browser, 'tr.channel[data-channel="metrics/graphs"] + tr.clients') or ""),
        what="the client row under metrics/graphs")
    for column in ("memory", "disk", "inflight", "deferred", "requeued", "timedout", "messages"):
        shows(browser, f'tr.channel[data-channel="metrics/graphs"] td.{column}', "")
    shoot(browser, "node")
    act(browser, 'tr.topic[data-topic="metrics"] button[data-action="tombstone"]',
        f"Tombstone topic metrics on node {node}")
    # The topic is gone from that node (so it cannot re-register), and kept on the other.
    wait_for(lambda: "metrics" not in nsqd_topics(cluster, 0), what="metrics deleted on node 0")
    assert "metrics" in nsqd_topics(cluster, 1)
    producers = cluster.lookupd_get("/lookup?topic=metrics")["producers"]
    assert [p["http_port"] for p in producers] == [cluster.nsqds[1].http_port]


def test_lookup_page_creates_and_deletes(cluster, browser):
    cluster.publish(0, "signups", 2)
    cluster.publish(1, "signups", 1)
    open_page(browser, cluster, "/lookup", "#create-form")
    shows(browser, "#lookupd-hosts", f"127.0.0.1:{cluster.lookupd.http_port}")
    # A channel created from the UI exists on every nsqd with the topic, holding its messages.
    form = browser.find_element(By.ID, "create-form")
    form.find_element(By.NAME, "topic").send_keys("signups")
    form.find_element(By.NAME, "channel").send_keys("welcome")
    form.find_element(By.CSS_SELECTOR, "button").click()
    wait_for(lambda: [channel_depth(cluster, i, "signups", "welcome") for i in range(2)] == [2, 1],
             what="welcome created on both nsqds, with the messages already published")
    assert "welcome" in cluster.lookupd_get("/channels?topic=signups")["channels"]
    # A topic (and channel) only lookupd knows is listed, and can be deleted there.
    form = browser.find_element(By.ID, "create-form")
    form.find_element(By.NAME, "topic").send_keys("future")
    form.find_element(By.NAME, "channel").send_keys("later")
    form.find_element(By.CSS_SELECTOR, "button").click()
    wait_for(lambda: text_of(browser, '#inactive-table tr[data-topic="future"]'),
             what="future listed as registered without producers")
    shows(browser, '#inactive-table tr[data-topic="future"]', "later")
    shoot(browser, "lookup")
    act(browser, 'tr[data-topic="future"] button[data-channel="later"]',
        "Delete channel future/later")
    wait_for(lambda: cluster.lookupd_get("/channels?topic=future")["channels"] == [],
             what="later deleted in lookupd")
    act(browser, 'tr[data-topic="future"] button[data-action="delete"]:not([data-channel])',
        "Delete topic future")
    wait_for(lambda: "future" not in cluster.lookupd_get("/topics")["topics"],
             what="future deleted in lookupd")
    wait_for(lambda: text_of(browser, '#inactive-table tr[data-topic="future"]') is None,
             what="future gone from the page")


def test_counter_page_counts_up(cluster, browser):
    cluster.publish(0, "tally", 1)
    cluster.create_channel("tally", "sum")
    open_page(browser, cluster, "/counter", "#counter-total")

    def shown() -> int:
        return int((text_of(browser, "#counter-total") or "0").replace(",", "") or 0)

    def total() -> int:
        stats = cluster.api("GET", "/api/counter").json()["stats"]
        return sum(s["message_count"] for s in stats.values())

    wait_for(lambda: shown() == total() and shown() > 0, what="the counter at the total")
    before = shown()
    cluster.publish(1, "tally", 50)  # tally/sum counts them
    wait_for(lambda: shown() >= before + 50, what="the counter counting up")
    shoot(browser, "counter")


def test_unknown_topic_page_says_so(cluster, browser):
    open_page(browser, cluster, "/topics/no-such-topic", "#message")
    wait_for(lambda: "TOPIC_NOT_FOUND" in (text_of(browser, "#message") or ""),
             what="TOPIC_NOT_FOUND shown")


def test_non_admins_see_no_action_buttons(cluster, browser):
    """With --admin-user, a browser without the ACL header gets pages without actions; the API
    refuses its actions with 403 and nothing changes in the daemons."""
    cluster.publish(0, "guarded", 1)
    cluster.create_channel("guarded", "g")
    process = ServerProcess(
        "gnsqadmin", "--http-address=127.0.0.1:0", "--refresh-interval=300ms",
        f"--lookupd-http-address=127.0.0.1:{cluster.lookupd.http_port}", "--admin-user=alice",
    ).start(expect=("HTTP",))
    try:
        base = f"http://127.0.0.1:{process.http_port}"
        browser.get(f"{base}/topics/guarded")
        wait_for(lambda: text_of(browser, 'tr[data-channel="g"]'), what="the channel row")
        assert browser.find_elements(By.CSS_SELECTOR, "button[data-action]") == []
        browser.get(f"{base}/lookup")
        wait_for(lambda: text_of(browser, "#lookupd-hosts"), what="the lookup page")
        assert browser.find_elements(By.ID, "create-form") == []
        refused = requests.post(f"{base}/api/topics/guarded", json={"action": "pause"}, timeout=5)
        assert (refused.status_code, refused.json()) == (403, {"message": "FORBIDDEN"})
        allowed = requests.post(f"{base}/api/topics/guarded", json={"action": "pause"},
                                headers={"X-Forwarded-User": "alice"}, timeout=5)
        assert allowed.status_code == 200
        assert cluster.topic_stats(0, "guarded")["paused"] is True
    finally:
        process.stop()



def test_tls_and_authed_client_details(browser, tmp_path_factory):
    """A client over TLS that AUTHed shows its TLS version and cipher and its identity."""
    work = tmp_path_factory.mktemp("tls-auth")
    certs = make_certs(work)
    auth = AuthServer().start()
    started: list[ServerProcess] = []
    conn = None
    try:
        nsqd = ServerProcess(
            "gnsqd", "--tcp-address=127.0.0.1:0", "--http-address=127.0.0.1:0",
            "--broadcast-address=127.0.0.1", f"--data-path={work}",
            f"--tls-cert={certs.server_cert}", f"--tls-key={certs.server_key}",
            f"--auth-http-address={auth.address}",
        ).start()
        started.append(nsqd)
        admin = ServerProcess(
            "gnsqadmin", "--http-address=127.0.0.1:0", "--refresh-interval=300ms",
            f"--nsqd-http-address=127.0.0.1:{nsqd.http_port}",
        ).start(expect=("HTTP",))
        started.append(admin)
        conn = RawConnection(nsqd.tcp_port, timeout=15.0)
        identify = {"client_id": "secure-1", "feature_negotiation": True, "tls_v1": True}
        conn.command(b"IDENTIFY", json.dumps(identify).encode())
        conn.read_frame()
        context = ssl.create_default_context(cafile=str(certs.ca))
        conn.sock = context.wrap_socket(conn.sock, server_hostname="127.0.0.1")
        assert conn.read_frame() == (0, b"OK")
        conn.command(b"AUTH", b"good")
        assert conn.read_frame()[0] == 0
        conn.command(b"SUB auth_ok.orders c")
        assert conn.read_frame() == (0, b"OK")
        browser.get(f"http://127.0.0.1:{admin.http_port}/topics/auth_ok.orders/c")
        row = 'tr[data-client="secure-1"]'
        shows(browser, f"{row} td.auth", "yes (fixture-user)", exact=True)
        shows(browser, f"{row} td.features", "TLS1.")
        shoot(browser, "channel-tls")
    finally:
        if conn is not None:
            conn.close()
        for process in reversed(started):
            process.stop()
        auth.stop()


def test_replay_on_a_crash_safe_node_asks_then_redelivers(tmp_path, browser, connect):
    """gnsqadmin shows a crash-safe node's topic log and replays a channel after a confirm."""
    nsqd = ServerProcess(
        "gnsqd", "--crash-safe", "--tcp-address=127.0.0.1:0", "--http-address=127.0.0.1:0",
        f"--data-path={tmp_path / 'data'}",
    ).start()
    admin = ServerProcess(
        "gnsqadmin", "--http-address=127.0.0.1:0", "--refresh-interval=300ms",
        f"--nsqd-http-address=127.0.0.1:{nsqd.http_port}",
    ).start(expect=("HTTP",))
    try:
        consumer = connect(nsqd.tcp_port)
        consumer.command(b"SUB logged work")
        assert consumer.read_frame() == (0, b"OK")
        body = "\n".join(f"message {n}" for n in range(20))
        reply = requests.post(f"http://127.0.0.1:{nsqd.http_port}/mpub",
                              params={"topic": "logged"}, data=body, timeout=5)
        assert reply.text == "OK"
        consumer.command(b"RDY 100")
        first = [consumer.read_frame()[1] for _ in range(20)]
        for frame in first:
            consumer.command(b"FIN " + frame[10:26])

        browser.get(f"http://127.0.0.1:{admin.http_port}/topics/logged/work")
        wait_for(lambda: "position 20, finished below 20" in (text_of(browser, ".log-summary")
                                                             or ""), what="log summary")
        browser.execute_script("window.prompt = () => 'oldest';")  # the user's answer
        click(browser, 'button[data-action="replay"]')
        wait_for(lambda: browser.find_element(By.ID, "confirm").is_displayed(), what="dialog")
        assert "Replay channel logged/work from oldest" in browser.find_element(
            By.ID, "confirm-text").text
        browser.find_element(By.ID, "confirm-ok").click()
        again = [consumer.read_frame()[1] for _ in range(20)]
        assert sorted(frame[26:] for frame in again) == sorted(frame[26:] for frame in first)
    finally:
        admin.stop()
        nsqd.stop()
