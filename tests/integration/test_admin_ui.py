"""gnsqadmin's UI in a real headless Chromium (Debian's chromium + chromedriver, via selenium),
against a real gnsqlookupd + 2 gnsqd: depths appear and refresh live, a confirmed pause click
pauses the channel on every nsqd, a cancelled one does nothing, a screenshot is saved."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import requests

from ..servers import ServerProcess
from .test_admin_api import AdminCluster, wait_for

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


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


@pytest.fixture
def browser(tmp_path):
    binary, driver_path = chromium_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,860",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


@pytest.fixture
def cluster(tmp_path):
    started = AdminCluster(tmp_path).start()
    yield started
    started.stop()


def text_of(driver, selector: str) -> str | None:
    """The element's text, or None while it is missing or being re-rendered."""
    try:
        return driver.find_element(By.CSS_SELECTOR, selector).text
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def click(driver, selector: str) -> None:
    def attempt() -> bool:
        try:
            driver.find_element(By.CSS_SELECTOR, selector).click()
            return True
        except (NoSuchElementException, StaleElementReferenceException):
            return False

    wait_for(attempt, what=f"click {selector}")


def test_published_topic_shows_depth_and_a_pause_click_pauses(cluster, browser, tmp_path):
    cluster.publish(0, "orders", 3)
    cluster.publish(1, "orders", 2)
    browser.get(cluster.url + "/")

    # The topic appears with its summed depth and each node's depth.
    wait_for(lambda: text_of(browser, 'tr[data-topic="orders"] td.depth') == "5",
             what="orders depth 5 on the topics page")
    chips = text_of(browser, 'tr[data-topic="orders"] td.nodes')
    assert f"127.0.0.1:{cluster.nsqds[0].http_port} 3" in chips
    assert f"127.0.0.1:{cluster.nsqds[1].http_port} 2" in chips

    # Live refresh, without a page load: the marker set on this page survives.
    browser.execute_script("window.__sameDocument = true;")
    cluster.publish(1, "orders", 4)
    wait_for(lambda: text_of(browser, 'tr[data-topic="orders"] td.depth') == "9",
             what="depth 9 after a publish")
    assert browser.execute_script("return window.__sameDocument === true;")

    # Channels with depth on the topic page.
    cluster.create_channel("orders", "billing")
    click(browser, 'tr[data-topic="orders"] a')
    wait_for(lambda: text_of(browser, 'tr[data-channel="billing"] td.depth') == "9",
             what="billing depth 9 on the topic page")
    assert browser.current_url == f"{cluster.url}/topics/orders"

    # A cancelled confirmation does nothing.
    click(browser, 'button[data-action="empty"][data-channel="billing"]')
    wait_for(lambda: browser.find_element(By.ID, "confirm").is_displayed(), what="dialog")
    assert "Empty channel orders/billing" in browser.find_element(By.ID, "confirm-text").text
    browser.find_element(By.ID, "confirm-cancel").click()
    assert [cluster.channel_stats(i, "orders", "billing")["depth"] for i in range(2)] == [3, 6]

    # A confirmed pause click pauses the channel on both nsqds.
    click(browser, 'button[data-action="pause"][data-channel="billing"]')
    wait_for(lambda: browser.find_element(By.ID, "confirm").is_displayed(), what="dialog")
    assert "Pause channel orders/billing" in browser.find_element(By.ID, "confirm-text").text
    browser.find_element(By.ID, "confirm-ok").click()
    wait_for(lambda: all(cluster.channel_stats(i, "orders", "billing")["paused"]
                         for i in range(2)), what="billing paused in /stats on both nsqds")
    wait_for(lambda: text_of(
        browser, 'button[data-action="unpause"][data-channel="billing"]') == "Unpause",
        what="the Unpause button")
    assert "paused" in text_of(browser, 'tr[data-channel="billing"]')

    shot = tmp_path / "gnsqadmin.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nodes_page_and_channel_clients(cluster, browser, connect):
    cluster.publish(0, "events", 1)
    cluster.create_channel("events", "audit")
    consumer = connect(cluster.nsqds[0].tcp_port)
    consumer.command(b"SUB events audit")
    consumer.read_frame()
    browser.get(cluster.url + "/nodes")
    for process in cluster.nsqds:
        wait_for(lambda p=process: text_of(
            browser, f'tr[data-node="127.0.0.1:{p.http_port}"]'), what="node row")
    browser.get(cluster.url + "/topics/events/audit")
    wait_for(lambda: text_of(browser, "#clients-table tbody tr"), what="a client row")
    assert f"127.0.0.1:{cluster.nsqds[0].http_port}" in text_of(browser, "#clients-table")
    assert browser.find_element(By.ID, "status").get_attribute("data-refreshed")


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
