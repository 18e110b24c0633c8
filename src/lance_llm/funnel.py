"""The data funnel of an iteration: how many records each stage received, kept and lost.

Built from the columns each stage declares (lance_llm.stage.Column) over its recorded stats, in
stage order; columns several stages contribute (parse failures) are summed and come last, then
the LLM calls of every stage that used a backend. Printed after every iteration and saved as
`funnel.md` / `iter_NN/funnel.json` in the run directory.

    row = funnel_row(1, stats, ITERATION)          # stats: {stage name: stage stats}
    print(funnel_markdown([row], ITERATION))
"""

from __future__ import annotations

from typing import Any

from .stage import Column, Stage

LLM_CALLS = Column("LLM calls", "new calls / answered from the cache", lambda st: st.get("llm_calls"), total=True)


def columns(stages: tuple[Stage, ...]) -> list[Column]:
    """Every column in funnel order: iter, then the stages' own, then the summed ones."""
    own, totals = [], {}
    for stage in stages:
        for c in stage.funnel:
            if c.total:
                totals.setdefault(c.name, c)
            else:
                own.append(c)
    return [Column("iter", "iteration", lambda st: None), *own, *totals.values(), LLM_CALLS]


def funnel_row(t: int, stats: dict[str, dict[str, Any]], stages: tuple[Stage, ...]) -> dict[str, Any]:
    row: dict[str, Any] = {"iter": t}
    for stage in stages:
        st = stats.get(stage.name)
        if st is None:
            continue
        for c in stage.funnel:
            value = c.value(st)
            if c.total and c.name in row:  # several stages' counts add up, their {key: ...} lines merge
                value = {**row[c.name], **value} if isinstance(value, dict) else row[c.name] + value
            row[c.name] = value
    calls = [st["llm_calls"] for st in stats.values() if st and "llm_calls" in st]
    row[LLM_CALLS.name] = f"{sum(c.get('misses', 0) for c in calls)}/{sum(c.get('hits', 0) for c in calls)}"
    return row


def funnel_markdown(rows: list[dict[str, Any]], stages: tuple[Stage, ...]) -> str:
    cols = columns(stages)
    names = [c.name for c in cols if c.style == "cell"]
    lines = ["| " + " | ".join(names) + " |", "|" + "---:|" * len(names)]
    lines += ["| " + " | ".join(str(row.get(n, "")) for n in names) + " |" for row in rows]
    for c in (c for c in cols if c.style == "line"):
        if c.total and not any(r.get(c.name) for r in rows):
            continue  # a note that has nothing to say this run
        per = [f"iter {r['iter']}: " + (", ".join(f"{k} {v}" for k, v in (r.get(c.name) or {}).items()) or "none")
               for r in rows]
        lines += ["", f"{c.description}: " + "; ".join(per)]
    return "\n".join(lines)
