"""Paired comparisons of two models on the same items: is B better than A, or is it noise?

    compare(a_items, b_items)  ->  {"items", "a", "b", "delta", "test", "p" | "ci95", ...}

`a_items` / `b_items` map item key -> (numerator, denominator), as table.Row.items holds them for
one metric. Only the keys both have count.
- Pass/fail metrics (every denominator 1 and every numerator 0 or 1: an IFEval prompt, a
  multiple-choice question, a GSM8K answer): the exact McNemar test. Under "no difference", each
  discordant item (right for one model only) is right for B with probability 1/2, so the two-sided
  p-value is the binomial tail of the smaller discordant count, doubled (capped at 1).
- Other ratios (IFEval's instruction level): a paired bootstrap over items, with a 95% percentile
  interval of B - A. The interval excludes 0 when the items support a difference.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Items = dict[str, tuple[float, float]]


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value for `a_only` items right only for A, `b_only` only for B."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def _binary(items: Items) -> bool:
    return all(den == 1 and num in (0, 1) for num, den in items.values())


def compare(a_items: Items, b_items: Items, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    keys = sorted(set(a_items) & set(b_items))
    if not keys:
        raise ValueError("the two models share no item")
    a = np.array([a_items[k] for k in keys], dtype=float)
    b = np.array([b_items[k] for k in keys], dtype=float)
    sa, sb = a[:, 0].sum() / a[:, 1].sum(), b[:, 0].sum() / b[:, 1].sum()
    out: dict[str, Any] = {"items": len(keys), "a": round(float(sa), 4), "b": round(float(sb), 4),
                           "delta": round(float(sb - sa), 4)}
    if _binary({k: a_items[k] for k in keys}) and _binary({k: b_items[k] for k in keys}):
        a_only = int(((a[:, 0] == 1) & (b[:, 0] == 0)).sum())
        b_only = int(((a[:, 0] == 0) & (b[:, 0] == 1)).sum())
        return {**out, "test": "exact McNemar", "a_only": a_only, "b_only": b_only,
                "p": round(mcnemar_exact(a_only, b_only), 4)}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(keys), size=(resamples, len(keys)))
    da = a[idx, 0].sum(1) / a[idx, 1].sum(1)
    db = b[idx, 0].sum(1) / b[idx, 1].sum(1)
    lo, hi = np.percentile(db - da, [2.5, 97.5])
    return {**out, "test": "paired bootstrap", "ci95": [round(float(lo), 4), round(float(hi), 4)]}


def describe(c: dict[str, Any]) -> str:
    """One table cell: `+0.050 (p 0.031; 12 vs 5)` or `+0.012 [-0.010, +0.034]`."""
    if c["test"] == "exact McNemar":
        return f"{c['delta']:+.3f} (p {c['p']:.3f}; {c['b_only']} vs {c['a_only']})"
    lo, hi = c["ci95"]
    return f"{c['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
