"""The admin API over the key store, behind the admin key (docs/gateway.md#tenants-and-api-keys):
``POST /admin/keys`` {tenant, name?}, ``GET /admin/keys[?tenant=]``, ``DELETE /admin/keys/{key_id}``,
``POST /admin/keys/{key_id}/rotate``; ``POST /admin/reload`` reloads the config file (reloader.py). A new key's
plaintext is in the answer that creates it and nowhere else. The store's writes may wait on another writer's lock
(``corral keys`` in another process), so they run in a worker thread, never on the event loop. Each change is an
admin event of the store (who: ``admin_api:<client address>``), copied into the audit log before the answer
(admin_audit.py) when audit is on."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from corral.gateway.auth import Authenticator
from corral.gateway.config_errors import describe
from corral.gateway.errors import GatewayError
from corral.gateway.key_store import KeyRecord, KeyStoreError, UnknownKeyError

logger = logging.getLogger("corral.gateway")


class _NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str
    name: str | None = None


def add_admin_routes(app: FastAPI, auth: Authenticator | None,
                     audit_changes: Callable[[], Awaitable[object]] | None = None,
                     reload: Callable[[str], Awaitable[dict]] | None = None) -> None:
    """The admin routes; with ``auth`` None (auth disabled) they answer 403. ``audit_changes``: copies the store's
    admin events into the audit log (None: audit is off), awaited after each change. ``reload(actor)``: reloads
    the config (recorded before it returns or raises), the answer of ``POST /admin/reload``."""

    async def audited() -> None:
        if audit_changes is None:
            return
        try:
            await audit_changes()
        except Exception as error:  # noqa: BLE001 - the change is made; its event stays pending, copied later
            logger.error("admin change made, but its audit record is not written yet: %s", error)

    def admitted(http: Request) -> Authenticator:
        if auth is None:
            raise GatewayError(403, "auth is not enabled in this gateway's config (auth.enabled)",
                               code="auth_disabled")
        auth.check_admin(http.headers)
        return auth

    @app.post("/admin/keys", include_in_schema=False)
    async def create_key(http: Request) -> JSONResponse:
        checked = admitted(http)
        request = _parse(await http.body())
        if request.tenant not in checked.config.tenants:
            raise GatewayError(400, f"no tenant named {request.tenant!r} in the gateway's config "
                                    f"(auth.tenants: {', '.join(map(repr, checked.config.tenants))})",
                               param="tenant", code="unknown_tenant")
        record, key = await _store_call(checked.store.create, request.tenant, request.name, _actor(http))
        await audited()
        return JSONResponse(_with_key(record, key), status_code=201)

    @app.get("/admin/keys", include_in_schema=False)
    async def list_keys(http: Request) -> dict:
        checked = admitted(http)
        records = await _store_call(checked.store.list, http.query_params.get("tenant"))
        return {"object": "list", "data": [record.as_json() for record in records]}

    @app.delete("/admin/keys/{key_id}", include_in_schema=False)
    async def revoke_key(http: Request, key_id: str) -> dict:
        checked = admitted(http)
        record = await _store_call(checked.store.revoke, key_id, _actor(http))
        await audited()
        return record.as_json()

    @app.post("/admin/keys/{key_id}/rotate", include_in_schema=False)
    async def rotate_key(http: Request, key_id: str) -> JSONResponse:
        checked = admitted(http)
        record, key = await _store_call(checked.store.rotate, key_id, _actor(http))
        await audited()
        return JSONResponse(_with_key(record, key), status_code=201)

    @app.post("/admin/reload", include_in_schema=False)
    async def reload_config(http: Request) -> dict:
        admitted(http)
        if reload is None:
            raise GatewayError(404, "this gateway cannot reload its config", code="not_found")
        return await reload(_actor(http))


def _actor(http: Request) -> str:
    """Who makes an admin change: the admin API has one key, so the client's address is what tells callers apart."""
    return f"admin_api:{http.client.host if http.client else 'unknown'}"


def _parse(raw: bytes) -> _NewKey:
    try:
        return _NewKey.model_validate(json.loads(raw or b"{}"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise GatewayError(400, f"the request body is not valid JSON: {error}", code="invalid_json") from None
    except ValidationError as error:
        raise GatewayError(400, describe(error)) from None


async def _store_call(method, *args):
    try:
        return await asyncio.to_thread(method, *args)
    except UnknownKeyError as error:
        raise GatewayError(404, str(error), code="key_not_found") from None
    except KeyStoreError as error:
        raise GatewayError(400, str(error), code="key_store_error") from None


def _with_key(record: KeyRecord, key: str) -> dict:
    return {**record.as_json(), "key": key}
