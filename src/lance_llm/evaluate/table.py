"""Scores, 95% intervals and the results table of `lance eval` (JSON + Markdown).

Every metric is a ratio over items, sum(numerator) / sum(denominator): one item is one IFEval
prompt (prompt level: 1/1 or 0/1; instruction level: instructions followed / instructions) or one
multiple-choice question (1/1 or 0/1). Intervals come from the bootstrap over items:
- a row's own interval: percentile interval of its score over resamples;
- Δ against the previous row (base -> M_0 -> M_1 ...): the same resampled items for both rows
  (paired bootstrap), percentile interval of the difference. An interval that excludes 0 is a
  difference the item sample supports; one that includes 0 is not.
The average column is the mean of the headline metrics (IFEval prompt-level strict + each
multiple-choice benchmark), its intervals from resampling every benchmark's items at once.

    python -m lance_llm.evaluate.table RUN_DIR/eval/results.json   # re-print the Markdown table
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

IFEVAL_METRICS = ("ifeval_prompt_strict", "ifeval_inst_strict", "ifeval_prompt_loose", "ifeval_inst_loose")
AVERAGE = "average"


@dataclass
class Row:
    model: str  # base, M_0, M_1, ... or a model name
    iteration: int | None  # None: the base / a reference model
    items: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # metric -> key -> (num, den)
    info: dict[str, Any] = field(default_factory=dict)  # checkpoint, fingerprint, seconds...


def ifeval_items(records: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per-prompt verdicts (ifeval.items) as the four IFEval metrics' items."""
    out: dict[str, dict[str, tuple[float, float]]] = {m: {} for m in IFEVAL_METRICS}
    for r in records:
        k = str(r["key"])
        out["ifeval_prompt_strict"][k] = (float(r["prompt_strict"]), 1.0)
        out["ifeval_prompt_loose"][k] = (float(r["prompt_loose"]), 1.0)
        out["ifeval_inst_strict"][k] = (float(sum(r["inst_strict"])), float(len(r["inst_strict"])))
        out["ifeval_inst_loose"][k] = (float(sum(r["inst_loose"])), float(len(r["inst_loose"])))
    return out


