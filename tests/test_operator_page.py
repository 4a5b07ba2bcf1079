"""The operator page in a real browser (issue 14, "An operator page"): headless Debian Chromium against two daemons
sharing one Redis. The page takes the token, lists both instances, charts events, and its forms publish an event a
WebSocket client receives, disconnect a client and revoke another (on the other instance). The screenshot lands in
tests/artifacts/operator-page.png."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.support.browser import ARTIFACTS, click, need_browser, start_browser, wait_for, wait_text
from tests.support.daemon import Daemon, StartGateway, token, workspace
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until
from tests.support.wsclient import Client, connect

OPERATOR_TOKEN = "operator-token-of-the-page-test-0123456789"
HOME = workspace("w-home", "home", "ds/home")


def event(name: str) -> dict[str, Any]:
    return {"Target": {"Uuid": f"u-{name}", "Path": f"ds/home/{name}", "Type": "LEAF"}}


# Counts the page's poll ticks that found a /info request still in flight: each writes "waiting for /info ..." into
# #status (setStatus replaces its text node, one mutation a tick, the same text or not).
COUNT_WAITING = """
window.waitingTicks = 0;
new MutationObserver((records) => {
  for (const record of records) {
    for (const node of record.addedNodes) {
      if (node.textContent.startsWith("waiting for /info")) window.waitingTicks += 1;
    }
  }
}).observe(document.getElementById("status"), {childList: true});
"""


def fill(driver: Any, values: dict[str, str]) -> None:
    """Set each input, textarea or select (by id) to its value."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    for element_id, text in values.items():
        element = driver.find_element(By.ID, element_id)
        if element.tag_name == "select":
            Select(element).select_by_visible_text(text)
        else:
            element.clear()
            element.send_keys(text)


def chart_max(driver: Any, element_id: str) -> float:
    from selenium.webdriver.common.by import By

    return float(driver.find_element(By.ID, element_id).get_attribute("data-max") or 0)


async def subscribed(daemon: Daemon, login: str) -> Client:
    client = await connect(daemon.port, "/ws")
    assert (await client.subscribe(token(login, [HOME])))["@type"] == "subscribed"
    return client


async def receives(client: Client, path: str) -> None:
    """``client`` gets the event of ``path`` (events before it are skipped; each wait bounded)."""
    while path not in json.dumps(await client.next()):
        pass


@pytest_twisted.ensureDeferred
async def test_operator_page_shows_instances_charts_and_its_forms_act(tmp_path: Path, gateway: StartGateway) -> None:
    need_browser()
    secret = tmp_path / "operator.token"
    secret.write_text(OPERATOR_TOKEN + "\n")
    settings = {"operator.page": "yes", "operator.heartbeat": "0.5", "admin.publish_token_file": str(secret)}
    a = await gateway(admin="tcp:0:interface=127.0.0.1", overrides={**settings, "operator.instance_name": "gw-a"})
    b = await gateway(prefix=a.prefix, admin="tcp:0:interface=127.0.0.1",
                      overrides={**settings, "operator.instance_name": "gw-b"})
    alice, bob = await subscribed(a, "alice"), await subscribed(b, "bob")
    driver = None
    try:
        driver = await deferToThread(start_browser, tmp_path / "profile", "1300,1250")
        await deferToThread(driver.get, f"http://127.0.0.1:{a.admin_port}/")
        await deferToThread(fill, driver, {"token": OPERATOR_TOKEN})
        await deferToThread(click, driver, "connect")
        await deferToThread(wait_text, driver, "status", "connected")
        await deferToThread(wait_text, driver, "instances", "gw-a")
        await deferToThread(wait_text, driver, "instances", "gw-b")

        for i in range(20):  # events for the chart: both instances receive them (one Redis)
            await a.publish("tree", event(f"chart-{i}.txt"))
        await receives(alice, "chart-19.txt")
        await deferToThread(wait_for, driver, lambda d: chart_max(d, "chart-events") > 0, "events in the chart",
                            lambda d: d.find_element("id", "events-summary").text)
        await deferToThread(wait_for, driver, lambda d: chart_max(d, "chart-deliveries") > 0,
                            "deliveries in the chart", lambda d: d.find_element("id", "deliveries-summary").text)

        await deferToThread(fill, driver, {"publish-topic": "tree",
                                           "publish-body": json.dumps(event("from-the-page.txt"))})
        await deferToThread(click, driver, "publish-send")
        await receives(alice, "from-the-page.txt")
        await receives(bob, "from-the-page.txt")
        await deferToThread(wait_text, driver, "publish-answer", "200")

        await deferToThread(fill, driver, {"disconnect-field": "login", "disconnect-value": "alice",
                                           "disconnect-reason": "bye from the page"})
        await deferToThread(click, driver, "disconnect-send")
        assert await alice.wait_closed() == (4003, "access revoked: bye from the page")
        await deferToThread(wait_text, driver, "disconnect-answer", "202")

        await deferToThread(fill, driver, {"revoke-field": "login", "revoke-value": "bob"})
        await deferToThread(click, driver, "revoke-send")
        code, _ = await bob.wait_closed()  # bob is on the other instance: the control message reached it
        assert code == 4003
        await deferToThread(wait_text, driver, "revoke-answer", "202")
        await deferToThread(wait_text, driver, "closes", "4003 2")  # alice's and bob's closes, summed

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "operator-page.png"
        assert await deferToThread(driver.save_screenshot, str(shot))
        assert shot.stat().st_size > 1000
        logs = [entry["message"] for entry in await deferToThread(driver.get_log, "browser")
                if entry["level"] == "SEVERE" and "favicon.ico" not in entry["message"]]
        assert logs == []  # no CSP violation, no script error
    finally:
        if driver is not None:
            await deferToThread(driver.quit)


