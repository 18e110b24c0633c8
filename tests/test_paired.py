"""Paired comparisons (evaluate/paired.py): exact McNemar on pass/fail items, paired bootstrap on ratios."""

from __future__ import annotations

import math

import pytest

from lance_llm.evaluate.paired import compare, describe, mcnemar_exact


def test_mcnemar_exact_matches_the_binomial_tail() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)  # 5 discordant, all for B: 2 * (1/2)^5
    assert mcnemar_exact(1, 4) == pytest.approx(2 * (1 + 5) / 32)
    assert mcnemar_exact(4, 1) == mcnemar_exact(1, 4)  # two-sided
    assert mcnemar_exact(3, 3) == 1.0  # capped
    # 5 discordant prompts out of 40 (results/experiment.md's old step): 0 vs 5 -> p = 0.0625
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)
    n, k = 30, 8
    assert mcnemar_exact(k, n - k) == pytest.approx(2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def test_compare_pass_fail_counts_discordant_items_on_shared_keys_only() -> None:
    a = {"q1": (1.0, 1.0), "q2": (0.0, 1.0), "q3": (0.0, 1.0), "q4": (1.0, 1.0), "only_a": (1.0, 1.0)}
    b = {"q1": (1.0, 1.0), "q2": (1.0, 1.0), "q3": (1.0, 1.0), "q4": (0.0, 1.0), "only_b": (0.0, 1.0)}
    c = compare(a, b)
    assert (c["items"], c["a_only"], c["b_only"], c["test"]) == (4, 1, 2, "exact McNemar")
    assert (c["a"], c["b"], c["delta"]) == (0.5, 0.75, 0.25)
    assert c["p"] == pytest.approx(1.0)
    assert describe(c) == "+0.250 (p 1.000; 2 vs 1)"


def test_compare_ratio_items_uses_a_paired_bootstrap() -> None:
    # instruction-level items: B follows one more instruction on every prompt
    a = {f"p{i}": (1.0, 3.0) for i in range(50)}
    b = {f"p{i}": (2.0, 3.0) for i in range(50)}
    c = compare(a, b)
    assert c["test"] == "paired bootstrap" and c["delta"] == pytest.approx(1 / 3, abs=1e-4)
    assert c["ci95"][0] > 0.3 and c["ci95"][1] < 0.34  # every resample shows the same gain
    same = compare(a, dict(a))
    assert same["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="share no item"):
        compare({"x": (1.0, 1.0)}, {"y": (1.0, 1.0)})
