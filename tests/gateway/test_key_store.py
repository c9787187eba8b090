"""The SQLite key store: a key is shown once and stored only as a salted HMAC (the file is read back here, every
column and every byte of it and its WAL); a revoked key verifies as revoked, a rotated key's old secret as
revoked and its successor as active; malformed keys, unknown ids and wrong secrets verify as nothing; every change
leaves an admin event in the outbox, in the same transaction, until it is marked audited; and `corral keys` does
the same from the command line, with one-line errors."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from corral.gateway.key_store import KeyStoreError, SQLiteKeyStore, UnknownKeyError, split_key


@pytest.fixture
def store(tmp_path) -> SQLiteKeyStore:
    store = SQLiteKeyStore(tmp_path / "keys.sqlite")
    yield store
    store.close()


def test_a_new_key_verifies_and_has_the_documented_shape(store):
    record, key = store.create("acme", "ci")
    key_id, secret = split_key(key)
    assert key.startswith(f"ck-{record.key_id}-") and key_id == record.key_id and len(key_id) == 12
    assert len(secret) >= 43  # 32 random bytes, base64url
    assert store.verify(key) == record
    assert (record.tenant, record.name, record.revoked, record.rotated_from) == ("acme", "ci", False, None)
    other, other_key = store.create("acme")
    assert other.key_id != record.key_id and split_key(other_key)[1] != secret


def test_only_salted_hashes_are_stored(tmp_path, store):
    keys = [store.create("acme", "ci")[1], store.create("beta")[1]]
    store.rotate(split_key(keys[0])[0])
    secrets = [split_key(key)[1] for key in keys]
    connection = sqlite3.connect(tmp_path / "keys.sqlite")
    rows = connection.execute("SELECT * FROM api_keys").fetchall()
    columns = [d[0] for d in connection.execute("SELECT * FROM api_keys").description]
    connection.close()
    assert len(rows) == 3 and "secret" not in " ".join(columns)
    for row in rows:
        for value in row:
            for secret in secrets:
                text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                assert secret not in text and secret.encode() not in (value if isinstance(value, bytes) else b"")
    salts = [row[columns.index("salt")] for row in rows]
    assert len(set(salts)) == 3 and all(len(salt) == 16 for salt in salts)
    files = list(tmp_path.iterdir())  # the database, its WAL and shared-memory index while open
    assert any(f.name.endswith("-wal") for f in files)
    for path in files:
        data = path.read_bytes()
        for key, secret in zip(keys, secrets):
            assert secret.encode() not in data and key.encode() not in data, path.name


def test_the_store_is_in_wal_mode_and_owner_only(tmp_path, store):
    store.create("acme")
    connection = sqlite3.connect(tmp_path / "keys.sqlite")
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()
    assert (tmp_path / "keys.sqlite").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("mangle", [
    lambda key: key[:-1] + ("A" if key[-1] != "A" else "B"),  # wrong secret
    lambda key: "ck-000000000000-" + split_key(key)[1],  # unknown id
    lambda key: key.replace("ck-", "sk-", 1),
    lambda key: "ck-" + split_key(key)[0],  # no secret
    lambda key: "",
])
def test_a_wrong_or_malformed_key_verifies_as_nothing(store, mangle):
    _, key = store.create("acme")
    assert store.verify(mangle(key)) is None


def test_a_revoked_key_verifies_as_revoked_at_once_and_revoking_again_changes_nothing(store):
    record, key = store.create("acme")
    revoked = store.revoke(record.key_id)
    assert revoked.revoked and store.verify(key).revoked
    assert store.revoke(record.key_id).revoked_at == revoked.revoked_at
    with pytest.raises(UnknownKeyError, match="no key with id 'ffffffffffff'"):
        store.revoke("ffffffffffff")


def test_a_rotated_key_is_revoked_and_its_successor_works(store):
    old, old_key = store.create("acme", "ci")
    new, new_key = store.rotate(old.key_id)
    assert store.verify(old_key).revoked
    assert store.verify(new_key) == new and not new.revoked
    assert (new.tenant, new.name, new.rotated_from) == ("acme", "ci", old.key_id)
    with pytest.raises(KeyStoreError, match=f"key {old.key_id} is revoked"):
        store.rotate(old.key_id)


def test_each_change_leaves_an_admin_event_until_it_is_marked_audited(tmp_path, store):
    record, key = store.create("acme", "ci", actor="admin_api:10.0.0.5")
    successor, successor_key = store.rotate(record.key_id, actor="cli:ops@host")
    store.revoke(successor.key_id, actor="cli:ops@host")
    with pytest.raises(UnknownKeyError):
        store.revoke("ffffffffffff", actor="cli:ops@host")  # refused: no event
    with pytest.raises(KeyStoreError):
        store.rotate(record.key_id, actor="cli:ops@host")  # already revoked: no event
    events = store.pending_events()
    assert [(e.action, e.actor, e.target) for e in events] == [
        ("key.create", "admin_api:10.0.0.5", record.key_id), ("key.rotate", "cli:ops@host", record.key_id),
        ("key.revoke", "cli:ops@host", successor.key_id)]
    assert events[0].before is None and events[0].after == record.as_json()
    assert events[1].before == record.as_json() and events[1].after["successor"] == successor.as_json()
    assert events[1].after["revoked"]["revoked_at"] is not None
    assert events[2].before["revoked_at"] is None and events[2].after["revoked_at"] is not None
    text = (tmp_path / "keys.sqlite").read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("keys.sqlite-*"))
    assert split_key(key)[1].encode() not in text and split_key(successor_key)[1].encode() not in text
    store.mark_audited([events[0].event_id, events[1].event_id])
    assert [e.event_id for e in store.pending_events()] == [events[2].event_id]
    reopened = SQLiteKeyStore(tmp_path / "keys.sqlite")  # the outbox outlives the process that wrote it
    assert [e.event_id for e in reopened.pending_events()] == [events[2].event_id]
    reopened.close()


def test_list_never_shows_secrets_and_filters_by_tenant(store):
    a, _ = store.create("acme")
    b, _ = store.create("beta")
    assert [r.key_id for r in store.list()] == [a.key_id, b.key_id]
    assert store.list("beta") == [b]
    assert set(a.as_json()) == {"key_id", "tenant", "name", "created_at", "revoked_at", "rotated_from"}


def test_a_missing_store_is_created_only_when_asked(tmp_path):
    with pytest.raises(KeyStoreError, match="no key store at"):
        SQLiteKeyStore(tmp_path / "none.sqlite", create=False)
    with pytest.raises(KeyStoreError, match="cannot create the key store"):
        SQLiteKeyStore(tmp_path / "no" / "dir.sqlite")


def corral_keys(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corral.cli.main", "keys", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_the_cli_creates_lists_rotates_and_revokes(tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text("groups: {g: {backends: [{url: 'http://127.0.0.1:9'}]}}\n"
                      f"auth: {{enabled: true, store: {tmp_path / 'k.sqlite'}, tenants: {{acme: {{}}}}}}\n")
    created = corral_keys("create", "--config", str(config), "--tenant", "acme", "--name", "ci", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert split_key(key) is not None and "shown this once only" in created.stderr
    store = SQLiteKeyStore(tmp_path / "k.sqlite", create=False)
    assert store.verify(key).tenant == "acme"
    key_id = split_key(key)[0]
    listed = corral_keys("list", "--store", "k.sqlite", cwd=tmp_path)
    assert key_id in listed.stdout and split_key(key)[1] not in listed.stdout and "active" in listed.stdout
    rotated = corral_keys("rotate", "--store", "k.sqlite", key_id, cwd=tmp_path)
    assert rotated.returncode == 0 and store.verify(key).revoked and not store.verify(rotated.stdout.strip()).revoked
    revoked = corral_keys("revoke", "--store", "k.sqlite", split_key(rotated.stdout.strip())[0], cwd=tmp_path)
    assert revoked.returncode == 0 and store.verify(rotated.stdout.strip()).revoked
    store.close()


@pytest.mark.parametrize("args, message", [
    (("create", "--config", "gateway.yaml", "--tenant", "nobody"),
     "gateway.yaml: auth.tenants has no tenant named 'nobody'"),
    (("revoke", "--store", "missing.sqlite", "abcdefabcdef"), "no key store at missing.sqlite"),
    (("revoke", "--store", "k.sqlite", "abcdefabcdef"), "no key with id 'abcdefabcdef'"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "gateway.yaml").write_text("groups: {g: {backends: [{url: 'http://127.0.0.1:9'}]}}\n"
                                           "auth: {enabled: true, tenants: {acme: {}}}\n")
    SQLiteKeyStore(tmp_path / "k.sqlite").close()
    result = corral_keys(*args, cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"corral keys: error: {message}"]