def mc_items(records: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    return {str(r["idx"]): (float(r["correct"]), 1.0) for r in records}


def headline(metrics: list[str]) -> list[str]:
    """The metrics averaged: IFEval prompt-level strict and every non-IFEval benchmark."""
    return [m for m in metrics if m == "ifeval_prompt_strict" or not m.startswith("ifeval_")]


class Bootstrap:
    """Resample indices shared by all rows (so differences are paired), one matrix per item set."""

    def __init__(self, resamples: int, seed: int) -> None:
        self.resamples, self.seed = resamples, seed
        self._idx: dict[tuple[str, int], np.ndarray] = {}

    def _indices(self, metric: str, keys: tuple[str, ...]) -> np.ndarray:
        tag = hashlib.sha256(json.dumps([metric, keys]).encode()).hexdigest()[:16]
        cached = self._idx.get((tag, len(keys)))
        if cached is None:
            rng = np.random.default_rng([self.seed, int(tag, 16) % (2**32)])
            cached = rng.integers(0, len(keys), size=(self.resamples, len(keys)))
            self._idx[(tag, len(keys))] = cached
        return cached

    def dist(self, row: Row, metric: str, keys: tuple[str, ...]) -> np.ndarray:
        items = row.items[metric]
        num = np.array([items[k][0] for k in keys])
        den = np.array([items[k][1] for k in keys])
        idx = self._indices(metric, keys)
        return num[idx].sum(axis=1) / np.maximum(den[idx].sum(axis=1), 1e-12)


def _score(row: Row, metric: str, keys: tuple[str, ...] | None = None) -> float | None:
    items = row.items.get(metric)
    if not items:
        return None
    pairs = list(items.values()) if keys is None else [items[k] for k in keys]
    den = sum(d for _, d in pairs)
    return sum(n for n, _ in pairs) / den if den else None


def _ci(values: np.ndarray) -> list[float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def build(rows: list[Row], resamples: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """JSON rows: scores, item counts, 95% intervals, paired Δ against the previous row."""
    boot = Bootstrap(resamples, seed)
    metrics = list(dict.fromkeys(m for r in rows for m in r.items))
    heads = headline(metrics)
    out: list[dict[str, Any]] = []
    prev: Row | None = None
    for row in rows:
        scores: dict[str, float | None] = {}
        ci: dict[str, list[float]] = {}
        delta: dict[str, dict[str, Any]] = {}
        own: dict[str, np.ndarray] = {}  # this row's bootstrap distributions (own items), for the average
        pair_now: dict[str, np.ndarray] = {}
        pair_prev: dict[str, np.ndarray] = {}
        for m in metrics:
            s = _score(row, m)
            if s is None:
                continue
            scores[m] = round(s, 4)
            keys = tuple(sorted(row.items[m]))
            own[m] = boot.dist(row, m, keys)
            ci[m] = _ci(own[m])
            if prev is not None and prev.items.get(m):
                common = tuple(sorted(set(keys) & set(prev.items[m])))
                if common:
                    pair_now[m], pair_prev[m] = boot.dist(row, m, common), boot.dist(prev, m, common)
                    d = pair_now[m] - pair_prev[m]
                    point = _score(row, m, common) - _score(prev, m, common)  # type: ignore[operator]
                    delta[m] = {"delta": round(point, 4),
                                "ci95": _ci(d), "items": len(common), "against": prev.model}
        if heads and all(m in own for m in heads):
            scores[AVERAGE] = round(float(np.mean([scores[m] for m in heads])), 4)
            ci[AVERAGE] = _ci(np.mean([own[m] for m in heads], axis=0))
            if prev is not None and all(m in pair_now for m in heads):
                d = np.mean([pair_now[m] - pair_prev[m] for m in heads], axis=0)
                prev_avg = np.mean([_score(prev, m) or 0.0 for m in heads])
                delta[AVERAGE] = {"delta": round(float(scores[AVERAGE] - prev_avg), 4), "ci95": _ci(d),
                                  "items": None, "against": prev.model}
        out.append({"model": row.model, "iteration": row.iteration, "scores": scores,
                    "n": {m: len(row.items[m]) for m in metrics if row.items.get(m)},
                    "ci95": ci, "delta_vs_previous": delta, **row.info})
        prev = row
    return out


def select_best(rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The row with the highest dev `metric` (ties: the earlier row), with the reason in words."""
    scored = [r for r in rows if r["scores"].get(metric) is not None]
    if not scored:
        return None
    best = max(scored, key=lambda r: r["scores"][metric])  # max keeps the first of equals
    first = scored[0]
    why = (f"{best['model']} has the highest {metric} on the dev set: {best['scores'][metric]:.3f} "
           f"over {best['n'][metric]} {'prompts' if metric.startswith('ifeval_') else 'items'} (others: "
           + ", ".join(f"{r['model']} {r['scores'][metric]:.3f}" for r in scored if r is not best) + ")")
    if best is not first:
        d = best["scores"][metric] - first["scores"][metric]
        dd = best["delta_vs_previous"].get(metric)
        why += f"; {d:+.3f} against {first['model']}"
        if dd and dd["against"] == scored[scored.index(best) - 1]["model"]:
            lo, hi = dd["ci95"]
            why += (f"; against the row before it ({dd['against']}) {dd['delta']:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}]"
                    + (" (includes 0: not a clear difference)" if lo <= 0 <= hi else ""))
    elif len(scored) > 1:
        why += "; no later model scored higher, so the first one is kept"
    return {"model": best["model"], "iteration": best["iteration"], "metric": metric,
            "score": best["scores"][metric], "reason": why}


def _cell(row: dict[str, Any], m: str) -> str:
    s = row["scores"].get(m)
    if s is None:
        return "-"
    lo, hi = row["ci95"][m]
    text = f"{s:.3f} [{lo:.2f}, {hi:.2f}]"
    d = row["delta_vs_previous"].get(m)
    if d:
        dlo, dhi = d["ci95"]
        mark = "" if dlo <= 0 <= dhi else " *"
        text += f"<br>Δ {d['delta']:+.3f} [{dlo:+.2f}, {dhi:+.2f}]{mark}"
    return text


def markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    metrics = list(dict.fromkeys(m for r in rows for m in r["scores"]))
    if AVERAGE in metrics:
        metrics = [m for m in metrics if m != AVERAGE] + [AVERAGE]
    n_of = {m: next((r["n"].get(m) for r in rows if r["n"].get(m)), None) for m in metrics}
    head = [f"{m} (n={n_of[m]})" if n_of[m] else m for m in metrics]
    lines = ["| model | " + " | ".join(head) + " |", "|---|" + "---|" * len(metrics)]
    lines += [f"| {r['model']} | " + " | ".join(_cell(r, m) for m in metrics) + " |" for r in rows]
    notes = ["", "Score [95% bootstrap CI]; Δ: paired bootstrap difference against the row above "
             "(* = the interval excludes 0). average = mean of "
             + ", ".join(headline([m for m in metrics if m != AVERAGE])) + "."]
    best = results.get("best")
    if best:
        notes.append(f"Best iteration (chosen on dev only, {best['metric']}): **{best['model']}**. {best['reason']}.")
    if results.get("pending"):
        notes.append(f"Not evaluated yet: {', '.join(results['pending'])}.")
    sel = results.get("selection")
    if sel:
        notes.append(f"Dev (used for choosing): {sel['dev']}. Reported only (never used for choosing): "
                     f"{', '.join(sel['reported_only']) or 'none'}.")
    return "\n".join(lines + notes) + "\n"


if __name__ == "__main__":
    from pathlib import Path

    print(markdown(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))), end="")
