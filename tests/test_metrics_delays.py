"""The delays /metrics measures, on the real daemon with Redis: the node merge window and pacing holds are exported
beside the delivery lag histogram, which leaves them out and says so (issue 14, "Metrics that tell the truth")."""

from __future__ import annotations

import time

import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import StartGateway, scrape, token, value, workspace
from tests.support.wsclient import connect

HOME = workspace("w-home", "home", "ds/home")
ADMIN = "tcp:0:interface=127.0.0.1"


@pytest_twisted.ensureDeferred
async def test_two_events_merged_by_a_one_second_window_show_one_second_in_the_merge_histogram(
        gateway: StartGateway) -> None:
    """Two events of one node published together go out as one merged frame about 1 s later: the merge
    histogram has one observation of about 1 s; the delivery lag histogram has its two quick ones."""
    daemon = await gateway(admin=ADMIN, overrides={"delivery.batch_window": "1"})
    alice = await connect(daemon.port)
    assert (await alice.subscribe(token("alice", [HOME])))["@type"] == "subscribed"
    started = time.monotonic()
    await daemon.publish("tree", {"Type": "UPDATE_CONTENT", "Target": {"Uuid": "n1", "Path": "ds/home/a.txt",
                                                                       "Etag": "e1"}})
    await daemon.publish("tree", {"Type": "UPDATE_CONTENT", "Target": {"Uuid": "n1", "Path": "ds/home/a.txt",
                                                                       "Etag": "e2"}})
    frame = await alice.next()
    waited = time.monotonic() - started
    assert frame["Target"]["Etag"] == "e2" and waited >= 0.95
    samples = await scrape(daemon)
    assert value(samples, "wsgw_node_merge_delay_seconds_count") == 1
    assert 0.95 <= value(samples, "wsgw_node_merge_delay_seconds_sum") <= waited
    assert value(samples, "wsgw_node_merge_delay_seconds_bucket", le="0.75") == 0
    assert value(samples, "wsgw_node_merge_delay_seconds_bucket", le="1.5") == 1
    assert value(samples, "wsgw_delivery_lag_seconds_count", topic="tree") == 2
    assert value(samples, "wsgw_delivery_lag_seconds_sum", topic="tree") < 0.5
    assert value(samples, "wsgw_pacing_delay_seconds_count") == 0


@pytest_twisted.ensureDeferred
async def test_frames_held_by_pacing_show_their_hold_in_the_pacing_histogram(gateway: StartGateway) -> None:
    """At 2 frames a second with a burst of 1, three events published together: the first goes out at once (not
    observed), the next two are held about 0.5 s and 1 s, and the pacing histogram says so."""
    daemon = await gateway(admin=ADMIN, overrides={"delivery.pacing_rate": "2", "delivery.pacing_burst": "1",
                                                   "delivery.pacing_max_delay": "5"})
    alice = await connect(daemon.port)
    assert (await alice.subscribe(token("alice", [HOME])))["@type"] == "subscribed"
    started = time.monotonic()
    for n in range(3):
        await daemon.publish("tree", {"Target": {"Uuid": f"n{n}", "Path": f"ds/home/{n}.txt"}})
    paths = [(await alice.next())["Target"]["Path"] for _ in range(3)]
    waited = time.monotonic() - started
    assert paths == ["home/0.txt", "home/1.txt", "home/2.txt"]
    samples = await scrape(daemon)
    assert value(samples, "wsgw_pacing_delay_seconds_count") == 2
    assert 1.2 <= value(samples, "wsgw_pacing_delay_seconds_sum") <= 2 * waited
    assert value(samples, "wsgw_pacing_delay_seconds_bucket", le="0.25") == 0
    assert value(samples, "wsgw_pacing_delay_seconds_bucket", le="1.5") == 2
    assert value(samples, "wsgw_node_merge_delay_seconds_count") == 0  # batch_window = 0 in the tests' daemons
    assert value(samples, "wsgw_delivery_lag_seconds_sum", topic="tree") < 0.5


@pytest_twisted.ensureDeferred
async def test_the_help_texts_say_what_each_delay_covers(gateway: StartGateway) -> None:
    """The delivery lag's help names what it leaves out and where that is measured."""
    daemon = await gateway(admin=ADMIN, redis=None)
    response = await treq.get(f"http://127.0.0.1:{daemon.admin_port}/metrics", timeout=5)
    helps = {f.name: f.documentation for f in text_string_to_metric_families((await response.content()).decode())}
    lag = helps["wsgw_delivery_lag_seconds"]
    assert "wsgw_node_merge_delay_seconds" in lag and "wsgw_pacing_delay_seconds" in lag and "Not included" in lag
    assert "merge window" in helps["wsgw_node_merge_delay_seconds"]
    assert "held by a socket's pacing" in helps["wsgw_pacing_delay_seconds"]