@pytest_twisted.ensureDeferred
async def test_the_page_asks_info_once_at_a_time_and_says_when_it_waits(tmp_path: Path, gateway: StartGateway) -> None:
    """While Redis does not answer, /info takes up to the command timeout (10 s): the page polled every 2 s anyway,
    piling up to 6 requests on the operator listener (its sockets are capped) and showing the old data as
    "connected" all along. It now waits for each answer, says it is waiting, and shows the answer once it comes."""
    need_browser()
    secret = tmp_path / "operator.token"
    secret.write_text(OPERATOR_TOKEN + "\n")
    with RedisServer() as redis:
        a = await gateway(redis=redis.endpoint, admin="tcp:0:interface=127.0.0.1",
                          overrides={"operator.page": "yes", "operator.instance_name": "gw-a",
                                     "admin.publish_token_file": str(secret)})
        registry = a.service.instances
        asked: list[float] = []
        ask = registry.instances

        def counted() -> Any:
            asked.append(time.monotonic())
            return ask()

        registry.instances = counted  # type: ignore[method-assign]
        driver = None
        try:
            driver = await deferToThread(start_browser, tmp_path / "profile")
            await deferToThread(driver.get, f"http://127.0.0.1:{a.admin_port}/")
            await deferToThread(fill, driver, {"token": OPERATOR_TOKEN})
            await deferToThread(click, driver, "connect")
            await deferToThread(wait_text, driver, "status", "connected")
            await deferToThread(driver.execute_script, COUNT_WAITING)
            redis.freeze()
            frozen = time.monotonic()
            try:
                await deferToThread(wait_text, driver, "status", "waiting for /info")
                # the page's own poll ticks, counted: after 3 (the one that found the request in flight, then 2
                # more, 4 s), a page asking on every tick would have sent 3 more requests
                await deferToThread(wait_for, driver, lambda d: d.execute_script("return window.waitingTicks") >= 3,
                                    "3 poll ticks waiting for /info", lambda d: d.execute_script(
                                        "return window.waitingTicks"))
                assert len([t for t in asked if t > frozen]) <= 1
            finally:
                redis.thaw()
            await deferToThread(wait_text, driver, "status", "connected")  # the stalled request's answer, then more
            await wait_until(lambda: len([t for t in asked if t > frozen]) >= 2, "polls again once answered")
            logs = [entry["message"] for entry in await deferToThread(driver.get_log, "browser")
                    if entry["level"] == "SEVERE" and "favicon.ico" not in entry["message"]]
            assert logs == []
        finally:
            if driver is not None:
                await deferToThread(driver.quit)
