"""``shardfeed demo``'s table shows each mode's own limit and never a noisy ratio as a result."""

from __future__ import annotations

from server.demo import _mode_line

FIG = {"samples_per_s": 915.6, "duplicates": 0, "missing": 0, "ratio_to_limit": 1.89}


def test_a_noisy_mode_is_marked_with_its_limit_and_spread() -> None:
    line = _mode_line("tar-aware", {**FIG, "limit_samples_per_s": 484.4, "noisy": True,
                                    "limit_spread": 0.32})  # fmt: skip
    assert "1.89x limit 484/s noisy ±32%" in line


def test_a_clean_mode_shows_its_limit_and_no_mark() -> None:
    line = _mode_line("tar-aware", {**FIG, "ratio_to_limit": 0.9, "limit_samples_per_s": 1017.0})
    assert "0.90x limit 1017/s  duplicates" in line and "noisy" not in line
    assert "-  duplicates" in _mode_line("map", {**FIG, "ratio_to_limit": None})
