"""The intervals and the paired test (bnrepro/stats.py) against reference values."""

import math

import pytest

from bnrepro.stats import Paired, binomial_se, mcnemar, over_seeds, wilson


def test_wilson_matches_the_textbook_values():
    # Newcombe (1998), Table I, example: 81 of 263 -> 0.2553 to 0.3662 (Wilson, 95%)
    low, high = wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    assert wilson(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))  # stays in [0, 1]
    assert wilson(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        wilson(3, 0)


def test_binomial_standard_error():
    assert binomial_se(50, 100) == pytest.approx(0.05)


def test_mcnemar_counts_only_disagreements():
    a = [True] * 10 + [False] * 2 + [True] * 30
    b = [False] * 10 + [True] * 2 + [True] * 30
    result = mcnemar(a, b)
    assert (result.a_only, result.b_only) == (10, 2)
    # exact two-sided binomial: P(X <= 2 | 12, 1/2) x 2 = 2 x 79 / 4096
    assert result.p_value == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert result.beats() == "A" and Paired(3, 2, 0.9).beats() == "neither"
    assert mcnemar([True, False], [True, False]) == Paired(0, 0, 1.0)


def test_over_seeds_is_a_t_interval():
    spread = over_seeds([0.50, 0.52, 0.54])
    assert spread.mean == pytest.approx(0.52) and spread.sd == pytest.approx(0.02)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert (spread.low, spread.high) == (pytest.approx(0.52 - half), pytest.approx(0.52 + half))
    one = over_seeds([0.4])
    assert (one.sd, one.low, one.high, one.n) == (0.0, 0.4, 0.4, 1)
