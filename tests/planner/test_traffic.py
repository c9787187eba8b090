"""Traffic: length distributions, Little's law with headroom."""

from __future__ import annotations

import pytest

from corral.errors import ConfigError
from corral.planner.traffic import LengthDistribution, TrafficProfile, replicas_needed, requests_in_flight


def test_lengths_parse_fixed_or_uniform():
    assert LengthDistribution.parse("512", "--prompt-len") == LengthDistribution(512, 512)
    spread = LengthDistribution.parse("128:1024", "--prompt-len")
    assert (spread.mean, spread.high) == (576, 1024)
    with pytest.raises(ConfigError, match="--output-len takes N or LOW:HIGH"):
        LengthDistribution.parse("lots", "--output-len")
    with pytest.raises(ConfigError, match="--prompt-len 9:3: a range needs 0 <= LOW <= HIGH"):
        LengthDistribution.parse("9:3", "--prompt-len")


def test_littles_law_with_headroom():
    assert requests_in_flight(10, 3.0) == 30
    # 30 in flight; 16 a replica at most 80% full = 12.8 each: 3 replicas
    assert replicas_needed(10, 3.0, 16, 0.2) == 3
    assert replicas_needed(10, 3.0, 16, 0.0) == 2
    assert replicas_needed(0.001, 1.0, 16, 0.2) == 1
    with pytest.raises(ConfigError, match="no batch meets the SLOs"):
        replicas_needed(1, 1, 0, 0.2)


def test_a_profile_refuses_what_cannot_be_served():
    length = LengthDistribution(10, 10)
    with pytest.raises(ConfigError, match="--rps"):
        TrafficProfile(-1, length, length, 1, 1)
    with pytest.raises(ConfigError, match="--headroom"):
        TrafficProfile(1, length, length, 1, 1, headroom=1.0)
    with pytest.raises(ConfigError, match="--slo"):
        TrafficProfile(1, length, length, 0, 1)
    with pytest.raises(ConfigError, match="--output-len"):
        TrafficProfile(1, length, LengthDistribution(0, 0), 1, 1)
