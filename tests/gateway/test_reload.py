"""Config reload, end to end: a real gateway (in this process) started from a YAML file, in front of the recording
upstream, reloaded by ``POST /admin/reload`` and by a real SIGHUP. A changed limit holds from the next request
(counting the requests already in the window); a changed policy applies to the next request while a stream in
flight keeps the old one; a restart-only key, a file that is not YAML and an invalid config are refused whole
and the old config keeps serving; every reload, applied or refused, and every change in it is an admin record
of an audit chain that verifies."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from corral.gateway.app import Gateway
from corral.gateway.audit_chain import audit_files
from corral.gateway.audit_chain import verify as verify_chain
from corral.gateway.config import ConfigFile
from corral.gateway.key_store import SQLiteKeyStore

from .recording_upstream import RecordingUpstream, recording_upstream

ADMIN = "test-admin-key-0123456789"
AUDIT_KEY = b"0123456789abcdef-reload-audit-key"


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as recording:
        yield recording


@pytest.fixture
def setup(tmp_path, upstream) -> dict:
    """A config (a dict to edit and write), its file, and a key for each tenant."""
    store = str(tmp_path / "keys.sqlite")
    data = {"groups": {"m": {"backends": [{"url": upstream.base_url}], "retries": 0}},
            "auth": {"enabled": True, "store": store, "tenants": {"acme": {"limits": {"requests_per_minute": 5}},
                                                                  "beta": {}}},
            "limits": {"budget_path": str(tmp_path / "budgets.sqlite")},
            "audit": {"enabled": True, "directory": str(tmp_path / "audit")}}
    keys = {tenant: SQLiteKeyStore(store).create(tenant)[1] for tenant in ("acme", "beta")}
    return {"data": data, "path": tmp_path / "gateway.yaml", "keys": keys, "audit": tmp_path / "audit"}


def write(path: Path, data: dict | str) -> str:
    """Writes the config file; its SHA-256."""
    raw = (data if isinstance(data, str) else yaml.safe_dump(data)).encode()
    path.write_bytes(raw)
    return hashlib.sha256(raw).hexdigest()


def start(run_gateway, setup: dict):
    write(setup["path"], setup["data"])
    source = ConfigFile(setup["path"])
    return run_gateway(source.read()[0], admin_key=ADMIN, audit_key=AUDIT_KEY, config_file=source)


def reload(gw, key: str | None = ADMIN) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(gw.base_url + "/admin/reload", headers=headers, timeout=30)


def ask(gw, key: str, content: str = "hi") -> httpx.Response:
    return httpx.post(gw.base_url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
                      json={"model": "m", "messages": [{"role": "user", "content": content}]})


def admin_records(directory: Path) -> list[dict]:
    checked = verify_chain([directory], AUDIT_KEY)
    assert checked.ok, checked.format()
    records = [yaml.safe_load(line) for path in audit_files(directory) for line in path.read_bytes().splitlines()]
    return [record for record in records if record["type"] == "admin" and record["action"] != "key.create"]


def test_a_reloaded_limit_holds_from_the_next_request_and_each_change_is_recorded(upstream, run_gateway, setup):
    gw = start(run_gateway, setup)
    acme, data = setup["keys"]["acme"], setup["data"]
    first = hashlib.sha256(setup["path"].read_bytes()).hexdigest()
    assert [ask(gw, acme).status_code for _ in range(2)] == [200, 200]
    tenants = data["auth"]["tenants"]
    tenants["acme"]["limits"]["requests_per_minute"] = 2  # the window already holds 2
    tenants["beta"]["max_tokens_cap"] = 7
    tenants["gamma"] = {"groups": ["m"]}
    second = write(setup["path"], data)
    answer = reload(gw)
    assert answer.status_code == 200, answer.text
    assert answer.json()["changes"] == [{"action": "limits.change", "target": "auth.tenants.acme.limits"},
                                        {"action": "tenant.change", "target": "auth.tenants.beta"},
                                        {"action": "tenant.create", "target": "auth.tenants.gamma"}]
    refused = ask(gw, acme)
    assert refused.status_code == 429 and "limit of 2 requests" in refused.json()["error"]["message"]
    tenants["acme"]["limits"]["requests_per_minute"] = 3
    third = write(setup["path"], data)
    assert reload(gw).status_code == 200
    assert [ask(gw, acme).status_code for _ in range(2)] == [200, 429]
    assert gw.metric("corral_gateway_config_reloads_total", status="applied") == 2
    gw.stop()
    records = admin_records(setup["audit"])
    reloads = [record for record in records if record["action"] == "config.reload"]
    assert [(r["actor"].split(":")[0], r["status"], r["before"]["sha256"], r["after"]["sha256"], r["changes"])
            for r in reloads] == [("admin_api", "applied", first, second, 3), ("admin_api", "applied", second, third, 1)]
    changes = [(r["action"], r["target"], r["before"], r["after"]) for r in records if r["action"] != "config.reload"]
    assert changes[:3] == [
        ("limits.change", "auth.tenants.acme.limits", {"requests_per_minute": 5}, {"requests_per_minute": 2}),
        ("tenant.change", "auth.tenants.beta", {"max_tokens_cap": None}, {"max_tokens_cap": 7}),
        ("tenant.create", "auth.tenants.gamma", None, {**changes[2][3], "groups": ["m"]})]
    assert changes[3][2:] == ({"requests_per_minute": 2}, {"requests_per_minute": 3})
    assert {r["reload_id"] for r in records[:4]} == {reloads[0]["reload_id"]}


def test_a_reload_gives_a_tenant_the_gateways_first_limits(upstream, run_gateway, setup, tmp_path):
    data = setup["data"]
    budgets = data.pop("limits")
    del data["auth"]["tenants"]["acme"]["limits"]
    gw = start(run_gateway, setup)
    acme = setup["keys"]["acme"]
    assert [ask(gw, acme).status_code for _ in range(2)] == [200, 200]
    # No limits' store was built, so the `limits:` section may come with the first limits.
    data["limits"] = {**budgets, "requests_strategy": "fixed_window"}
    data["auth"]["tenants"]["acme"]["limits"] = {"requests_per_minute": 1}
    write(setup["path"], data)
    assert reload(gw).json()["changes"] == [{"action": "config.change", "target": "limits"},
                                            {"action": "limits.change", "target": "auth.tenants.acme.limits"}]
    assert [ask(gw, acme).status_code for _ in range(2)] == [200, 429]
    data["limits"]["requests_strategy"] = "moving_window"  # now the store is built: a restart
    write(setup["path"], data)
    assert reload(gw).json()["error"]["message"].startswith(
        "config reload refused: gateway.yaml: limits.requests_strategy changed, and only a restart applies it")


def test_a_refused_reload_changes_nothing_says_why_in_one_line_and_is_recorded(upstream, run_gateway, setup):
    gw = start(run_gateway, setup)
    beta, data = setup["keys"]["beta"], setup["data"]
    assert reload(gw, None).status_code == 401
    # A restart-only key refuses the whole reload: beta's removal in the same file is not applied either.
    changed = yaml.safe_load(yaml.safe_dump(data))
    changed["groups"]["m"]["backends"][0]["url"] = "http://127.0.0.1:9"
    del changed["auth"]["tenants"]["beta"]
    write(setup["path"], changed)
    refused = reload(gw)
    error = refused.json()["error"]
    assert (refused.status_code, error["code"], error["type"]) == (409, "restart_required", "invalid_request_error")
    assert error["message"].startswith("config reload refused: gateway.yaml: groups.m.backends.0.url changed, and "
                                       "only a restart applies it")
    write(setup["path"], "groups: [unclosed\n")
    refused = reload(gw)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_config"
    assert "gateway.yaml: line 2: not valid YAML" in refused.json()["error"]["message"]
    data["auth"]["tenants"]["acme"]["limits"]["requests_per_minute"] = 0
    write(setup["path"], data)
    message = reload(gw).json()["error"]["message"]
    assert message == ("config reload refused: gateway.yaml: auth.tenants.acme.limits.requests_per_minute: "
                       "Input should be greater than or equal to 1")
    assert ask(gw, beta).status_code == 200  # the old config still serves
    assert gw.metric("corral_gateway_config_reloads_total", status="refused") == 3
    gw.stop()
    refusals = [(r["status"], r["reason"].split(":")[0], r["after"]["sha256"] is not None)
                for r in admin_records(setup["audit"])]
    assert refusals == [("refused", "config reload refused", True)] * 3
    assert all(r["before"]["sha256"] for r in admin_records(setup["audit"]))


def test_a_reloaded_policy_applies_to_the_next_request_while_a_stream_keeps_the_old(upstream, run_gateway, setup):
    gw = start(run_gateway, setup)
    acme, data = setup["keys"]["acme"], setup["data"]
    upstream.answer("Write to ", "jane.doe@example.com", " today.")
    upstream.hold = threading.Event()
    upstream.hold_after = 2  # the role delta and "Write to " go out, then the stream waits
    with httpx.stream("POST", gw.base_url + "/v1/chat/completions", headers={"authorization": f"Bearer {acme}"},
                      json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                      timeout=30) as stream:
        lines = stream.iter_lines()
        assert "Write to " in next(line for line in lines if "Write to" in line)
        data["auth"]["tenants"]["acme"]["guardrails"] = {"checks": [{"type": "pii", "action": "mask"}]}
        write(setup["path"], data)
        assert reload(gw).json()["changes"] == [{"action": "policy.change", "target": "auth.tenants.acme.guardrails"}]
        masked = ask(gw, acme, "I am bob@example.org")
        assert upstream.bodies[-1]["messages"][0]["content"] == "I am [EMAIL]"
        assert masked.json()["choices"][0]["message"]["content"] == "Write to [EMAIL] today."
        upstream.hold.set()
        rest = "".join(lines)
    assert "jane.doe@example.com" in rest  # the stream began with no policy and ends with none
    gw.stop()
    [change] = [r for r in admin_records(setup["audit"]) if r["action"] == "policy.change"]
    assert change["before"] is None and change["after"]["checks"][0]["type"] == "pii"


def reloads(gateway: Gateway) -> float:
    """Reloads done, applied or refused."""
    return sum(gateway.metrics.registry.get_sample_value("corral_gateway_config_reloads_total", {"status": status})
               or 0.0 for status in ("applied", "refused"))


def test_sighup_reloads_and_a_refused_one_is_a_log_line(setup, caplog):
    """A real SIGHUP to this process, handled by the gateway's loop in the main thread (where signals arrive)."""
    write(setup["path"], setup["data"])
    source = ConfigFile(setup["path"])
    config = source.read()[0]

    async def scenario() -> None:
        gateway = Gateway(config, admin_key=ADMIN, audit_key=AUDIT_KEY, config_file=source)
        await gateway.start()
        try:
            assert gateway.reloader.install_signal_handler()
            for change in ("limit", "restart"):  # the second one is refused: the limit stays 2
                data = yaml.safe_load(yaml.safe_dump(setup["data"]))
                data["auth"]["tenants"]["acme"]["limits"]["requests_per_minute"] = 2
                if change == "restart":
                    data["groups"]["m"]["timeouts"] = {"request_s": 5}
                write(setup["path"], data)
                before = reloads(gateway)
                os.kill(os.getpid(), signal.SIGHUP)
                deadline = time.monotonic() + 10
                while reloads(gateway) == before and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                await gateway.reloader.wait_idle()
                assert reloads(gateway) == before + 1
                assert gateway.config.auth.tenants["acme"].limits.requests_per_minute == 2
        finally:
            gateway.reloader.remove_signal_handler()
            await gateway.stop()

    with caplog.at_level(logging.INFO, logger="corral.gateway"):
        asyncio.run(scenario())
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    logged = [record.getMessage() for record in caplog.records if "reload" in record.getMessage()]
    assert logged[0].startswith("config reloaded from ") and logged[0].endswith("by signal:SIGHUP: 1 change")
    assert logged[1] == ("config reload refused: gateway.yaml: groups.m.timeouts.request_s changed, and only a "
                         "restart applies it (a reload applies auth.tenants, guardrails, groups.<name>.guardrails, "
                         "audit.record_texts, max_body_bytes) [restart_required]")
    records = admin_records(setup["audit"])
    assert [(r["action"], r["actor"], r.get("status")) for r in records] == [
        ("config.reload", "signal:SIGHUP", "applied"), ("limits.change", "signal:SIGHUP", None),
        ("config.reload", "signal:SIGHUP", "refused")]


