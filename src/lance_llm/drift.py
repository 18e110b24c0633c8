"""Diversity and drift of the generated data, per iteration, so that collapse is visible.

A self-training loop can narrow its own data: fewer distinct words, answers that repeat each
other, shorter (or runaway) answers, more candidates caught by the duplicate rules. This module
measures that from a run directory's files, nothing else:

    distinct-1/2   distinct / all word n-grams (lower-cased words; an n-gram never crosses texts)
    self-ROUGE-L   mean pairwise ROUGE-L F1 of at most 200 seeded-sampled texts (high = repetitive)
    mean words     mean length in words
    survival       per cleaning rule, in the order the rules are applied (stages/clean.py), the
                   share of the candidates reaching that rule that it lets through

for the new instructions (each distinct one once) and for all generated responses (new and
degraded) of every iteration.

    python -m lance_llm.drift runs/default      # prints the Markdown table
    rows = drift_rows(Path("runs/default")); print(drift_markdown(rows))
"""

from __future__ import annotations

import random
import re
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

from .records import Sample
from .rundir import RunDir
from .stages import producer
from .stages.clean import REASONS

MAX_ROUGE_TEXTS = 200  # self-ROUGE is quadratic in pure Python: 200 texts = 19,900 LCS computations
DIVERSITY_METRICS = ("texts", "distinct-1", "distinct-2", "self-ROUGE-L", "mean words")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (punctuation is not a word)."""
    return re.findall(r"\w+", text.lower())


def distinct_n(texts: list[str], n: int) -> float | None:
    """Distinct n-grams / all n-grams over the texts (n-grams never cross a text boundary)."""
    grams = [tuple(w[i:i + n]) for w in map(words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def self_rouge(texts: list[str], max_texts: int = MAX_ROUGE_TEXTS, seed: int = 0) -> float | None:
    """Mean pairwise ROUGE-L F1 over at most `max_texts` texts sampled with a fixed seed.
    High = the texts repeat each other."""
    if len(texts) < 2:
        return None
    from rouge_score import rouge_scorer

    if len(texts) > max_texts:
        texts = random.Random(seed).sample(texts, max_texts)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [scorer.score(a, b)["rougeL"].fmeasure for a, b in combinations(texts, 2)]
    return sum(scores) / len(scores)


def diversity(texts: list[str]) -> dict[str, float | int | None]:
    toks = [words(t) for t in texts]
    n_words = sum(map(len, toks))
    return {
        "texts": len(texts),
        "distinct-1": distinct_n(texts, 1),
        "distinct-2": distinct_n(texts, 2),
        "mean length (words)": n_words / len(texts) if texts else None,
        "mean word length (chars)": sum(len(w) for t in toks for w in t) / n_words if n_words else None,
        "self-ROUGE-L": self_rouge(texts),
    }


def generated_groups(generated: list[Sample]) -> dict[str, list[str]]:
    """The texts whose diversity is tracked: each distinct new instruction once (its answers share
    it; a degraded answer keeps its seed's instruction), and every generated response."""
    instructions = list(dict.fromkeys(s.instruction for s in generated if s.origin == "new"))
    return {"instructions": instructions, "responses": [s.response for s in generated]}


def survival(counts: dict[str, int]) -> dict[str, float | None]:
    """Per rule, in application order: kept / reaching the rule (None when nothing reached it).
    Each dropped candidate has exactly one reason, the first rule that applied."""
    reaching = counts.get("input", 0)
    out: dict[str, float | None] = {}
    for rule in REASONS:
        dropped = counts.get(rule, 0)
        out[rule] = (reaching - dropped) / reaching if reaching else None
        reaching -= dropped
    return out


def iteration_drift(generated: list[Sample], clean_counts: dict[str, int] | None) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for group, texts in generated_groups(generated).items():
        d = diversity(texts)
        row[group] = {"texts": d["texts"], "distinct-1": d["distinct-1"], "distinct-2": d["distinct-2"],
                      "self-ROUGE-L": d["self-ROUGE-L"], "mean words": d["mean length (words)"]}
    row["survival"] = survival(clean_counts) if clean_counts else None
    row["kept share"] = (clean_counts["kept"] / clean_counts["input"]
                         if clean_counts and clean_counts.get("input") else None)
    return row


def drift_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per iteration that has generated candidates (the clean counts: the stats of the
    stage that writes `cleaned`)."""
    rd, rows = RunDir(run_dir), []
    for t in rd.iterations():
        if t == 0 or not rd.path(t, "generated").is_file():
            continue
        rows.append({"iter": t, **iteration_drift(rd.read(t, "generated"), rd.stats(t, producer("cleaned")))})
    return rows


def _f(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def drift_markdown(rows: list[dict[str, Any]]) -> str:
    """Two tables: diversity of instructions/responses, and survival share per cleaning rule."""
    metrics = DIVERSITY_METRICS
    head = ["iter"] + [f"{short} {m}" for short in ("instr.", "resp.") for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in rows:
        cells = [str(r["iter"])] + [_f(r[g][m]) for g in ("instructions", "responses") for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    rules = list(REASONS)
    lines += ["", "| iter | " + " | ".join(rules) + " | kept share |", "|" + "---:|" * (len(rules) + 2)]
    for r in rows:
        surv = r["survival"] or {}
        lines.append(f"| {r['iter']} | " + " | ".join(_f(surv.get(k)) for k in rules) + f" | {_f(r['kept share'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(drift_markdown(drift_rows(Path(sys.argv[1]))))
