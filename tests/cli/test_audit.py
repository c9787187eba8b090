"""``corral audit verify`` and ``corral audit query`` through the console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corral.gateway.audit_chain import audit_files
from corral.gateway.audit_writer import ChainWriter

KEY = "0123456789abcdef-cli-key"
CORRAL = str(Path(sys.executable).parent / "corral")


def corral(*args: str, key: str | None = KEY) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CORRAL_AUDIT_KEY"}
    if key is not None:
        env["CORRAL_AUDIT_KEY"] = key
    return subprocess.run([CORRAL, "audit", *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture
def log(tmp_path) -> Path:
    now = [1_800_000_000.0]
    writer = ChainWriter(tmp_path, KEY.encode(), "never", rotate_bytes=4096, clock=lambda: now[0])
    writer.open()
    for i in range(60):
        now[0] += 60.0
        writer.append([{"type": "request", "tenant": f"t{i % 2}", "status": 200 if i % 3 else 429,
                        "request_id": f"r{i}"}])
    writer.append([{"type": "admin", "action": "key.create", "actor": "alice", "before": None,
                    "after": {"id": "k1"}}])
    writer.close()
    return tmp_path


def test_verify_ok_and_broken(log):
    files = audit_files(log)
    result = corral("verify", str(log))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ok: {61 + len(files)} records in {len(files)} files"
    assert corral("verify", *map(str, files)).returncode == 0
    lines = files[1].read_bytes().splitlines(keepends=True)
    del lines[2]
    files[1].write_bytes(b"".join(lines))
    result = corral("verify", str(log))
    assert result.returncode == 1
    assert result.stdout.strip().count("\n") == 0
    assert f"{files[1]}:3 " in result.stdout and "prev_hash mismatch" in result.stdout


def test_verify_with_a_wrong_or_missing_key(log):
    result = corral("verify", str(log), key="another-key-of-16-bytes")
    assert result.returncode == 1 and ":1 (seq 1): hmac mismatch" in result.stdout
    result = corral("verify", str(log), key=None)
    assert result.returncode == 1 and "CORRAL_AUDIT_KEY" in result.stderr and result.stderr.count("\n") == 1
    result = corral("verify", str(log), "--key-env", "OTHER_KEY")
    assert result.returncode == 1 and "OTHER_KEY" in result.stderr


def test_query_filters_by_tenant_time_status_and_type(log):
    def query(*args: str) -> list[dict]:
        result = corral("query", str(log), *args, key=None)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    assert len(query("--type", "request")) == 60
    rows = query("--tenant", "t1", "--status", "429")
    assert rows and all(r["tenant"] == "t1" and r["status"] == 429 for r in rows)
    assert len(rows) == sum(1 for i in range(60) if i % 2 == 1 and i % 3 == 0)
    # One record a minute from 1_800_000_060 (2027-01-15T08:01:00Z): ten minutes hold ten records.
    rows = query("--since", "2027-01-15T08:05:00Z", "--until", "2027-01-15T08:15:00", "--type", "request")
    assert [r["request_id"] for r in rows] == [f"r{i}" for i in range(4, 14)]
    assert query("--type", "admin")[0]["actor"] == "alice"
    bad = corral("query", str(log), "--since", "yesterday")
    assert bad.returncode == 1 and "--since" in bad.stderr
