"""Sliding windows score every target once, with as much context as the window allows."""

from __future__ import annotations

import pytest

from corral.errors import ConfigError
from corral.models.evaluate import sliding_windows


@pytest.mark.parametrize("length, window, stride", [(10, 4, 2), (10, 4, 3), (9, 16, 8), (100, 32, 7)])
def test_every_target_is_scored_once(length, window, stride):
    ids = list(range(length))
    windows = sliding_windows(ids, window, stride)
    assert sum(w.num_scored for w in windows) == length - 1
    scored = [t for w in windows for t in w.token_ids[len(w.token_ids) - w.num_scored :]]
    assert scored == ids[1:]  # in order, each once
    assert all(len(w.token_ids) <= window and w.num_scored < len(w.token_ids) for w in windows)


def test_bad_windows_are_refused():
    with pytest.raises(ConfigError, match="stride"):
        sliding_windows(list(range(10)), 4, 4)  # no overlap: each window's first target unscored
    with pytest.raises(ConfigError, match="fewer than 2 tokens"):
        sliding_windows([1], 4, 2)
