"""The calibration file: fitted factors per host, keyed by the host's identity (CPU model, the flags that tell
the planner's CPU rows apart, and the row itself), so a file copied to another host does not apply there.

Layout: ``{"version": 1, "hosts": {KEY: entry}}``, an entry holding the factors, the compute dtype they were
fitted in, the date, what was measured and the validation table. The path is chosen by the CLI (flag,
environment variable, per-user default); this module only reads and writes the file it is given.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from corral.errors import ConfigError
from corral.planner.calibration import Factors
from corral.planner.hardware import local_cpu_name
from corral.platform import cpu_flags

FILE_VERSION = 1
# The flags that decide the planner's CPU row and corral's kernels (shared/MACHINE.md's three hosts).
_IDENTITY_FLAG_PREFIXES = ("avx2", "avx512", "amx", "avx_vnni", "fma")


@dataclass(frozen=True)
class HostIdentity:
    row: str  # the planner's local CPU row
    cpu_model: str
    flags: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.row} | {self.cpu_model} | {' '.join(self.flags)}"


def cpu_model_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def this_host(flags: frozenset[str] | None = None, cpu_model: str | None = None) -> HostIdentity:
    flags = cpu_flags() if flags is None else flags
    simd = tuple(sorted(f for f in flags if f.startswith(_IDENTITY_FLAG_PREFIXES)))
    return HostIdentity(local_cpu_name(flags), cpu_model_name() if cpu_model is None else cpu_model, simd)


@dataclass(frozen=True)
class StoredCalibration:
    host: HostIdentity
    factors: Factors
    compute_dtype: str  # the compute factor holds for this dtype's kernels only
    date: str
    source: str  # what was measured: "--run" (and its settings) or the file read with --from
    model: str
    validation: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["host"]["flags"] = list(self.host.flags)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoredCalibration:
        try:
            host = HostIdentity(data["host"]["row"], data["host"]["cpu_model"], tuple(data["host"]["flags"]))
            factors = Factors(float(data["factors"]["bandwidth"]), float(data["factors"]["compute"]),
                              float(data["factors"]["step_overhead_s"]))
            return cls(host, factors, str(data["compute_dtype"]), str(data["date"]), str(data["source"]),
                       str(data["model"]), list(data.get("validation", [])), list(data.get("notes", [])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"calibration entry is malformed ({exc!r})") from None


def read_calibrations(path: str) -> dict[str, StoredCalibration]:
    """Every host's entry in ``path``; {} when the file does not exist."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"calibration file {path} cannot be read: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != FILE_VERSION or not isinstance(data.get("hosts"), dict):
        raise ConfigError(f"calibration file {path} is not a version-{FILE_VERSION} corral calibration file")
    return {key: StoredCalibration.from_json(entry) for key, entry in data["hosts"].items()}


def write_calibration(path: str, calibration: StoredCalibration) -> None:
    """Add or replace this host's entry, keeping the other hosts' entries."""
    entries = read_calibrations(path)
    entries[calibration.host.key] = calibration
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"version": FILE_VERSION, "hosts": {k: v.to_json() for k, v in entries.items()}}, f, indent=2)
    os.replace(tmp, path)


def calibration_for(path: str, host: HostIdentity) -> tuple[StoredCalibration | None, str]:
    """This host's entry in ``path`` and a line saying whether one applies."""
    entries = read_calibrations(path)
    if host.key in entries:
        c = entries[host.key]
        return c, f"calibrated for this host on {c.date[:10]} ({path})"
    if not entries:
        return None, f"no calibration file at {path} (run `corral plan calibrate`)"
    return None, (f"{path} holds no calibration for this host ({host.key}): it has "
                  f"{', '.join(sorted(entries))}; using the default factors")
