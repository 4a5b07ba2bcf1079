"""The live page in a real browser: headless Debian Chromium (Selenium + chromium-driver) against the in-process daemon.

Selenium is blocking, so every browser call runs in a reactor thread while the daemon keeps serving. The
screenshot lands in tests/artifacts/live-page.png. Chromium and its helpers: tests/support/browser.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.support.browser import ARTIFACTS, click, start_browser, wait_text
from tests.support.browser import need_browser as _need_browser
from tests.support.daemon import StartGateway, token, workspace
from tests.support.wsclient import connect

HOME = workspace("w-home", "home", "ds/home")


def type_and_send(driver: Any, text: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "message").send_keys(text)
    driver.find_element(By.ID, "send").click()


@pytest_twisted.ensureDeferred
async def test_live_page_subscribes_receives_an_event_and_chats(tmp_path: Path, gateway: StartGateway) -> None:
    """In Chromium the live page subscribes with a token, shows an event published on Redis, joins a room and shows
    its history, posts a message a second (Autobahn) client receives, and shows that client's answer."""
    _need_browser()
    daemon = await gateway(overrides={"web.live_page": "yes"})
    driver = None
    try:
        driver = await deferToThread(start_browser, tmp_path / "profile")
        url = f"http://127.0.0.1:{daemon.port}/#token={token('alice', [HOME])}"
        await deferToThread(driver.get, url)
        await deferToThread(wait_text, driver, "status-ws", "subscribed as alice")
        await deferToThread(wait_text, driver, "status-chat", "subscribed as alice")
        assert "token=" not in driver.current_url  # the page drops the token from the address bar

        await daemon.publish("tree", {"Target": {"Uuid": "n1", "Path": "ds/home/report.pdf", "Type": "LEAF"}})
        await deferToThread(wait_text, driver, "events", "home/report.pdf")

        bob = await connect(daemon.port, "/chat")
        await bob.subscribe(token("bob", [HOME]))
        bob.send_json({"@type": "JOIN", "Room": {"Type": "GLOBAL", "RoomTypeObject": "lobby"}})
        lobby = (await bob.next())["Room"]
        bob.send_json({"@type": "POST", "Message": {"RoomUuid": lobby["Uuid"], "Message": "said before alice came"}})
        while (await bob.next()).get("Message") != "said before alice came":
            pass
        await deferToThread(click, driver, "join")
        await deferToThread(wait_text, driver, "room-status", "alice")
        await deferToThread(wait_text, driver, "messages", "said before alice came")  # the page asks HISTORY

        await deferToThread(type_and_send, driver, "hello from chromium")
        while (frame := await bob.next()).get("Message") != "hello from chromium":
            assert frame.get("@type") in ("ROOM_UPDATE", "MAY_HAVE_MORE"), frame
        assert frame["Author"] == "alice"
        bob.send_json({"@type": "POST", "Message": {"RoomUuid": frame["RoomUuid"], "Message": "hi alice, bob here"}})
        await deferToThread(wait_text, driver, "messages", "hi alice, bob here")

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "live-page.png"
        assert await deferToThread(driver.save_screenshot, str(shot))
        assert shot.stat().st_size > 1000
    finally:
        if driver is not None:
            await deferToThread(driver.quit)


@pytest_twisted.ensureDeferred
async def test_live_page_is_off_by_default_and_locked_down_when_on(gateway: StartGateway) -> None:
    """Without live_page / is a 404; with it the page comes with a CSP that allows only its own inline script."""
    import treq

    off = await gateway(redis=None)
    on = await gateway(redis=None, overrides={"web.live_page": "yes"})
    response = await treq.get(f"http://127.0.0.1:{off.port}/", timeout=5)
    assert response.code == 404
    await response.content()
    response = await treq.get(f"http://127.0.0.1:{on.port}/", timeout=5)
    assert response.code == 200
    body = await response.text()
    assert "<title>wsgw live</title>" in body
    csp = response.headers.getRawHeaders("content-security-policy")[0]
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert response.headers.getRawHeaders("x-content-type-options") == ["nosniff"]
