"""kill -9 during load: every record whose append_and_wait returned is in the file, and after a restart the
chain verifies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from corral.gateway.audit_chain import audit_files, verify

KEY = "0123456789abcdef-crash-key"

# 16 concurrent "requests" record themselves with append_and_wait and print "request_id seq" once it returns,
# as a gateway would before sending the response's last byte.
LOAD = """
import asyncio, itertools, os, sys
from corral.gateway.audit import AuditConfig, AuditLog, request_event

async def main():
    config = AuditConfig(enabled=True, directory=sys.argv[1], fsync=sys.argv[2], rotate_bytes=64 * 1024)
    log = AuditLog.from_config(config, os.environ)
    await log.start()
    counter = itertools.count()
    async def client():
        while True:
            request_id = f"r{next(counter)}"
            seq = await log.append_and_wait(request_event(
                request_id=request_id, tenant="t", key_id="kid", model_group="g", backend="b", route="rr",
                status=200, latency_ms=1.0, prompt="p", output="o"))
            sys.stdout.write(f"{request_id} {seq}\\n")
            sys.stdout.flush()
    if sys.argv[3] == "load":
        await asyncio.gather(*(client() for _ in range(16)))
    await log.append_and_wait({"type": "restart_probe"})
    await log.stop()

asyncio.run(main())
"""


def run_load(directory: Path, fsync: str, acks_before_kill: int) -> dict[str, int]:
    env = {**os.environ, "CORRAL_AUDIT_KEY": KEY}
    process = subprocess.Popen([sys.executable, "-c", LOAD, str(directory), fsync, "load"], stdout=subprocess.PIPE,
                               env=env, text=True)
    acked: dict[str, int] = {}
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    while len(acked) < acks_before_kill and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        request_id, seq = line.split()
        acked[request_id] = int(seq)
    process.send_signal(signal.SIGKILL)
    rest, _ = process.communicate(timeout=30)
    for line in rest.splitlines():  # acknowledged before the kill, still in the pipe
        if line.count(" ") == 1:
            request_id, seq = line.split()
            acked[request_id] = int(seq)
    assert process.returncode == -signal.SIGKILL
    assert len(acked) >= acks_before_kill
    restart = subprocess.run([sys.executable, "-c", LOAD, str(directory), fsync, "restart"], env=env, timeout=60,
                             capture_output=True, text=True)
    assert restart.returncode == 0, restart.stderr
    return acked


def test_kill_9_loses_no_acknowledged_record(tmp_path):
    for fsync in ("never", "always"):
        directory = tmp_path / fsync
        acked = run_load(directory, fsync, 1500 if fsync == "never" else 300)
        result = verify([directory], KEY.encode())
        assert result.ok, result.format()
        records = {}
        for path in audit_files(directory):
            for line in path.read_bytes().splitlines():
                record = json.loads(line)
                if record["type"] == "request":
                    records[record["request_id"]] = record["seq"]
        missing = {request_id for request_id in acked if records.get(request_id) != acked[request_id]}
        assert not missing, sorted(missing)[:5]
        assert len(audit_files(directory)) >= 2 or fsync == "always"
