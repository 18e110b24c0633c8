"""Judge reliability: how often the model's own judge ranks a labelled pair right.

A pair is right when the gold answer scores strictly higher than its corrupted version (a tie is
wrong). A pair whose either side got no score (an unparsable review) is a parse failure: counted
separately, never read as a score of 0. Each distinct (instruction, response) is scored once,
through the review stage itself (`stages.review.review`), so the judge measured is exactly the
loop's judge with the given `ReviewConfig`; scores are the judge's raw scores (the rank scale is a
monotone re-reading of them and is left out).

    from lance_llm.judge.pairs import load_pairs, select
    pairs, _ = load_pairs()
    result = judge_reliability(backend, cfg.review, select(pairs, "test", 100), system)
    result["accuracy"], result["ci95"], result["per_kind"], result["parse_failure_rate"]
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from ..backends.base import Backend
from ..config import ReviewConfig
from ..prompts import load
from ..records import Sample
from .pairs import KINDS, JudgePair

Score = float | None


def wilson(right: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """95% Wilson score interval for a proportion (sensible at 0, 1 and small n)."""
    if n == 0:
        return None
    p = right / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return round(max(0.0, mid - half), 4), round(min(1.0, mid + half), 4)


def outcome(gold: Score, bad: Score) -> str:
    """`right`, `wrong` (a tie included) or `parse_failure` (either side unscored)."""
    if gold is None or bad is None or not (math.isfinite(gold) and math.isfinite(bad)):
        return "parse_failure"
    return "right" if gold > bad else "wrong"


def _summary(outcomes: Sequence[str]) -> dict[str, Any]:
    right = outcomes.count("right")
    failed = outcomes.count("parse_failure")
    scored = len(outcomes) - failed
    return {
        "pairs": len(outcomes),
        "scored": scored,
        "right": right,
        "accuracy": round(right / scored, 4) if scored else None,
        "ci95": wilson(right, scored),
        # a parse failure counted as wrong: what a judge that fails on the hard pairs really gives
        "accuracy_all": round(right / len(outcomes), 4) if outcomes else None,
        "parse_failures": failed,
        "parse_failure_rate": round(failed / len(outcomes), 4) if outcomes else None,
    }


def metric(pairs: Sequence[JudgePair], scores: Sequence[tuple[Score, Score]]) -> dict[str, Any]:
    """Accuracy (over scored pairs) with its 95% interval, per corruption kind, parse failures,
    the mean gold - corrupted gap, and the per-pair outcomes (for agreement between modes)."""
    outs = [outcome(g, b) for g, b in scores]
    result = _summary(outs)
    result["per_kind"] = {
        k: _summary([o for p, o in zip(pairs, outs, strict=True) if p.kind == k])
        for k in KINDS if any(p.kind == k for p in pairs)
    }
    gaps = [g - b for g, b in scores if g is not None and b is not None]
    result["mean_gap"] = round(sum(gaps) / len(gaps), 4) if gaps else None
    result["outcomes"] = {p.id: o for p, o in zip(pairs, outs, strict=True)}
    result["scores"] = {p.id: [g, b] for p, (g, b) in zip(pairs, scores, strict=True)}
    return result


def agreement(a: dict[str, str], b: dict[str, str]) -> dict[str, Any]:
    """How often two judges give the same outcome on the pairs both scored."""
    both = [k for k in a if k in b and "parse_failure" not in (a[k], b[k])]
    same = sum(a[k] == b[k] for k in both)
    return {"pairs": len(both), "agreement": round(same / len(both), 4) if both else None}


def raw_score(s: Sample) -> Score:
    """The judge's own score of `s` (before any rank scaling); None when unreviewed or unscored."""
    if s.review is None:
        return None
    return s.review.raw_score if s.review.raw_score is not None else s.review.score


