"""Reloading the gateway's config (docs/gateway.md#reloading-the-config): ``POST /admin/reload`` (admin key) and
SIGHUP read the YAML file again. A reload that changes only reloadable keys (reload.py) is prepared off the event
loop (the file read, validated, its guardrail policies compiled), recorded in the audit log (one ``config.reload``
record with the file's SHA-256 before and after, and one record per change with its state before and after)
and then swapped in at once: each request reads its tenant and policy when it arrives, so requests in flight
finish under the config they started with. A reload that cannot apply (a file that does not read or validate,
a key that takes a restart) changes nothing, is recorded as refused with its reason, and is answered by one
line: an OpenAI-shaped error from the admin API, a log line for SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import threading
import uuid
from typing import TYPE_CHECKING, Any

from corral.gateway.audit import admin_event
from corral.gateway.config import ConfigFile, GatewayConfig, GatewayConfigError
from corral.gateway.errors import GatewayError
from corral.gateway.guard_path import GatewayGuardrails
from corral.gateway.reload import Change, RestartRequired, config_changes

if TYPE_CHECKING:
    from corral.gateway.app import Gateway

logger = logging.getLogger("corral.gateway")

SIGNAL_ACTOR = "signal:SIGHUP"


class ReloadRefused(GatewayError):
    """A reload that changed nothing: 409 ``restart_required`` or ``no_config_file``, 400 ``invalid_config``, 503
    ``audit_unavailable``. ``digest``: the SHA-256 of the file read, when it could be read."""

    def __init__(self, status: int, message: str, code: str, digest: str | None = None):
        super().__init__(status, message, code=code, error_type="invalid_request_error" if status < 500 else None)
        self.digest = digest


class ConfigReloader:
    """Reloads ``gateway``'s config from ``source`` (None: started from flags, so there is nothing to reload).
    ``sha256``: the file's hash when the gateway started (read from the file when not given)."""

    def __init__(self, gateway: Gateway, source: ConfigFile | None, sha256: str | None = None):
        self.gateway, self.source = gateway, source
        self.sha256 = sha256
        if sha256 is None and source is not None:
            with contextlib.suppress(GatewayConfigError):
                self.sha256 = source.read()[1]
        self._lock = asyncio.Lock()  # one reload at a time: each diffs against the config the last one left
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def reload(self, actor: str) -> dict[str, Any]:
        """Reloads, or raises ReloadRefused (recorded, nothing changed); the answer of ``POST /admin/reload``."""
        async with self._lock:
            reload_id = f"reload-{uuid.uuid4().hex[:12]}"
            try:
                config, digest, changes, guardrails = await self._prepare()
            except ReloadRefused as refusal:
                self.gateway.metrics.config_reloads.labels(status="refused").inc()
                await self._record([self._reload_event(actor, reload_id, "refused", refusal.digest,
                                                       reason=refusal.message)], required=False)
                raise
            events = [self._reload_event(actor, reload_id, "applied", digest, changes=len(changes)),
                      *(admin_event(change.action, actor, change.before, change.after, target=change.target,
                                    reload_id=reload_id) for change in changes)]
            await self._record(events, required=True)
            self.gateway.apply_config(config, guardrails)
            self.sha256 = digest
            self.gateway.metrics.config_reloads.labels(status="applied").inc()
            logger.info("config reloaded from %s by %s: %d change%s", self.source.path, actor, len(changes),
                        "" if len(changes) == 1 else "s")
            return {"object": "config.reload", "id": reload_id, "status": "applied", "sha256": digest,
                    "changes": [{"action": change.action, "target": change.target} for change in changes]}

    async def _prepare(self) -> tuple[GatewayConfig, str, list[Change], GatewayGuardrails | None]:
        if self.source is None:
            raise _refused(409, "this gateway was started from flags, not a config file: there is nothing to "
                                "reload (start it with --config FILE)", "no_config_file")
        try:
            raw = await asyncio.to_thread(self.source.read_bytes)
        except GatewayConfigError as error:
            raise _refused(400, str(error), "invalid_config") from None
        digest = hashlib.sha256(raw).hexdigest()
        name = self.source.path.name
        try:  # off the loop: a policy's validation may read rule files and import a classifier
            config = await asyncio.to_thread(self.source.parse, raw)
        except GatewayConfigError as error:  # its message names the file already
            raise _refused(400, str(error), "invalid_config", digest) from None
        try:
            changes = config_changes(self.gateway.config, config, self.gateway.ledger.limiter is not None)
        except RestartRequired as error:
            raise _refused(409, f"{name}: {error}", "restart_required", digest) from None
        try:
            guardrails = await asyncio.to_thread(GatewayGuardrails.from_config, config, self.gateway.metrics)
        except GatewayConfigError as error:
            raise _refused(400, f"{name}: {error}", "invalid_config", digest) from None
        return config, digest, changes, guardrails

    def _reload_event(self, actor: str, reload_id: str, status: str, digest: str | None, **extra: Any) -> dict:
        target = str(self.source.path) if self.source is not None else None
        return admin_event("config.reload", actor, {"sha256": self.sha256}, {"sha256": digest}, target=target,
                           reload_id=reload_id, status=status, **extra)

    async def _record(self, events: list[dict], required: bool) -> None:
        """Writes the events (the last awaited to disk). ``required``: an applied reload is not made unrecorded,
        so a failed write refuses it (503); a refusal's record is written when it can be."""
        audit = self.gateway.ledger.audit
        if audit is None:
            return
        try:
            for event in events[:-1]:
                await audit.record(event)
            await audit.append_and_wait(events[-1])
        except Exception as error:  # noqa: BLE001 - the audit log is down (AuditError) or stopping
            if required:
                self.gateway.metrics.config_reloads.labels(status="refused").inc()
                raise ReloadRefused(503, f"config reload refused: its audit record could not be written ({error}); "
                                         "nothing was changed", "audit_unavailable") from None
            logger.error("a refused reload's audit record could not be written: %s", error)

    def install_signal_handler(self) -> bool:
        """Reload on SIGHUP (from the running loop, in the main thread: where signals are delivered); whether it
        was installed. Installed also without a config file, where SIGHUP would otherwise end the process."""
        if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
            return False
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGHUP, self.on_signal)
        return True

    def remove_signal_handler(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGHUP)
            self._loop = None

    def on_signal(self) -> asyncio.Task[None]:
        """SIGHUP's handler: a reload, its outcome logged in one line."""
        task = asyncio.ensure_future(self._reload_logged(SIGNAL_ACTOR))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _reload_logged(self, actor: str) -> None:
        try:
            await self.reload(actor)
        except ReloadRefused as refusal:
            logger.error("%s [%s]", refusal.message, refusal.code)

    async def wait_idle(self) -> None:
        """Waits for the reloads SIGHUP started (at shutdown, and in tests)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _refused(status: int, message: str, code: str, digest: str | None = None) -> ReloadRefused:
    return ReloadRefused(status, f"config reload refused: {message}", code, digest)
