"""The audit chain's writer: appends sealed records to the newest file of a directory, rotates and purges.

Synchronous and single-threaded by design: audit.py calls it from one worker thread, one batch at a time, so
the chain's state (next seq, last hash, open file) needs no lock. One process per directory (an flock on
``.lock``): two writers would fork the chain.

Restart: the newest file's tail gives the next seq and prev_hash. A crash can leave a torn last line (a write
cut short by power loss; a killed process finishes its write(2) calls, so kill -9 alone does not tear): the
writer truncates the bytes after the last sealed record and appends a ``recovery`` record stating how many it
dropped, so the chain verifies and the loss is itself on record. A tail that is not a few torn bytes (more than
``MAX_DROP_BYTES``), or a last record that the key does not sign, stops the start with an error instead.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from corral.errors import CorralError
from corral.gateway.audit_chain import (
    GENESIS,
    audit_files,
    file_name,
    file_start_time,
    seal,
    sign,
    signed_bytes,
    utc_iso,
)

FsyncPolicy = Literal["always", "interval", "never"]
MAX_DROP_BYTES = 1 << 20
_TAIL_BYTES = 1 << 16  # enough for the last record; a longer record is read in full


class AuditError(CorralError):
    """The audit log cannot start or write (directory in use, unreadable tail, wrong key, disk error)."""


class ChainWriter:
    """Appends records to the chain in ``directory``; see the module docstring for restart and locking."""

    def __init__(self, directory: Path, key: bytes, fsync: FsyncPolicy = "always", interval_s: float = 1.0,
                 rotate_bytes: int | None = None, rotate_s: float | None = None, max_files: int | None = None,
                 max_age_days: float | None = None, clock: Callable[[], float] = time.time):
        self.directory = Path(directory)
        self._key = key
        self._fsync = fsync
        self._interval_s = interval_s
        self._rotate_bytes = rotate_bytes
        self._rotate_s = rotate_s
        self._max_files = max_files
        self._max_age_s = None if max_age_days is None else max_age_days * 86400.0
        self._clock = clock
        self.next_seq = 1
        self.last_hash = GENESIS
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._started_at = 0.0
        self._dirty = False
        self._synced_at = 0.0
        self._lock_fd: int | None = None

    # -- opening ------------------------------------------------------------------------------------------------

    def open(self) -> None:
        """Lock the directory, continue the newest file's chain (or start one), and apply retention."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise AuditError(f"audit directory {self.directory} is in use by another process") from None
        files = audit_files(self.directory)
        if not files:
            self._start_file("start")
        else:
            self._resume(files[-1])
        self.purge()

    def _resume(self, path: Path) -> None:
        dropped, last = _recover_tail(path)
        if last is None:  # nothing sealed in the file: it was created and the crash came before its first line
            os.truncate(path, 0)
            path.unlink()
            previous = audit_files(self.directory)
            if previous:
                self._resume(previous[-1])
            else:
                self._start_file("start")
            if dropped:
                self.append([{"type": "recovery", "dropped_bytes": dropped, "file": path.name}])
            return
        record, data = last
        if not hmac.compare_digest(sign(self._key, data), record["hmac"]):
            raise AuditError(f"the audit key does not sign the last record of {path} (seq {record['seq']}): a "
                             "different key? keep the old key, or start a new audit directory")
        self.next_seq = record["seq"] + 1
        self.last_hash = record["hash"]
        self._open_file(path, file_start_time(path) or self._clock())
        if dropped:
            self.append([{"type": "recovery", "dropped_bytes": dropped, "file": path.name}])

    def _open_file(self, path: Path, started_at: float) -> None:
        if self._fd is not None:
            self._sync()
            os.close(self._fd)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._path = path
        self._size = os.fstat(self._fd).st_size
        self._started_at = started_at

    def _start_file(self, reason: str) -> None:
        now = self._clock()
        path = self.directory / file_name(self.next_seq, now)
        previous = self._path.name if self._path is not None else None
        self._open_file(path, now)
        if self._fsync != "never":  # the new name itself must survive a power loss
            _fsync_dir(self.directory)
        self._write([self._seal({"type": "file_start", "time": utc_iso(now), "reason": reason,
                                 "prev_file": previous})])

    # -- writing ------------------------------------------------------------------------------------------------

    def append(self, events: list[dict[str, Any]]) -> list[int]:
        """Seal and write ``events`` in order (rotating first where due); their seqs. Durable on return per the
        fsync policy: "always" fsyncs before returning, "interval" when the last fsync is older than interval_s."""
        if self._rotation_due():
            self._start_file("rotate")
            self.purge()
        seqs = []
        lines = []
        for event in events:
            seqs.append(self.next_seq)
            lines.append(self._seal(event))
        self._write(lines)
        return seqs

    def _seal(self, event: dict[str, Any]) -> bytes:
        body = {**event, "seq": self.next_seq, "prev_hash": self.last_hash}
        body.setdefault("time", utc_iso(self._clock()))
        try:
            digest, line = seal(body, self._key)
        except (TypeError, ValueError) as exc:  # not JSON (NaN, mixed key types): record that it happened
            body = {"type": "invalid_event", "error": str(exc)[:200], "event_type": str(event.get("type")),
                    "seq": self.next_seq, "prev_hash": self.last_hash, "time": body["time"]}
            digest, line = seal(body, self._key)
        self.next_seq += 1
        self.last_hash = digest
        return line

    def _write(self, lines: list[bytes]) -> None:
        assert self._fd is not None, "open() first"
        data = b"".join(lines)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self._size += len(data)
        self._dirty = True
        if self._fsync == "always" or (self._fsync == "interval"
                                       and self._clock() - self._synced_at >= self._interval_s):
            self._sync()

    def _sync(self) -> None:
        if self._dirty and self._fd is not None and self._fsync != "never":
            os.fsync(self._fd)
            self._synced_at = self._clock()
        self._dirty = False

    def sync(self) -> None:
        """fsync what was written since the last fsync (the "interval" policy's timer calls this when idle)."""
        self._sync()

    def _rotation_due(self) -> bool:
        if self._rotate_bytes is not None and self._size >= self._rotate_bytes:
            return True
        return self._rotate_s is not None and self._clock() - self._started_at >= self._rotate_s

    # -- retention ----------------------------------------------------------------------------------------------

    def purge(self) -> list[str]:
        """Remove the oldest files beyond ``max_files`` or older than ``max_age_days`` (never the current one),
        after appending a ``purge`` record that names them and their last seq and hash: verify accepts a chain
        that starts where a purge record says the removed files ended. The record is written (and fsynced
        unless "never") before any file goes, so a crash between the two leaves files the record calls removed,
        never removed files without a record."""
        files = audit_files(self.directory)
        removable = files[:-1]
        count = 0
        if self._max_files is not None:
            count = max(0, len(files) - self._max_files)
        if self._max_age_s is not None:
            # A file's records all predate the next file's start.
            cutoff = self._clock() - self._max_age_s
            while count < len(removable) and (file_start_time(files[count + 1]) or 0.0) < cutoff:
                count += 1
        removed = removable[:count]
        if not removed:
            return []
        # The first surviving file's file_start continues the chain from the last removed record.
        with open(files[count], "rb") as f:
            survivor = json.loads(f.readline())
        self._write([self._seal({"type": "purge", "removed": [p.name for p in removed],
                                 "last_seq": survivor["seq"] - 1, "last_hash": survivor["prev_hash"]})])
        self._sync()
        for path in removed:
            path.unlink()
        return [p.name for p in removed]

    def close(self) -> None:
        if self._fd is not None:
            self._sync()
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _recover_tail(path: Path) -> tuple[int, tuple[dict[str, Any], bytes] | None]:
    """Truncate ``path`` after its last sealed record; (bytes dropped, (that record, its signed bytes) or None).
    A last record that only lacks its newline is completed rather than dropped."""
    size = path.stat().st_size
    window = _TAIL_BYTES
    with open(path, "r+b") as f:
        while True:  # a record may be longer than the window (prompt texts): widen until one is whole
            start = max(0, size - window)
            f.seek(start)
            found = _last_sealed(f.read(), whole=start == 0)
            if found is not None or start == 0:
                break
            window *= 2
        end, has_newline, last = (0, True, None) if found is None else (found[0] + start, found[1], found[2:])
        dropped = size - end
        if dropped > MAX_DROP_BYTES:
            raise AuditError(f"{path}: {dropped} bytes after the last sealed record; not a torn line, look first")
        f.truncate(end)
        if not has_newline:
            f.seek(end)
            f.write(b"\n")
        return dropped, last  # type: ignore[return-value]


def _last_sealed(tail: bytes, whole: bool) -> tuple[int, bool, dict[str, Any], bytes] | None:
    """(end offset in ``tail`` past its newline, whether it has one, record, signed bytes) of the last sealed
    line of ``tail``. Its first line counts only when ``whole`` says ``tail`` starts the file."""
    end = len(tail)
    while end > 0:
        has_newline = tail[end - 1:end] == b"\n"
        stop = end - 1 if has_newline else end
        start = tail.rfind(b"\n", 0, stop) + 1
        if start == 0 and not whole:
            return None
        line = tail[start:stop]
        data = signed_bytes(line)
        if data is not None:
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("seq"), int):
                return end, has_newline, record, data
        end = start
    return None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
