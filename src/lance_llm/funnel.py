"""The data funnel of an iteration: how many records each stage received, kept and lost.

Built from the stage statistics the loop records in each manifest; printed after every iteration
and saved as `funnel.md` / `funnel.json` in the run directory.

    row = funnel_row(1, stats)          # stats: {stage name: stage stats}
    print(funnel_markdown([row]))
"""

from __future__ import annotations

from typing import Any

COLUMNS = [
    ("iter", "iteration"),
    ("seeds", "seed items"),
    ("unscored seeds", "seed items whose review did not parse (no score, excluded)"),
    ("low", "score <= threshold: rewrite branch"),
    ("high", "score > threshold: degrade branch"),
    ("new instr.", "new instructions parsed from the model's replies"),
    ("new resp.", "responses written to new instructions"),
    ("degraded", "degraded responses parsed"),
    ("generated", "candidates entering cleaning"),
    ("cleaned", "candidates kept by cleaning"),
    ("reviewed", "cleaned candidates with a score"),
    ("SFT kept", "new pairs scored above the SFT threshold"),
    ("pairs", "preference pairs made"),
    ("parse fail", "judge replies + generation replies that did not parse"),
    ("SFT total", "accumulated SFT examples trained on"),
    ("DPO total", "accumulated preference pairs trained on"),
    ("LLM calls", "new calls / answered from the cache"),
]


def funnel_row(t: int, stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rs, g, c, rg, a = (stats[k] for k in ("review_seed", "generate", "clean", "review_generated", "annotate"))
    calls = [s.get("llm_calls", {}) for s in (rs, g, rg)]
    return {
        "iter": t,
        "seeds": rs["seed"],
        "unscored seeds": rs["unscored"],
        "low": g["low_seeds"],
        "high": g["high_seeds"],
        "new instr.": g["new_instructions"],
        "new resp.": g["new_responses"],
        "degraded": g["degraded_responses"],
        "generated": c["input"],
        "cleaned": c["kept"],
        "reviewed": rg["scored"],
        "SFT kept": a["sft_new"],
        "pairs": a["pairs_new"],
        "parse fail": rs["reply_parse_failures"] + rg["reply_parse_failures"]
        + g["instruction_parse_failures"] + g["degrade_parse_failures"],
        "SFT total": a["sft_total"],
        "DPO total": a["dpo_total"],
        "LLM calls": f"{sum(x.get('misses', 0) for x in calls)}/{sum(x.get('hits', 0) for x in calls)}",
        "clean drops": {k: v for k, v in c.items() if k not in ("input", "kept") and v},
        "train": stats.get("train", {}),
    }


def funnel_markdown(rows: list[dict[str, Any]]) -> str:
    names = [name for name, _ in COLUMNS]
    lines = ["| " + " | ".join(names) + " |", "|" + "---:|" * len(names)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[n]) for n in names) + " |")
    drops = [f"iter {r['iter']}: " + (", ".join(f"{k} {v}" for k, v in r["clean drops"].items()) or "none")
             for r in rows]
    return "\n".join([*lines, "", "Clean drops by rule: " + "; ".join(drops)])
