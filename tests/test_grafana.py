"""etc/grafana-wsgw.json, the Grafana dashboard of the Prometheus metrics (issue 14): every series it queries is one
a real daemon's /metrics serves (with Redis, the http access resolver, a little traffic), under that exact name, and
every label it groups by is one of that series' labels."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from tests.support.daemon import StartGateway, token, workspace
from tests.support.wsclient import connect

DASHBOARD = Path(__file__).resolve().parent.parent / "etc" / "grafana-wsgw.json"
ADMIN = "tcp:0:interface=127.0.0.1"
HOME = workspace("w-home", "home", "ds/home")
NAME = re.compile(r"\bwsgw_[a-z0-9_]+\b")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
REQUIRED = {  # a panel for each of issue 14's points: connections, subscribes, events, deliveries, delays, ...
    "wsgw_connections", "wsgw_subscribes_accepted_total", "wsgw_subscribes_refused_total",
    "wsgw_bus_events_received_total", "wsgw_deliveries_total", "wsgw_delivery_lag_seconds_bucket",
    "wsgw_node_merge_delay_seconds_bucket", "wsgw_pacing_delay_seconds_bucket", "wsgw_server_closes_total",
    "wsgw_bus_up", "wsgw_redis_connected", "wsgw_chat_rooms_active", "wsgw_access_lookups_total",
    "wsgw_reauthorized_sessions_total", "wsgw_sessions_revoked_total", "wsgw_revocations",
    "wsgw_log_lines_suppressed_total",
}


def expressions(node: Any) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets' ``expr`` and template variables' queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                found.append(value)
            elif key == "query" and isinstance(value, dict) and isinstance(value.get("query"), str):
                found.append(value["query"])
            else:
                found.extend(expressions(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(expressions(item))
    return found


def test_the_dashboard_is_grafana_json_with_a_panel_for_each_point() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "wsgw" and dashboard["panels"]
    queried = {name for expr in expressions(dashboard) for name in NAME.findall(expr)}
    assert REQUIRED <= queried, REQUIRED - queried


@pytest_twisted.ensureDeferred
async def test_every_series_the_dashboard_queries_is_served_by_a_real_daemon(gateway: StartGateway) -> None:
    backend = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")  # never answers
    try:
        daemon = await gateway(admin=ADMIN, overrides={
            "access.resolver": "http", "access.url": f"http://127.0.0.1:{backend.getHost().port}/access",
            "access.timeout": "0.5"})
        alice = await connect(daemon.port, "/chat")
        await alice.subscribe(token("alice", [HOME]))  # the backend times out: refused, the socket closed
        await alice.wait_closed()
        response = await treq.get(f"http://127.0.0.1:{daemon.admin_port}/metrics", timeout=5)
        text = (await response.content()).decode()
    finally:
        await backend.stopListening()
    labels: dict[str, set[str]] = defaultdict(set)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels[sample.name].update(sample.labels)
    missing: list[str] = []
    for expr in expressions(json.loads(DASHBOARD.read_text())):
        names = NAME.findall(expr)
        assert names, expr
        missing += [f"{name} (in {expr})" for name in names if name not in labels]
        grouped = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",") if label.strip()}
        served = set().union(*(labels.get(name, set()) for name in names)) | {"instance", "job"}
        missing += [f"label {label} (in {expr})" for label in grouped - served]
    assert missing == []