def degraded_check(seed: Sequence[Sample], generated: Sequence[Sample]) -> dict[str, Any]:
    """A check inside a run, with no labelled data: the loop asks the model for deliberately worse
    answers to its best seed items (`degraded`), so its judge should score each one below the seed
    answer it was made from. Outcomes as for labelled pairs (the seed answer plays gold), on the
    degraded answers that survived cleaning, by raw score."""
    by_id = {s.id: raw_score(s) for s in seed}
    return _summary([outcome(by_id.get(g.parent_id or ""), raw_score(g)) for g in generated
                     if g.origin == "degraded"])


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            ranks[k] = (i + j) / 2  # ties share their mean rank
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (mid-ranks for ties); None when either side is constant."""
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return round(cov / math.sqrt(va * vb), 4) if va and vb else None


def judge_signals(previous: Sequence[Sample] | None, seed: Sequence[Sample], reviewed: Sequence[Sample],
                  pairs: Sequence[Any]) -> dict[str, Any]:
    """What every run can say about its judge without labels, per iteration:
    - agreement with the previous iteration's judge on the same seed items (their raw scores then
      and now: Spearman's rho, and the share of item pairs both order the same way), when the
      seed was judged again (review.rejudge=changed) by another model;
    - spread of the raw scores (standard deviation, interquartile range) and ties (the share of
      item pairs with equal scores: a judge that cannot tell answers apart);
    - mean words of the chosen and of the rejected answers of the preference pairs made (a
      judge that prefers length shows it here)."""
    out: dict[str, Any] = {}
    now = {s.id: (raw_score(s), s.review.judge if s.review else "") for s in seed}
    if previous is not None:
        common = [(raw_score(p), now[p.id][0]) for p in previous
                  if p.id in now and p.review and p.review.judge != now[p.id][1]
                  and raw_score(p) is not None and now[p.id][0] is not None]
        if len(common) >= 2:
            a, b = [x for x, _ in common], [y for _, y in common]
            pairs_ = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a)) if a[i] != a[j] and b[i] != b[j]]
            same = sum((a[i] > a[j]) == (b[i] > b[j]) for i, j in pairs_)
            out["agreement"] = {"items": len(common), "spearman": spearman(a, b),
                                "pairwise": round(same / len(pairs_), 4) if pairs_ else None}
    scores = sorted(x for x in (raw_score(s) for s in (*seed, *reviewed)) if x is not None)
    if len(scores) >= 2:
        mean = sum(scores) / len(scores)
        std = math.sqrt(sum((x - mean) ** 2 for x in scores) / (len(scores) - 1))
        n = len(scores)

        def q(f: float) -> float:
            return scores[min(n - 1, int(f * n))]

        tied = sum(c * (c - 1) // 2 for c in Counter(round(x, 4) for x in scores).values())
        out["spread"] = {"scores": n, "std": round(std, 4), "iqr": round(q(0.75) - q(0.25), 4),
                         "ties": round(tied / (n * (n - 1) / 2), 4)}
    if pairs:
        def words(side: str) -> float:
            return round(sum(len(getattr(p, side)[-1]["content"].split()) for p in pairs) / len(pairs), 1)

        out["lengths"] = {"pairs": len(pairs), "chosen_words": words("chosen"), "rejected_words": words("rejected")}
    return out


def _sid(instruction: str, response: str) -> str:
    return "j-" + hashlib.sha256(f"{instruction}\x1f{response}".encode()).hexdigest()[:16]


def score_pairs(pairs: Sequence[JudgePair], score_fn: Callable[[list[Sample]], list[Sample]]
                ) -> list[tuple[Score, Score]]:
    """Score each distinct (instruction, response) once with `score_fn`, then read the pairs."""
    items: dict[str, Sample] = {}
    for p in pairs:
        for resp in (p.gold, p.corrupted):
            sid = _sid(p.instruction, resp)
            items.setdefault(sid, Sample(id=sid, instruction=p.instruction, response=resp))
    scored = {s.id: s.score for s in score_fn(list(items.values()))}
    return [(scored[_sid(p.instruction, p.gold)], scored[_sid(p.instruction, p.corrupted)]) for p in pairs]


def judge_reliability(backend: Backend, review_cfg: ReviewConfig, pairs: Sequence[JudgePair],
                      system: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Run the loop's judge (`review_cfg`, raw scale) on `pairs` and measure it: accuracy, 95% CI,
    per-kind accuracy, parse failures, seconds per pair, and the per-pair outcomes and scores.
    Callable per checkpoint by the evaluation code."""
    from ..stages import review as review_stage

    system = load("system") if system is None else system

    def score_fn(samples: list[Sample]) -> list[Sample]:
        done, _ = review_stage.review(samples, backend, review_cfg, system, seed)  # raw scores
        return done

    t0 = time.perf_counter()
    scores = score_pairs(pairs, score_fn)
    seconds = time.perf_counter() - t0
    result = metric(pairs, scores)
    result["mode"] = review_cfg.mode
    result["seconds"] = round(seconds, 2)
    result["seconds_per_pair"] = round(seconds / len(pairs), 4) if pairs else None
    return result


def markdown(results: dict[str, dict[str, Any]], title: str = "Judge reliability") -> str:
    """A Markdown table: one row per mode (results: mode label -> judge_reliability's dict)."""
    kinds = [k for k in KINDS if any(k in r.get("per_kind", {}) for r in results.values())]
    head = ["mode", "pairs", "accuracy", "95% CI", "parse failures", "s/pair", *kinds]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in results.items():
        ci = r.get("ci95")
        row = [label, str(r["pairs"]), _f(r.get("accuracy")), f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else "-",
               f"{100 * (r.get('parse_failure_rate') or 0):.0f}%", _f(r.get("seconds_per_pair"))]
        row += [_f(r["per_kind"].get(k, {}).get("accuracy")) for k in kinds]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
