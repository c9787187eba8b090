"""The gateway's audit log: records per second sustained under each fsync policy, and verify time.

Records are request records as the gateway writes them (request_event, ~600 bytes, texts off). Two ways of
recording, each under fsync always / interval (1 s) / never, in a fresh temp directory:
  - record: one producer enqueues --records records with AuditLog.record (fire and forget); the rate is
    records / (time until stop() has drained and fsynced them).
  - wait: --clients concurrent producers each await AuditLog.append_and_wait (the durable path a request takes
    before its last byte); the rate is acknowledged records per second.
Verify: --verify-records records written with the chain writer (fsync never), then verify() over them; the time
per million records is extrapolated linearly from that count (verify is one pass, one record at a time).
Prints a markdown table and writes bench/results/audit.json:

    .venv/bin/python bench/audit_bench.py [--records 50000] [--clients 64] [--verify-records 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from corral.gateway.audit import AuditConfig, AuditLog, request_event
from corral.gateway.audit_chain import verify
from corral.gateway.audit_writer import ChainWriter

KEY = b"bench-audit-key-0123456789abcdef"
HERE = Path(__file__).resolve().parent


def event(i: int) -> dict:
    return request_event(request_id=f"req-{i:012d}", tenant="tenant-a", key_id="k_3f9a2c81d4e5", model_group="smol",
                         backend="smol-0", route="prefix_aware", status=200, latency_ms=812.345, prompt_tokens=512,
                         completion_tokens=128, guardrails={"pii": "pass", "injection": "pass"},
                         prompt="x" * 2000, output="y" * 500)


async def record_rate(directory: Path, fsync: str, count: int) -> float:
    log = AuditLog(AuditConfig(enabled=True, directory=directory, fsync=fsync), KEY)
    await log.start()
    events = [event(i) for i in range(count)]
    start = time.perf_counter()
    for e in events:
        await log.record(e)
    await log.stop()
    return count / (time.perf_counter() - start)


async def wait_rate(directory: Path, fsync: str, count: int, clients: int) -> float:
    log = AuditLog(AuditConfig(enabled=True, directory=directory, fsync=fsync), KEY)
    await log.start()
    per_client = count // clients

    async def client(c: int) -> None:
        for i in range(per_client):
            await log.append_and_wait(event(c * per_client + i))

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    elapsed = time.perf_counter() - start
    await log.stop()
    return per_client * clients / elapsed


def verify_time(directory: Path, count: int) -> tuple[float, int]:
    writer = ChainWriter(directory, KEY, "never")
    writer.open()
    batch = [event(i) for i in range(1000)]
    for _ in range(count // 1000):
        writer.append(batch)
    writer.close()
    start = time.perf_counter()
    result = verify([directory], KEY)
    elapsed = time.perf_counter() - start
    assert result.ok, result.format()
    return elapsed, result.records


def host() -> str:
    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "?")
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return f"{model}, {os.cpu_count()} CPUs, {'AVX-512' if 'avx512f' in flags else 'AVX2, no AVX-512'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=50000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--verify-records", type=int, default=200000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=HERE.parent) as tmp:  # the repo's disk, not a tmpfs
        for fsync in ("always", "interval", "never"):
            rate = asyncio.run(record_rate(Path(tmp) / f"record-{fsync}", fsync, args.records))
            waited = asyncio.run(wait_rate(Path(tmp) / f"wait-{fsync}", fsync, args.records // 2, args.clients))
            rows.append({"fsync": fsync, "record_per_s": round(rate), "append_and_wait_per_s": round(waited)})
        seconds, records = verify_time(Path(tmp) / "verify", args.verify_records)
    per_million = seconds * 1e6 / records
    print(f"host: {host()}; python {platform.python_version()}\n")
    print(f"| fsync | record() records/s | append_and_wait ({args.clients} clients) records/s |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['fsync']} | {row['record_per_s']:,} | {row['append_and_wait_per_s']:,} |")
    print(f"\nverify: {records:,} records in {seconds:.2f} s = {per_million:.1f} s per million (extrapolated)")
    report = {"host": host(), "date": time.strftime("%Y-%m-%d"), "rates": rows, "verify_records": records,
              "verify_s": round(seconds, 3), "verify_s_per_million_extrapolated": round(per_million, 2)}
    (HERE / "results" / "audit.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
