"""API keys at rest (docs/gateway.md#tenants-and-api-keys): a key is ``ck-<key_id>-<secret>``, shown once at
creation; the store keeps its id, tenant, label and a salted HMAC of the secret, never the secret itself.

Every change (create, revoke, rotate) also writes an admin event, who and when and the record before and after,
to an outbox table in the same transaction; the gateway copies those events into its audit log (admin_audit.py),
whichever process made the change (the admin API, or ``corral keys`` while the gateway runs or not).

``KeyStore`` is the narrow interface the gateway and ``corral keys`` use; ``SQLiteKeyStore`` (stdlib sqlite3,
WAL mode, one file) is the only one so far, and a Postgres one would implement the same methods.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from corral.errors import CorralError

KEY_PREFIX = "ck"
_KEY_ID_BYTES = 6  # 12 hex characters: an index, not a secret
_SECRET_BYTES = 32
_SALT_BYTES = 16
# Only an admin writing (create, revoke, rotate) ever waits on this; readers never wait on a writer in WAL mode.
_BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT,
    salt BLOB NOT NULL,
    digest BLOB NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL,
    rotated_from TEXT
);
CREATE TABLE IF NOT EXISTS key_events (
    event_id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    target TEXT NOT NULL,
    before TEXT,
    after TEXT,
    audited_at REAL
);
CREATE INDEX IF NOT EXISTS key_events_pending ON key_events (event_id) WHERE audited_at IS NULL;
"""
_RECORD_COLUMNS = "key_id, tenant, name, created_at, revoked_at, rotated_from"


class KeyStoreError(CorralError):
    """The key store cannot be opened, or an operation on it is refused (one line)."""


class UnknownKeyError(KeyStoreError):
    """No key has this id."""


@dataclass(frozen=True)
class KeyRecord:
    """What the store says of a key: everything but its secret. Times are Unix seconds."""

    key_id: str
    tenant: str
    name: str | None
    created_at: float
    revoked_at: float | None = None
    rotated_from: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def as_json(self) -> dict:
        return {"key_id": self.key_id, "tenant": self.tenant, "name": self.name, "created_at": self.created_at,
                "revoked_at": self.revoked_at, "rotated_from": self.rotated_from}


@dataclass(frozen=True)
class KeyEvent:
    """An admin change to the keys, waiting in the outbox for the audit log: ``action`` is key.create, key.revoke
    or key.rotate, ``actor`` who made it, ``before``/``after`` the records (never a secret; None: none)."""

    event_id: int
    time: float
    action: str
    actor: str
    target: str
    before: dict | None
    after: dict | None


class KeyStore(Protocol):
    """API keys by id. Invariant: no method stores or returns a secret, except that ``create`` and ``rotate``
    return the new key's plaintext once; a revocation is seen by every later ``verify``, in any process."""

    def create(self, tenant: str, name: str | None = None, actor: str = "unknown") -> tuple[KeyRecord, str]:
        """A new key for ``tenant``: its record and its plaintext (never obtainable again). ``actor``, here and
        in ``revoke`` and ``rotate``: who makes the change, for its admin event."""
        ...

    def verify(self, key: str) -> KeyRecord | None:
        """The record of the key whose secret ``key`` holds, revoked ones included (``revoked`` set: the caller
        refuses it, and can say why); None for a malformed key, an unknown id or a wrong secret."""
        ...

    def list(self, tenant: str | None = None) -> list[KeyRecord]:
        """Every key (of ``tenant``), oldest first."""
        ...

    def revoke(self, key_id: str, actor: str = "unknown") -> KeyRecord:
        """Revokes a key at once (UnknownKeyError if there is none); revoking it again changes nothing."""
        ...

    def rotate(self, key_id: str, actor: str = "unknown") -> tuple[KeyRecord, str]:
        """Revokes an active key and creates its successor for the same tenant and name, ``rotated_from`` it,
        in one transaction: the new record and plaintext."""
        ...

    def pending_events(self, limit: int = 100) -> list[KeyEvent]:
        """The oldest admin events not yet in the audit log, oldest first."""
        ...

    def mark_audited(self, event_ids: list[int]) -> None:
        """Takes events out of the outbox once the audit log holds them."""
        ...


