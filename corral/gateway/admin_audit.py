"""Admin actions into the audit log: the key store writes an event for every key created, revoked or rotated, in
the same transaction as the change (key_store.py's outbox); the gateway copies them into its audit chain at start,
after each admin API call (before answering it), and every ``POLL_S`` for the changes ``corral keys`` makes from
another process. An event is marked copied only once its record is written, so a crash in between copies it again
at the next start (the record's ``event_id`` tells such a repeat apart): no change goes unrecorded."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from corral.gateway.audit import AuditLog, admin_event
from corral.gateway.audit_chain import utc_iso
from corral.gateway.key_store import KeyStore

logger = logging.getLogger("corral.gateway.audit")

POLL_S = 1.0
_BATCH = 256


class KeyEventAuditor:
    """Copies ``store``'s pending admin events into ``audit``, in the order they happened."""

    def __init__(self, store: KeyStore, audit: AuditLog, poll_s: float = POLL_S):
        self.store, self.audit, self.poll_s = store, audit, poll_s
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.copy()
        self._task = asyncio.create_task(self._poll(), name="corral-key-events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.copy()

    async def copy(self) -> int:
        """Writes every pending event to the audit log (waiting for the last to be written), then marks them;
        the number copied."""
        copied = 0
        async with self._lock:  # one copier at a time: no event written twice by this gateway
            while True:
                events = await asyncio.to_thread(self.store.pending_events, _BATCH)
                if not events:
                    return copied
                records = [admin_event(event.action, event.actor, event.before, event.after, target=event.target,
                                       event_id=event.event_id, time=utc_iso(event.time)) for event in events]
                for record in records[:-1]:
                    await self.audit.record(record)  # the writer keeps the queue's order: the last one waits
                await self.audit.append_and_wait(records[-1])
                await asyncio.to_thread(self.store.mark_audited, [event.event_id for event in events])
                copied += len(events)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.copy()
            except Exception as error:  # noqa: BLE001 - retried at the next poll; the events stay pending
                logger.warning("copying admin events to the audit log failed: %s", error)
