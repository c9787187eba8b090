"""The traffic a deployment must serve, and how many replicas that takes (Little's law with headroom)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from corral.errors import ConfigError


@dataclass(frozen=True)
class LengthDistribution:
    """Token counts of prompts (or outputs): fixed ("512") or uniform over a range ("128:1024"). Times use
    the mean; memory uses the maximum, since a sequence's blocks stay held until it finishes."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high:
            raise ConfigError(f"a length range needs 0 <= low <= high, got {self.low}:{self.high}")

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2

    @classmethod
    def parse(cls, text: str, flag: str) -> LengthDistribution:
        low, _, high = text.partition(":")
        try:
            low_tokens, high_tokens = int(low), int(high or low)
        except ValueError:
            raise ConfigError(f"{flag} takes N or LOW:HIGH tokens, got {text!r}") from None
        if not 0 <= low_tokens <= high_tokens:
            raise ConfigError(f"{flag} {text}: a range needs 0 <= LOW <= HIGH")
        return cls(low_tokens, high_tokens)

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}:{self.high} (mean {self.mean:g})"


@dataclass(frozen=True)
class TrafficProfile:
    requests_per_s: float | None  # None: no traffic given; plan one replica
    prompt: LengthDistribution
    output: LengthDistribution
    slo_ttft_s: float
    slo_tpot_s: float
    headroom: float = 0.2  # replicas run at most (1 - headroom) of the concurrency their SLO batch allows

    def __post_init__(self) -> None:
        if self.requests_per_s is not None and self.requests_per_s <= 0:
            raise ConfigError("--rps must be positive")
        if self.output.low < 1:
            raise ConfigError("--output-len must be at least 1 token")
        if self.slo_ttft_s <= 0 or self.slo_tpot_s <= 0:
            raise ConfigError("--slo-ttft-ms and --slo-tpot-ms must be positive")
        if not 0 <= self.headroom < 1:
            raise ConfigError(f"--headroom must be in [0, 1), got {self.headroom}")

    @property
    def max_seq_len(self) -> int:
        return self.prompt.high + self.output.high


def requests_in_flight(requests_per_s: float, latency_s: float) -> float:
    """Little's law: L = lambda x W."""
    return requests_per_s * latency_s


def replicas_needed(requests_per_s: float, latency_s: float, seqs_per_replica: int, headroom: float) -> int:
    """Replicas that keep each one at or below ``(1 - headroom) x seqs_per_replica`` sequences in flight."""
    if seqs_per_replica < 1:
        raise ConfigError("no batch meets the SLOs, so no number of replicas serves this traffic")
    return max(1, math.ceil(requests_in_flight(requests_per_s, latency_s) / (seqs_per_replica * (1 - headroom))))