def test_the_diff_names_the_first_restart_key_and_keeps_a_redis_password_out():
    from corral.gateway.config import parse_config
    from corral.gateway.reload import RestartRequired, config_changes

    base = {"groups": {"m": {"backends": [{"url": "http://127.0.0.1:9", "api_key": "sk-backend-secret"}]}},
            "auth": {"enabled": True, "tenants": {"acme": {}}}}
    old = parse_config(base, "test")
    grown = parse_config({**base, "groups": {**base["groups"], "n": base["groups"]["m"]}}, "test")
    with pytest.raises(RestartRequired, match=r"^groups\.n changed"):
        config_changes(old, grown)
    rekeyed = yaml.safe_load(yaml.safe_dump(base))
    rekeyed["groups"]["m"]["backends"][0]["api_key"] = "sk-other-secret"
    with pytest.raises(RestartRequired) as refused:
        config_changes(old, parse_config(rekeyed, "test"))
    assert refused.value.key == "groups.m.backends.0.api_key" and "secret" not in str(refused.value)
    limited = yaml.safe_load(yaml.safe_dump(base))
    limited["auth"]["tenants"]["acme"]["limits"] = {"requests_per_minute": 9}
    limited["limits"] = {"storage": "redis://:hunter2@127.0.0.1:6379/0"}
    with pytest.raises(RestartRequired, match=r"^limits\.storage changed"):
        config_changes(old, parse_config(limited, "test"))  # a store is built: a restart
    [store, limits] = config_changes(old, parse_config(limited, "test"), limits_built=False)
    assert (store.action, store.after["storage"]) == ("config.change", "redis://:***@127.0.0.1:6379/0")
    assert (limits.action, limits.before, limits.after) == ("limits.change", {"requests_per_minute": None},
                                                            {"requests_per_minute": 9})
