"""The audit log: a chain written across rotated files verifies; each kind of tampering fails at exactly the
record it touches; restart, a torn last line and retention purges keep the chain verifiable."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.gateway.audit import (
    AuditConfig,
    AuditLog,
    admin_event,
    audit_key,
    prompt_sha256,
    request_event,
)
from corral.gateway.audit_chain import GENESIS, audit_files, file_start_time, seal, verify
from corral.gateway.audit_writer import AuditError, ChainWriter

KEY = b"0123456789abcdef-test-key"


def write_log(directory: Path, count: int, clock=None, **config) -> None:
    config = {"enabled": True, "directory": directory, "fsync": "never", "max_batch": 7, **config}
    cfg = AuditConfig(**config)

    async def main() -> None:
        log = AuditLog(cfg, KEY, **({"clock": clock} if clock else {}))
        await log.start()
        for i in range(count):
            event = request_event(request_id=f"r{i}", tenant=f"t{i % 3}", key_id="kid", model_group="g",
                                  backend="b0", route="least_loaded", status=200 if i % 5 else 429,
                                  latency_ms=1.5, prompt_tokens=3, completion_tokens=4, prompt="hi", output="yo")
            if i % 10 == 9:
                await log.append_and_wait(event)
            else:
                await log.record(event)
        await log.stop()

    asyncio.run(main())


def lines_of(directory: Path) -> list[tuple[Path, list[bytes]]]:
    return [(path, path.read_bytes().splitlines(keepends=True)) for path in audit_files(directory)]


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    """120 request records across several files (rotation by size)."""
    directory = tmp_path_factory.mktemp("audit")
    write_log(directory, 120, rotate_bytes=4096)
    return directory


def copy_chain(source: Path, target: Path) -> list[tuple[Path, list[bytes]]]:
    target.mkdir(exist_ok=True)
    for path in audit_files(source):
        (target / path.name).write_bytes(path.read_bytes())
    return lines_of(target)


def test_a_written_chain_verifies_across_rotated_files(chain):
    files = audit_files(chain)
    assert len(files) >= 4
    result = verify([chain], KEY)
    assert result.ok, result.format()
    assert result.files == len(files)
    # one file_start per file, plus the 120 requests
    assert result.records == 120 + len(files) and result.last_seq == result.records
    first = json.loads(files[0].read_bytes().splitlines()[0])
    assert first["type"] == "file_start" and first["prev_hash"] == GENESIS and first["seq"] == 1
    for before, after in zip(files, files[1:]):
        last = json.loads(before.read_bytes().splitlines()[-1])
        start = json.loads(after.read_bytes().splitlines()[0])
        assert start["type"] == "file_start" and start["prev_hash"] == last["hash"]
        assert start["seq"] == last["seq"] + 1
    assert result.format() == f"ok: {result.records} records in {len(files)} files"


def test_request_record_fields():
    event = request_event(request_id="r", tenant="t", key_id="kid", model_group="g", backend="b", route="r",
                          status=200, latency_ms=2.0, prompt=[{"role": "user", "content": "hi"}], output="yo")
    assert event["prompt_sha256"] == prompt_sha256([{"role": "user", "content": "hi"}])
    assert len(event["output_sha256"]) == 64 and "prompt" not in event and "output" not in event
    with_texts = request_event(request_id="r", tenant="t", key_id="kid", model_group="g", backend="b", route="r",
                               status=200, latency_ms=2.0, prompt="hi", output="yo", record_texts=True)
    assert with_texts["prompt"] == "hi" and with_texts["output"] == "yo"
    admin = admin_event("key.revoke", "alice", {"revoked": False}, {"revoked": True}, target="kid")
    assert admin["actor"] == "alice" and admin["before"] == {"revoked": False}


def tamper_cases():
    return st.sampled_from(["edit", "delete", "relink", "insert", "swap", "replay"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=tamper_cases(), position=st.floats(0, 1, exclude_max=True))
def test_tampering_fails_at_exactly_that_record(chain, tmp_path_factory, kind, position):
    target = tmp_path_factory.mktemp("tampered")
    files = copy_chain(chain, target)
    index = int(position * len(files))
    path, lines = files[index]
    line = int(position * len(files) * len(lines)) % len(lines)
    if kind == "swap" and line == len(lines) - 1:
        line -= 1
    original = json.loads(lines[line])
    if kind == "edit":
        lines[line] = lines[line].replace(b'"time":"20', b'"time":"19', 1)  # in place, as an editor would
        expected_line, reason = line, "hmac mismatch"
    elif kind == "delete":
        del lines[line]
        if line == len(lines):  # the last line of a file: the break shows at the next file's first record
            path.write_bytes(b"".join(lines))
            if index == len(files) - 1:  # truncation of the newest record: not visible in the chain (docs/audit.md)
                assert verify([target], KEY).ok
                return
            path, expected_line = files[index + 1][0], 0
        else:
            expected_line = line
        reason = "missing" if (index, line) == (0, 0) else "prev_hash mismatch"
    elif kind == "relink":
        # delete a record and point the next one's prev_hash past it, without the key to re-sign it
        if line == len(lines) - 1:
            line -= 1
        removed = json.loads(lines.pop(line))
        lines[line] = lines[line].replace(json.loads(lines[line])["prev_hash"].encode(),
                                          removed["prev_hash"].encode(), 1)
        expected_line, reason = line, "hmac mismatch"
    elif kind == "insert":
        # a forged record with a correct hash and prev_hash, but signed without the key
        body = {"type": "request", "tenant": "forged", "seq": original["seq"], "prev_hash": original["prev_hash"]}
        _, forged = seal(body, b"not-the-key-at-all")
        lines.insert(line, forged)
        expected_line, reason = line, "hmac mismatch"
    elif kind == "swap":
        lines[line], lines[line + 1] = lines[line + 1], lines[line]
        expected_line, reason = line, "missing" if (index, line) == (0, 0) else "prev_hash mismatch"
    else:  # replay: a genuine record again, after itself
        lines.insert(line + 1, lines[line])
        expected_line, reason = line + 1, "prev_hash mismatch"
    if kind != "delete" or path == files[index][0]:
        files[index][0].write_bytes(b"".join(lines))
    result = verify([target], KEY)
    assert not result.ok
    bad = result.first_bad
    assert (Path(bad.file).name, bad.line) == (path.name, expected_line + 1), bad
    assert bad.reason == reason or reason == "missing" and "the records before it are missing" in bad.reason, bad


def test_a_line_that_is_not_json_is_reported_as_such(chain, tmp_path):
    files = copy_chain(chain, tmp_path)
    path, lines = files[1]
    lines[3] = b"\x00\x00garbage\n"
    path.write_bytes(b"".join(lines))
    bad = verify([tmp_path], KEY).first_bad
    assert (Path(bad.file), bad.line, bad.seq, bad.reason) == (path, 4, None, "not JSON")
    assert bad.format() == f"{path}:4: not JSON"


def test_wrong_key_fails_at_the_first_record(chain):
    result = verify([chain], b"another-key-of-16-bytes")
    assert not result.ok and result.first_bad.line == 1 and result.first_bad.reason == "hmac mismatch"
    assert Path(result.first_bad.file) == audit_files(chain)[0]


def test_a_deleted_middle_file_breaks_the_chain_at_the_next_file(chain, tmp_path):
    files = copy_chain(chain, tmp_path)
    files[1][0].unlink()
    bad = verify([tmp_path], KEY).first_bad
    assert (Path(bad.file), bad.line, bad.reason) == (files[2][0], 1, "prev_hash mismatch")


def test_deleted_oldest_files_without_a_purge_record_fail_unless_partial(chain, tmp_path):
    files = copy_chain(chain, tmp_path)
    files[0][0].unlink()
    result = verify([tmp_path], KEY)
    assert not result.ok and "no purge record" in result.first_bad.reason
    assert verify([tmp_path], KEY, allow_partial=True).ok


def test_restart_continues_the_chain(tmp_path):
    write_log(tmp_path, 10)
    write_log(tmp_path, 10)
    result = verify([tmp_path], KEY)
    assert result.ok and result.records == 21 and result.files == 1


def test_a_torn_last_line_is_dropped_and_recorded(tmp_path):
    write_log(tmp_path, 10)
    path = audit_files(tmp_path)[-1]
    torn = b'{"type":"request","tenant":"t0","se'
    with open(path, "ab") as f:
        f.write(torn)
    assert verify([tmp_path], KEY).first_bad.reason == "torn final line"
    write_log(tmp_path, 2)
    result = verify([tmp_path], KEY)
    assert result.ok and result.records == 11 + 1 + 2
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    recovery = [r for r in records if r["type"] == "recovery"]
    assert len(recovery) == 1 and recovery[0]["dropped_bytes"] == len(torn) and recovery[0]["seq"] == 12


def test_a_last_record_without_its_newline_is_kept(tmp_path):
    write_log(tmp_path, 3)
    path = audit_files(tmp_path)[-1]
    path.write_bytes(path.read_bytes()[:-1])
    write_log(tmp_path, 1)
    result = verify([tmp_path], KEY)
    assert result.ok and result.records == 5
    assert b"recovery" not in path.read_bytes()


def test_restart_with_another_key_refuses(tmp_path):
    write_log(tmp_path, 2)
    writer = ChainWriter(tmp_path, b"a-different-key-entirely")
    with pytest.raises(AuditError, match="does not sign the last record"):
        writer.open()
    writer.close()


def test_one_writer_per_directory(tmp_path):
    first = ChainWriter(tmp_path, KEY)
    first.open()
    second = ChainWriter(tmp_path, KEY)
    with pytest.raises(AuditError, match="in use"):
        second.open()
    first.close()


def test_purge_keeps_the_chain_verifiable_and_records_what_it_removed(tmp_path):
    write_log(tmp_path, 200, rotate_bytes=4096, max_files=3)
    files = audit_files(tmp_path)
    assert len(files) == 3
    result = verify([tmp_path], KEY)
    assert result.ok and result.first_seq > 1, result.format()
    purges = [json.loads(line) for path in files for line in path.read_bytes().splitlines()
              if b'"type":"purge"' in line]
    assert purges and all(p["removed"] for p in purges)
    first = json.loads(files[0].read_bytes().splitlines()[0])
    assert any(p["last_seq"] == first["seq"] - 1 and p["last_hash"] == first["prev_hash"] for p in purges)
    # Removing one more old file by hand is not covered by any purge record.
    files[0].unlink()
    assert "no purge record" in verify([tmp_path], KEY).first_bad.reason


def test_rotation_and_retention_by_time(tmp_path):
    now = [1_800_000_000.0]
    writer = ChainWriter(tmp_path, KEY, "never", rotate_s=3600.0, max_age_days=0.5, clock=lambda: now[0])
    writer.open()
    for _ in range(24 * 6):  # a day, one record every ten minutes
        now[0] += 600.0
        writer.append([{"type": "request", "status": 200}])
    writer.close()
    files = audit_files(tmp_path)
    starts = [file_start_time(path) for path in files]
    assert all(b - a == 3600 for a, b in zip(starts, starts[1:]))  # hour-long files
    # Retention kept the files whose successor began within the last half day: 12 and the current one.
    # The last purge ran at the last rotation: a file went when its successor began over half a day before.
    assert starts[0] < starts[-1] - 43200 <= starts[1]
    result = verify([tmp_path], KEY)
    assert result.ok and result.first_seq > 1, result.format()


def test_interval_and_always_fsync_policies_write_a_verifiable_chain(tmp_path):
    write_log(tmp_path / "always", 30, fsync="always")
    write_log(tmp_path / "interval", 30, fsync="interval", interval_s=0.01)
    assert verify([tmp_path / "always"], KEY).ok and verify([tmp_path / "interval"], KEY).ok


def test_events_may_not_set_chain_fields_and_unserialisable_ones_are_recorded(tmp_path):
    async def main() -> list[dict]:
        log = AuditLog(AuditConfig(enabled=True, directory=tmp_path), KEY)
        await log.start()
        with pytest.raises(ValueError, match="seq"):
            await log.record({"type": "x", "seq": 5})
        await log.append_and_wait({"type": "x", "value": float("nan")})
        await log.stop()
        return [json.loads(line) for line in audit_files(tmp_path)[0].read_bytes().splitlines()]

    records = asyncio.run(main())
    assert records[-1]["type"] == "invalid_event" and verify([tmp_path], KEY).ok


def test_the_key_comes_from_the_environment_variable_the_config_names():
    config = AuditConfig(enabled=True, hmac_key_env="MY_AUDIT_KEY")
    with pytest.raises(AuditError, match="MY_AUDIT_KEY"):
        audit_key(config, {})
    with pytest.raises(AuditError, match="at least 16"):
        audit_key(config, {"MY_AUDIT_KEY": "short"})
    assert audit_key(config, {"MY_AUDIT_KEY": "x" * 16}) == b"x" * 16
    with pytest.raises(ValueError):
        AuditConfig(enabled=True, hmac_key="inline")  # extra="forbid": no key in the YAML