def split_key(key: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    parts = key.split("-", 2)  # the secret itself may contain '-'
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 2 * _KEY_ID_BYTES or not parts[2]:
        return None
    return parts[1], parts[2]


def _digest(salt: bytes, secret: str) -> bytes:
    # HMAC-SHA256, not a slow KDF: a key's secret has 256 random bits, so there is nothing to brute-force that a
    # password hash would slow down, and a KDF's tens of milliseconds would be paid by every request.
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def _new_secret() -> tuple[str, str, bytes, bytes]:
    key_id, secret = secrets.token_hex(_KEY_ID_BYTES), secrets.token_urlsafe(_SECRET_BYTES)
    salt = secrets.token_bytes(_SALT_BYTES)
    return key_id, f"{KEY_PREFIX}-{key_id}-{secret}", salt, _digest(salt, secret)


class SQLiteKeyStore:
    """Keys in one SQLite file in WAL mode, so that a lookup never waits on a writer (another gateway, or
    ``corral keys`` revoking from another process). One connection per thread that uses it: the gateway's
    event loop reads (``verify``: 20 us measured, called inline; through asyncio.to_thread it took 150 us),
    admin writes run in worker threads (they may wait on another writer's lock)."""

    def __init__(self, path: str | os.PathLike, create: bool = True):
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise KeyStoreError(f"no key store at {self.path}")
            try:  # owner-only from the start: it holds no secrets, but it is who may call the gateway
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            except OSError as error:
                raise KeyStoreError(f"cannot create the key store {self.path}: {error.strerror}") from None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._connect().executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            try:
                connection = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
            except sqlite3.Error as error:
                raise KeyStoreError(f"cannot open the key store {self.path}: {error}") from None
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def create(self, tenant: str, name: str | None = None, actor: str = "unknown") -> tuple[KeyRecord, str]:
        with self._connect() as connection:
            record, key = self._insert(connection, tenant, name, None)
            _event(connection, "key.create", actor, record.key_id, None, record.as_json())
            return record, key

    def verify(self, key: str) -> KeyRecord | None:
        parts = split_key(key)
        if parts is None:
            return None
        key_id, secret = parts
        row = self._connect().execute(f"SELECT salt, digest, {_RECORD_COLUMNS} FROM api_keys WHERE key_id = ?",
                                      (key_id,)).fetchone()
        if row is None or not hmac.compare_digest(_digest(row[0], secret), row[1]):
            return None
        return KeyRecord(*row[2:])

    def list(self, tenant: str | None = None) -> list[KeyRecord]:
        where, args = ("WHERE tenant = ?", (tenant,)) if tenant is not None else ("", ())
        rows = self._connect().execute(f"SELECT {_RECORD_COLUMNS} FROM api_keys {where} ORDER BY created_at, rowid",
                                       args).fetchall()
        return [KeyRecord(*row) for row in rows]

    def revoke(self, key_id: str, actor: str = "unknown") -> KeyRecord:
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")  # the event's before is the state the update changed
            before = self._record(connection, key_id)
            connection.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                               (time.time(), key_id))
            after = self._record(connection, key_id)
            _event(connection, "key.revoke", actor, key_id, before.as_json(), after.as_json())
            return after

    def rotate(self, key_id: str, actor: str = "unknown") -> tuple[KeyRecord, str]:
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")  # no revocation may slip between the check and the update
            old = self._record(connection, key_id)
            if old.revoked:
                raise KeyStoreError(f"key {key_id} is revoked: create a new key instead of rotating it")
            connection.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ?", (time.time(), key_id))
            record, key = self._insert(connection, old.tenant, old.name, key_id)
            _event(connection, "key.rotate", actor, key_id, old.as_json(),
                   {"revoked": self._record(connection, key_id).as_json(), "successor": record.as_json()})
            return record, key

    def pending_events(self, limit: int = 100) -> list[KeyEvent]:
        rows = self._connect().execute("SELECT event_id, time, action, actor, target, before, after FROM key_events "
                                       "WHERE audited_at IS NULL ORDER BY event_id LIMIT ?", (limit,)).fetchall()
        return [KeyEvent(*row[:5], _loads(row[5]), _loads(row[6])) for row in rows]

    def mark_audited(self, event_ids: list[int]) -> None:
        with self._connect() as connection:
            connection.executemany("UPDATE key_events SET audited_at = ? WHERE event_id = ?",
                                   [(time.time(), event_id) for event_id in event_ids])

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()

    @staticmethod
    def _insert(connection: sqlite3.Connection, tenant: str, name: str | None,
                rotated_from: str | None) -> tuple[KeyRecord, str]:
        key_id, key, salt, digest = _new_secret()
        record = KeyRecord(key_id, tenant, name, time.time(), None, rotated_from)
        connection.execute("INSERT INTO api_keys (key_id, tenant, name, salt, digest, created_at, revoked_at, "
                           "rotated_from) VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                           (key_id, tenant, name, salt, digest, record.created_at, rotated_from))
        return record, key

    @staticmethod
    def _record(connection: sqlite3.Connection, key_id: str) -> KeyRecord:
        row = connection.execute(f"SELECT {_RECORD_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        if row is None:
            raise UnknownKeyError(f"no key with id {key_id!r}")
        return KeyRecord(*row)


def _event(connection: sqlite3.Connection, action: str, actor: str, target: str, before: dict | None,
           after: dict | None) -> None:
    connection.execute("INSERT INTO key_events (time, action, actor, target, before, after) VALUES (?, ?, ?, ?, ?, ?)",
                       (time.time(), action, actor, target, _dumps(before), _dumps(after)))


def _dumps(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _loads(value: str | None) -> dict | None:
    return None if value is None else json.loads(value)
