"""Priority classes: a tenant's requests reach the backends that schedule by priority with its class as vLLM's
`priority` field; its client may lower its priority, never raise it; a url backend gets the field only when
its config says it schedules by it. (That a replica admits by priority: tests/server/test_admission.py.)"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from corral.gateway.key_store import SQLiteKeyStore

from .conftest import start_gateway
from .recording_upstream import RecordingUpstream, recording_upstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as recording:
        yield recording


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    store = tmp_path_factory.mktemp("priority") / "keys.sqlite"
    keys = {tenant: SQLiteKeyStore(str(store)).create(tenant)[1] for tenant in ("gold", "bulk", "plain")}
    backend = {"url": upstream.base_url, "priority": True}
    gw = start_gateway({
        "groups": {"ranked": {"backends": [backend], "retries": 0},
                   "foreign": {"backends": [{"url": upstream.base_url}], "retries": 0}},
        "auth": {"enabled": True, "store": str(store), "tenants": {
            "gold": {"priority": -5}, "bulk": {"priority": 10}, "plain": {}}}}, admin_key="test-admin-key-priority")
    gw.wait_available("ranked", 1)
    gw.wait_available("foreign", 1)
    yield gw, keys
    gw.stop()


def send(gateway, tenant: str, model: str = "ranked", **fields) -> httpx.Response:
    gw, keys = gateway
    return httpx.post(gw.base_url + "/v1/completions", headers={"authorization": f"Bearer {keys[tenant]}"},
                      json={"model": model, "prompt": "hi", "max_tokens": 2, **fields}, timeout=30)


@pytest.mark.parametrize(("tenant", "fields", "sent"), [
    ("gold", {}, -5),
    ("bulk", {}, 10),
    ("plain", {}, 0),
    ("gold", {"priority": 3}, 3),  # lowering its own priority is allowed
    ("bulk", {"priority": 10, "stream": True}, 10),
])
def test_the_tenants_class_is_sent_as_the_requests_priority(gateway, upstream, tenant, fields, sent):
    upstream.answer("ok")
    response = send(gateway, tenant, **fields)
    assert response.status_code == 200, response.text
    assert [body["priority"] for body in upstream.bodies] == [sent]


def test_a_client_cannot_raise_its_priority_above_its_class(gateway, upstream):
    upstream.answer("ok")
    response = send(gateway, "bulk", priority=0)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("priority", "priority_not_allowed")
    assert "priority class 10" in error["message"]
    assert send(gateway, "plain", priority="high").json()["error"]["param"] == "priority"
    assert upstream.bodies == []  # refused before anything was sent


def test_a_url_backend_not_marked_as_scheduling_by_priority_gets_the_body_as_sent(gateway, upstream):
    upstream.answer("ok")
    assert send(gateway, "gold", model="foreign").status_code == 200
    assert send(gateway, "gold", model="foreign", priority=7).status_code == 200
    assert ["priority" in body for body in upstream.bodies] == [False, True]
    assert upstream.bodies[1]["priority"] == 7
