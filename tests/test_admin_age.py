"""capture.admin.api.age_seconds: the ages retention takes ("30d", "12h", 3600)."""

from __future__ import annotations

import pytest

from capture.admin.api import ApiError, age_seconds


@pytest.mark.parametrize("value, seconds", [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45s", 45),
                                            ("2w", 14 * 86400), ("3600", 3600), (3600, 3600), (0.5, 0.5),
                                            (" 1.5d ", 129600)])
def test_ages(value, seconds):
    """Digits with an optional unit s, m, h, d or w, or a plain positive number of seconds."""
    assert age_seconds(value) == seconds


@pytest.mark.parametrize("value", ["", "0d", "-1d", "30x", "d", "1e3", None, True, [], 0, -5, 1e12])
def test_bad_ages_are_400(value):
    """Anything else is a 400 saying what an age looks like."""
    with pytest.raises(ApiError) as info:
        age_seconds(value)
    assert info.value.status == 400 and "30d" in info.value.message
