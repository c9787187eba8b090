"""The gateway's audit log: one HMAC-chained record per request and per admin action, in JSONL files
(docs/audit.md). Records are sealed and written by one worker thread, off the event loop, in batches; many
requests waiting for durability share one write and one fsync.

Two ways to record: ``record`` enqueues and returns (the record may be lost if the process dies before the
writer reaches it); ``append_and_wait`` returns once the record's line is written, and fsynced when
``fsync: always``, which is what a request must await before its response's last byte so that no completed
response lacks its record. The chain itself (sealing, files, verify) is audit_chain.py; the writer (restart,
rotation, retention) audit_writer.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from corral.gateway.audit_chain import CHAIN_FIELDS, utc_iso
from corral.gateway.audit_writer import AuditError, ChainWriter

logger = logging.getLogger("corral.gateway.audit")

MIN_KEY_BYTES = 16
_STOP = object()


class AuditConfig(BaseModel):
    """``audit:`` in the gateway's YAML. The HMAC key is never in the file: ``hmac_key_env`` names the
    environment variable that holds it (at least 16 bytes). ``fsync``: "always" (each batch, before any
    ``append_and_wait`` of it returns: survives power loss), "interval" (at most every ``interval_s``; a killed
    process loses nothing written, a power loss up to ``interval_s``), "never" (the OS decides). Files rotate
    at ``rotate_bytes`` or ``rotate_s``, whichever comes first; retention keeps ``max_files`` files and/or
    removes those older than ``max_age_days``. ``record_texts``: the default of the tenants' policy of putting
    prompt and output texts in request records (their SHA-256 is always there)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    directory: Path = Path("audit")
    hmac_key_env: str = "CORRAL_AUDIT_KEY"
    fsync: Literal["always", "interval", "never"] = "always"
    interval_s: float = Field(default=1.0, gt=0)
    rotate_bytes: int | None = Field(default=256 * 1024 * 1024, ge=4096)
    rotate_s: float | None = Field(default=86400.0, gt=0)
    max_files: int | None = Field(default=None, ge=1)
    max_age_days: float | None = Field(default=None, gt=0)
    record_texts: bool = False
    queue_size: int = Field(default=65536, ge=1, description="records waiting for the writer; record() waits beyond")
    max_batch: int = Field(default=1024, ge=1, description="records per write (and fsync)")

    @model_validator(mode="after")
    def _key_env_named(self) -> AuditConfig:
        if not self.hmac_key_env:
            raise ValueError("hmac_key_env must name the environment variable holding the audit key")
        return self


def audit_key(config: AuditConfig, environ: Mapping[str, str]) -> bytes:
    """The HMAC key from ``environ[config.hmac_key_env]`` (AuditError, one line naming the variable, if unset
    or short). The caller passes ``os.environ``: environment variables are read in cli/ only."""
    return key_from_env(config.hmac_key_env, environ)


def key_from_env(name: str, environ: Mapping[str, str]) -> bytes:
    value = environ.get(name)
    if not value:
        raise AuditError(f"audit: environment variable {name} (the audit HMAC key) is not set")
    key = value.encode()
    if len(key) < MIN_KEY_BYTES:
        raise AuditError(f"audit: the key in {name} is {len(key)} bytes; use at least {MIN_KEY_BYTES}")
    return key


