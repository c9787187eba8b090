"""Tenants and API keys through a real gateway in front of a real upstream process (bench/paced_upstream.py: an
engine-less OpenAI server that answers " tok" max_tokens times): the official openai client with a key made by
the admin API; missing, malformed, unknown, revoked (by `corral keys` in another process, or the admin API) and
rotated keys refused at once with OpenAI's 401; a tenant kept to its model groups (403, and /v1/models hides the
others); a local_only tenant kept to on-premises backends, its fallbacks included; the tenant's max_tokens cap;
the response cache keyed by tenant; the admin API and /gateway/status behind the admin key; auth off: no key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from corral.gateway.supervisor import free_port

from .conftest import start_gateway, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "test-admin-key-0123456789"


@pytest.fixture(scope="module")
def upstream() -> str:
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "bench" / "paced_upstream.py"), "--port", str(port),
                                "--ttft-ms", "0", "--tpot-ms", "0"], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process)
    yield url
    process.terminate()
    process.wait(timeout=10)


def config(upstream: str, store: Path) -> dict:
    fast = {"health": {"interval_s": 0.2}}
    return {"groups": {
        "open": {"backends": [{"url": upstream}], **fast},
        "secret": {"backends": [{"url": upstream}], **fast},
        "onprem": {"backends": [{"url": upstream, "on_premises": True}], **fast},
        "remote": {"backends": [{"url": upstream}], "fallbacks": ["onprem"], **fast},
    }, "cache": {"enabled": True}, "auth": {"enabled": True, "store": str(store), "tenants": {
        "acme": {"groups": ["open", "onprem"], "max_tokens_cap": 5},
        "beta": {},
        "homebody": {"local_only": True},
    }}}


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    store = tmp_path_factory.mktemp("auth") / "keys.sqlite"
    gateway = start_gateway(config(upstream, store), admin_key=ADMIN)
    for group in ("open", "secret", "onprem", "remote"):
        gateway.wait_available(group, 1)
    gateway.store_path = store
    yield gateway
    gateway.stop()


def admin(gw, method: str, path: str, key: str | None = ADMIN, **kwargs) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.request(method, gw.base_url + path, headers=headers, timeout=10, **kwargs)


def new_key(gw, tenant: str, name: str | None = None) -> dict:
    response = admin(gw, "POST", "/admin/keys", json={"tenant": tenant, "name": name})
    assert response.status_code == 201, response.text
    return response.json()


def complete(gw, key: str | None, model: str = "open", **body) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(gw.base_url + "/v1/completions", headers=headers, timeout=10,
                      json={"model": model, "prompt": "hi", "max_tokens": 2, **body})


def client(gw, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0, timeout=30)


def assert_refused(response: httpx.Response, status: int, code: str, says: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and says in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_the_openai_client_with_a_created_key_gets_its_answer_within_the_tenant_cap(gw):
    created = new_key(gw, "acme", "ci")
    assert created["key"].startswith(f"ck-{created['key_id']}-") and created["tenant"] == "acme"
    c = client(gw, created["key"])
    assert c.completions.create(model="open", prompt="hi", max_tokens=50).choices[0].text == " tok" * 5
    assert c.completions.create(model="open", prompt="hi").choices[0].text == " tok" * 5  # none sent: the cap
    assert c.completions.create(model="open", prompt="hi", max_tokens=3).choices[0].text == " tok" * 3
    chunks = c.completions.create(model="open", prompt="hi", max_tokens=2, stream=True)
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == " tok" * 2


@pytest.mark.parametrize("authorization, reason, says", [
    (None, "missing_key", "no API key"),
    ("Basic abc", "missing_key", "no API key"),
    ("Bearer sk-abc", "malformed_key", "malformed"),
    ("Bearer ck-000000000000-nope", "unknown_key", "not valid"),
])
def test_a_missing_malformed_or_unknown_key_is_a_401(gw, authorization, reason, says):
    before = gw.metric("corral_gateway_auth_failures_total", reason=reason)
    headers = {"authorization": authorization} if authorization else {}
    for path in ("/v1/completions", "/v1/chat/completions"):
        response = httpx.post(gw.base_url + path, headers=headers, json={"model": "open"}, timeout=10)
        assert_refused(response, 401, "invalid_api_key", says)
    assert_refused(httpx.get(gw.base_url + "/v1/models", headers=headers, timeout=10), 401, "invalid_api_key", says)
    assert gw.metric("corral_gateway_auth_failures_total", reason=reason) == before + 3
    with pytest.raises(openai.AuthenticationError):
        client(gw, "ck-000000000000-nope").completions.create(model="open", prompt="hi", max_tokens=1)


def test_a_key_revoked_by_the_cli_in_another_process_is_refused_at_once(gw):
    created = new_key(gw, "acme")
    assert complete(gw, created["key"]).status_code == 200
    result = subprocess.run([sys.executable, "-m", "corral.cli.main", "keys", "revoke", "--store",
                             str(gw.store_path), created["key_id"]], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert_refused(complete(gw, created["key"]), 401, "invalid_api_key", f"{created['key_id']} has been revoked")


def test_a_key_revoked_by_the_admin_api_is_refused_at_once(gw):
    created = new_key(gw, "beta")
    assert complete(gw, created["key"]).status_code == 200
    revoked = admin(gw, "DELETE", f"/admin/keys/{created['key_id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert_refused(complete(gw, created["key"]), 401, "invalid_api_key", "has been revoked")
    assert admin(gw, "DELETE", "/admin/keys/ffffffffffff").json()["error"]["code"] == "key_not_found"


def test_a_rotated_keys_old_secret_fails_and_the_new_one_works(gw):
    old = new_key(gw, "beta", "svc")
    rotated = admin(gw, "POST", f"/admin/keys/{old['key_id']}/rotate")
    assert rotated.status_code == 201
    new = rotated.json()
    assert new["rotated_from"] == old["key_id"] and new["tenant"] == "beta" and new["name"] == "svc"
    assert_refused(complete(gw, old["key"]), 401, "invalid_api_key", "has been revoked")
    assert complete(gw, new["key"]).status_code == 200
    listed = admin(gw, "GET", "/admin/keys", params={"tenant": "beta"}).json()["data"]
    assert {k["key_id"] for k in listed} >= {old["key_id"], new["key_id"]} and all("key" not in k for k in listed)
    assert old["key"] not in admin(gw, "GET", "/admin/keys").text


def test_a_tenant_cannot_reach_a_group_it_is_not_allowed_and_does_not_see_it(gw):
    key = new_key(gw, "acme")["key"]
    assert_refused(complete(gw, key, "secret"), 403, "model_not_allowed", "tenant 'acme' may not use model 'secret'")
    with pytest.raises(openai.PermissionDeniedError):
        client(gw, key).completions.create(model="secret", prompt="hi", max_tokens=1)
    assert [m.id for m in client(gw, key).models.list()] == ["open", "onprem"]
    unknown = complete(gw, key, "nope")
    assert unknown.status_code == 404 and "secret" not in unknown.json()["error"]["message"]
    everything = new_key(gw, "beta")["key"]
    assert [m.id for m in client(gw, everything).models.list()] == ["open", "secret", "onprem", "remote"]
    assert complete(gw, everything, "secret").status_code == 200


def test_a_local_only_tenant_reaches_on_premises_backends_only(gw):
    key = new_key(gw, "homebody")["key"]
    assert_refused(complete(gw, key, "open"), 403, "local_only", "no backend of model 'open'")
    assert [m.id for m in client(gw, key).models.list()] == ["onprem", "remote"]
    assert complete(gw, key, "onprem").status_code == 200
    # A foreign group whose fallback is on premises: the fallback answers.
    spilled = complete(gw, key, "remote")
    assert spilled.status_code == 200 and spilled.headers["x-corral-fallback"] == "remote->onprem"
    other = new_key(gw, "beta")["key"]  # any other tenant: the group's own foreign backend
    served = complete(gw, other, "remote")
    assert served.status_code == 200 and "x-corral-fallback" not in served.headers


def test_the_response_cache_is_kept_per_tenant(gw):
    a, b = new_key(gw, "beta")["key"], new_key(gw, "beta")["key"]
    other = new_key(gw, "acme")["key"]
    body = {"prompt": "cache me", "temperature": 0}
    assert complete(gw, a, **body).headers["x-corral-cache"] == "miss"
    assert complete(gw, b, **body).headers["x-corral-cache"] == "hit"  # same tenant, another key
    assert complete(gw, other, **body).headers["x-corral-cache"] == "miss"


@pytest.mark.parametrize("key", [None, "wrong-admin-key", "ck-000000000000-x"])
def test_the_admin_api_and_status_need_the_admin_key(gw, key):
    for method, path in (("POST", "/admin/keys"), ("GET", "/admin/keys"), ("DELETE", "/admin/keys/abcdefabcdef"),
                         ("POST", "/admin/keys/abcdefabcdef/rotate"), ("GET", "/gateway/status")):
        response = admin(gw, method, path, key=key, json={"tenant": "acme"} if method == "POST" else None)
        assert_refused(response, 401, "invalid_api_key", "needs the admin key")
    tenant_key = new_key(gw, "beta")["key"]  # a tenant's key is no admin key
    assert_refused(admin(gw, "GET", "/admin/keys", key=tenant_key), 401, "invalid_api_key", "admin key")
    assert admin(gw, "GET", "/gateway/status").status_code == 200
    assert httpx.get(gw.base_url + "/health", timeout=5).status_code == 200  # open, as /metrics
    assert httpx.get(gw.base_url + "/metrics", timeout=5).status_code == 200


def test_the_admin_api_refuses_an_unknown_tenant_and_a_bad_body(gw):
    response = admin(gw, "POST", "/admin/keys", json={"tenant": "nobody"})
    assert_refused(response, 400, "unknown_tenant", "no tenant named 'nobody'")
    response = admin(gw, "POST", "/admin/keys", json={"tenant": "acme", "colour": "red"})
    assert response.status_code == 400 and response.json()["error"]["message"] == "colour: unknown key"


def test_without_an_admin_key_the_admin_api_is_off(upstream, tmp_path, run_gateway):
    gateway = run_gateway(config(upstream, tmp_path / "keys.sqlite"))
    for key in (None, ADMIN):
        response = admin(gateway, "GET", "/admin/keys", key=key)
        assert response.status_code == 403 and "set CORRAL_GATEWAY_ADMIN_KEY" in response.json()["error"]["message"]


def test_with_auth_off_no_key_is_needed(upstream, run_gateway):
    gateway = run_gateway({"groups": {"open": {"backends": [{"url": upstream}], "health": {"interval_s": 0.2}}}})
    gateway.wait_available("open", 1)
    assert complete(gateway, None).status_code == 200
    assert complete(gateway, "anything at all").status_code == 200
    assert [m["id"] for m in httpx.get(gateway.base_url + "/v1/models", timeout=5).json()["data"]] == ["open"]
    assert admin(gateway, "GET", "/admin/keys").json()["error"]["code"] == "auth_disabled"


def test_corral_gateway_reads_the_admin_key_from_its_environment(upstream, tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(f"groups: {{open: {{backends: [{{url: '{upstream}'}}]}}}}\n"
                    "auth: {enabled: true, store: keys.sqlite, admin_key_env: MY_ADMIN_KEY, tenants: {acme: {}}}\n")
    port = free_port()
    command = [sys.executable, "-m", "corral.cli.main", "gateway", "--config", str(path), "--port", str(port),
               "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, "MY_ADMIN_KEY": ADMIN})
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url, process)
        created = httpx.post(base_url + "/admin/keys", json={"tenant": "acme"}, timeout=10,
                             headers={"authorization": f"Bearer {ADMIN}"})
        assert created.status_code == 201, created.text
        models = httpx.get(base_url + "/v1/models", headers={"authorization": f"Bearer {created.json()['key']}"})
        assert [m["id"] for m in models.json()["data"]] == ["open"]
        assert (tmp_path / "keys.sqlite").exists()  # relative to the working directory
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_an_unusable_store_is_a_one_line_error_naming_the_key(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text("groups: {open: {backends: [{url: 'http://127.0.0.1:9'}]}}\n"
                    f"auth: {{enabled: true, store: {tmp_path / 'no' / 'k.sqlite'}, tenants: {{acme: {{}}}}}}\n")
    result = subprocess.run([sys.executable, "-m", "corral.cli.main", "gateway", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "corral gateway: error: auth.store: cannot create the key store" in result.stderr
