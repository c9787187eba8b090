"""The audit log's hash chain: how a record is sealed, how files are named, and how a chain is verified.

A record is a JSON object on one line. Its ``hash`` is the SHA-256 of its canonical form without ``hash`` and
``hmac`` (sorted keys, no whitespace, UTF-8), which includes ``seq`` and ``prev_hash``; its ``hmac`` is
HMAC-SHA256 under the audit key over the same bytes. The line is those bytes with ``hash`` and ``hmac`` appended
as the last two keys, so verify checks the bytes as written, without re-encoding them. Each record's ``prev_hash`` is the previous record's ``hash``, across files:
the first record of every file is a ``file_start`` whose ``prev_hash`` is the last hash of the file before (64
zeros for the very first), so a deleted middle file breaks the chain at the next file's first line.

Trust model (docs/audit.md): without the key nobody can write a record that verifies, so an edit, insertion,
deletion or reordering shows at the first record it touches. A chain that starts after seq 1 is accepted only
where a ``purge`` record in it vouches for the removed prefix (its ``last_seq``/``last_hash`` are where the
first surviving record continues), or with ``allow_partial``. Truncating the newest records is not visible in
the chain itself; compare the last seq and hash with a copy kept elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
# Fields the chain sets on every record; an event may not carry them.
CHAIN_FIELDS = frozenset({"seq", "prev_hash", "hash", "hmac"})
# audit-<first seq, 12 digits>-<UTC start time>.jsonl: names sort in chain order, and say when a file began.
_FILE_RE = re.compile(r"^audit-(\d{12})-(\d{8}T\d{6}Z)\.jsonl$")
_SUFFIX_RE = re.compile(rb',"hash":"[0-9a-f]{64}","hmac":"[0-9a-f]{64}"}')
_SUFFIX_LEN = 9 + 64 + 10 + 64 + 2


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes that are hashed and signed: ``record`` without ``hash`` and ``hmac``, sorted keys, no spaces."""
    body = {k: v for k, v in record.items() if k != "hash" and k != "hmac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=str).encode()


def sign(key: bytes, data: bytes) -> str:
    return hmac.digest(key, data, "sha256").hex()


def seal(body: dict[str, Any], key: bytes) -> tuple[str, bytes]:
    """The ``hash`` of ``body`` (with ``seq`` and ``prev_hash`` set) and its line in the file."""
    data = canonical(body)
    digest = hashlib.sha256(data).hexdigest()
    return digest, b"%s,\"hash\":\"%s\",\"hmac\":\"%s\"}\n" % (data[:-1], digest.encode(), sign(key, data).encode())


def signed_bytes(raw: bytes) -> bytes | None:
    """The bytes a line's ``hash`` and ``hmac`` cover (None when the line does not end as ``seal`` ends one)."""
    line = raw.rstrip(b"\n")
    if len(line) < _SUFFIX_LEN or _SUFFIX_RE.fullmatch(line, len(line) - _SUFFIX_LEN) is None:
        return None
    return line[:-_SUFFIX_LEN] + b"}"


def utc_iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    """An ISO 8601 time, UTC where it names no zone (``2026-12-06``, ``2026-12-06T17:35:18Z``)."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def file_name(first_seq: int, timestamp: float) -> str:
    return f"audit-{first_seq:012d}-{datetime.fromtimestamp(timestamp, UTC):%Y%m%dT%H%M%SZ}.jsonl"


def file_start_time(path: Path) -> float | None:
    """When the audit file ``path`` was started, from its name (None for a name that is not an audit file's)."""
    match = _FILE_RE.match(path.name)
    if match is None:
        return None
    return datetime.strptime(match.group(2), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()


def audit_files(directory: Path) -> list[Path]:
    """The audit files in ``directory``, oldest first (by first seq)."""
    return sorted((p for p in directory.iterdir() if _FILE_RE.match(p.name)), key=lambda p: p.name)


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, in the order given; a directory stands for its audit files, oldest first."""
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(audit_files(path) if path.is_dir() else [path])
    return files


def read_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, bytes]]:
    """(line number from 1, the record or None where the line is not a JSON object, the raw line)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                record = json.loads(raw)
            except ValueError:
                record = None
            yield number, record if isinstance(record, dict) else None, raw


@dataclass(frozen=True)
class BadRecord:
    file: str
    line: int
    seq: int | None
    reason: str

    def format(self) -> str:
        seq = "" if self.seq is None else f" (seq {self.seq})"
        return f"{self.file}:{self.line}{seq}: {self.reason}"


@dataclass(frozen=True)
class VerifyResult:
    """``first_bad`` is None when every record of every file verified, in order. ``first_seq`` is where the
    verified chain starts (1 unless earlier files were purged, or ``allow_partial`` let a later start pass)."""

    ok: bool
    records: int
    files: int
    first_seq: int | None
    last_seq: int | None
    last_hash: str | None
    first_bad: BadRecord | None = None

    def format(self) -> str:
        if self.first_bad is not None:
            return f"broken: {self.first_bad.format()}"
        start = "" if self.first_seq in (None, 1) else f", from seq {self.first_seq}"
        return f"ok: {self.records} records in {self.files} files{start}"


def _check(record: dict[str, Any] | None, raw: bytes, key: bytes, prev: dict[str, Any] | None) -> str | None:
    """Why ``record`` does not continue the chain after ``prev`` (None: it does, or it is the first)."""
    if record is None:
        return "torn final line" if not raw.endswith(b"\n") else "not JSON"
    data = signed_bytes(raw)
    if data is None or not isinstance(record.get("seq"), int) or not isinstance(record.get("prev_hash"), str):
        return "not a sealed record (seq, prev_hash, hash, hmac)"
    if not hmac.compare_digest(sign(key, data), record["hmac"]):
        return "hmac mismatch"
    if hashlib.sha256(data).hexdigest() != record["hash"]:
        return "hash mismatch"
    if prev is not None:
        if record["prev_hash"] != prev["hash"]:
            return "prev_hash mismatch"
        if record["seq"] != prev["seq"] + 1:
            return "seq gap"
    return None


def _start_reason(first: dict[str, Any], purges: list[dict[str, Any]]) -> str | None:
    """Why a chain starting at ``first`` is not complete (None: it starts at seq 1, or a purge vouches)."""
    if first["seq"] == 1 and first["prev_hash"] == GENESIS:
        return None
    for purge in purges:
        if purge.get("last_seq") == first["seq"] - 1 and purge.get("last_hash") == first["prev_hash"]:
            return None
    return f"chain starts at seq {first['seq']} and no purge record accounts for the earlier records"


def verify(paths: Iterable[str | Path], key: bytes, allow_partial: bool = False) -> VerifyResult:
    """Walk the chain through ``paths`` (expanded by ``expand``) and report the first record that breaks it:
    "hmac mismatch" (edited, forged, or the wrong key), "hash mismatch", "prev_hash mismatch" (a record deleted,
    inserted or moved before it), "seq gap", "not JSON", "torn final line", or an unaccounted start."""
    files = expand(paths)
    count = 0
    prev: dict[str, Any] | None = None
    first: tuple[str, dict[str, Any]] | None = None
    purges: list[dict[str, Any]] = []

    def result(bad: BadRecord | None) -> VerifyResult:
        return VerifyResult(bad is None, count, len(files), first[1]["seq"] if first else None,
                            prev["seq"] if prev else None, prev["hash"] if prev else None, bad)

    for path in files:
        for number, record, raw in read_records(path):
            reason = _check(record, raw, key, prev)
            if reason is not None:
                seq = record.get("seq") if record is not None else None
                return result(BadRecord(str(path), number, seq if isinstance(seq, int) else None, reason))
            assert record is not None
            if first is None:
                first = (str(path), record)
                genesis = record["seq"] == 1 and record["prev_hash"] == GENESIS
                if not genesis and not allow_partial and record.get("type") != "file_start":
                    # After a purge, a chain starts at a file's first record; this one lost its predecessors.
                    reason = f"chain starts at seq {record['seq']} inside a file: the records before it are missing"
                    return result(BadRecord(str(path), number, record["seq"], reason))
            if record.get("type") == "purge":
                purges.append(record)
            prev = record
            count += 1
    if first is not None and not allow_partial:
        reason = _start_reason(first[1], purges)
        if reason is not None:
            return result(BadRecord(first[0], 1, first[1]["seq"], reason))
    return result(None)