def text_sha256(value: str | bytes | list | dict | None) -> str | None:
    """SHA-256 (hex) of a text's UTF-8 bytes, or of the compact sorted JSON of messages; None for None."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode()
    elif not isinstance(value, bytes):
        value = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(value).hexdigest()


prompt_sha256 = text_sha256  # the prompt: a completion's text, or a chat's messages list
output_sha256 = text_sha256


def request_event(*, request_id: str, tenant: str | None, key_id: str | None, model_group: str | None,
                  backend: str | None, route: str | None, status: int, latency_ms: float,
                  prompt_tokens: int | None = None, completion_tokens: int | None = None,
                  guardrails: Mapping[str, Any] | None = None, prompt: Any = None, output: str | None = None,
                  record_texts: bool = False, complete: bool = True, **extra: Any) -> dict[str, Any]:
    """The record of one request. ``key_id``: the key's id or hash as the key store names it, never the key.
    ``route``: the routing decision (e.g. "least_loaded", "fallback:small", "cache hit"). ``complete``: False
    when the response was cut short (client gone, upstream error mid-stream). The texts go in only with
    ``record_texts`` (the tenant's policy); their hashes always."""
    event: dict[str, Any] = {
        "type": "request", "request_id": request_id, "tenant": tenant, "key_id": key_id,
        "model_group": model_group, "backend": backend, "route": route, "status": status,
        "latency_ms": round(latency_ms, 3), "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "guardrails": dict(guardrails or {}), "prompt_sha256": prompt_sha256(prompt),
        "output_sha256": output_sha256(output), "complete": complete, **extra,
    }
    if record_texts:
        event["prompt"] = prompt
        event["output"] = output
    return event


def admin_event(action: str, actor: str, before: Any, after: Any, target: str | None = None,
                **extra: Any) -> dict[str, Any]:
    """The record of one admin action ("key.create", "key.revoke", "key.rotate"; "config.reload" and the changes a
    reload makes: "tenant.create", "tenant.delete", "tenant.change", "limits.change", "policy.change",
    "config.change"): who did it, to what, and the state before and after (None where there was none). Pass key
    ids, never key secrets."""
    return {"type": "admin", "action": action, "actor": actor, "target": target, "before": before,
            "after": after, **extra}


class AuditLog:
    """The audit log of one gateway process. ``await start()`` before recording, ``await stop()`` at shutdown
    (drains the queue, fsyncs). After a write error the log is down: every later call raises AuditError, so
    a gateway that requires audit fails its requests rather than serve them unrecorded."""

    def __init__(self, config: AuditConfig, key: bytes, clock: Callable[[], float] = time.time):
        self.config = config
        self._clock = clock
        self._writer = ChainWriter(config.directory, key, config.fsync, config.interval_s, config.rotate_bytes,
                                   config.rotate_s, config.max_files, config.max_age_days, clock)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corral-audit")
        self._queue: asyncio.Queue[Any] = asyncio.Queue(config.queue_size)
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    @classmethod
    def from_config(cls, config: AuditConfig, environ: Mapping[str, str]) -> AuditLog:
        return cls(config, audit_key(config, environ))

    @property
    def last_seq(self) -> int:
        """The seq of the last record written (0 before the first)."""
        return self._writer.next_seq - 1

    @property
    def error(self) -> str | None:
        """Why the log is down (a write failed), for the gateway's status and metrics; None while it is up."""
        return None if self._error is None else str(self._error)

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._writer.open)
        self._task = asyncio.create_task(self._run(), name="corral-audit-writer")

    async def record(self, event: dict[str, Any]) -> None:
        """Enqueue ``event`` and return (waits only while the queue is full)."""
        await self._queue.put((self._stamp(event), None))

    async def append_and_wait(self, event: dict[str, Any]) -> int:
        """Enqueue ``event`` and return its seq once its line is written (and fsynced under ``fsync: always``)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self._queue.put((self._stamp(event), future))
        return await future

    async def stop(self) -> None:
        if self._task is not None:
            await self._queue.put(_STOP)
            await self._task
            self._task = None
        await asyncio.get_running_loop().run_in_executor(self._executor, self._writer.close)
        self._executor.shutdown(wait=True)

    def _stamp(self, event: dict[str, Any]) -> dict[str, Any]:
        if self._error is not None:
            raise AuditError(f"audit log is down: {self._error}")
        if self._task is None:
            raise AuditError("audit log not started")
        clash = CHAIN_FIELDS.intersection(event)
        if clash:
            raise ValueError(f"audit event may not set {sorted(clash)}: the chain sets them")
        # The time the event happened, not the time the writer got to it.
        return event if "time" in event else {**event, "time": utc_iso(self._clock())}

    async def _run(self) -> None:
        idle_s = self.config.interval_s if self.config.fsync == "interval" else None
        stopping = False
        while not stopping:
            try:
                item = await asyncio.wait_for(self._queue.get(), idle_s)
            except TimeoutError:  # idle under "interval": fsync what the last batch left unsynced
                with contextlib.suppress(AuditError):
                    await self._in_thread(self._writer.sync)
                continue
            batch = []
            while True:
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
                if len(batch) >= self.config.max_batch or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            if not batch:
                continue
            futures = [future for _, future in batch]
            try:
                seqs = await self._in_thread(self._writer.append, [event for event, _ in batch])
            except AuditError as exc:
                for future in futures:
                    if future is not None and not future.done():
                        future.set_exception(exc)
                continue
            for future, seq in zip(futures, seqs):
                if future is not None and not future.done():
                    future.set_result(seq)

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._error is not None:
            raise AuditError(f"audit log is down: {self._error}")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except Exception as exc:  # disk full, I/O error: the chain's state is unknown from here on
            logger.error("audit log write failed; the log is down until restart: %s", exc)
            self._error = exc
            raise AuditError(f"audit log write failed: {exc}") from exc
