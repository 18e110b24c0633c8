"""Yield of the generation templates (issue 15): the share of replies that parse, per prompt kind,
`generate.format` and model, and how many parsed candidates survive cleaning, rule by rule.

    python -m bench.parse_yield --model qwen2.5-coder-0.5b --seeds 24 --n 4 --record
    python -m bench.parse_yield --table        # rewrite results/yield.md from results/yield.json

Both templates run on the same seeds: a seeded sample of the Self-Instruct seed tasks, the data
the experiment starts from. They are new_instruction (each new instruction then gets one answer,
with the loop's response sampling) and degrade_response. Cleaning then sees what the loop would
give it, with the loop's rules and defaults (no decontamination files). Sampling is the loop's:
T=0.7, top-p 0.9, 160 new tokens per reply and 128 per thought, 192 per answer to a new instruction.

Writes results/yield.json (one entry per model and format, merged into what is there) and the
table results/yield.md. `--record` also keeps 3 parsed and 3 failed raw replies per model, format
and kind in tests/fixtures/yield_replies.jsonl, the parser's test data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from bench.common import SEED_TASKS  # noqa: E402
from lance_llm.backends.base import Backend, GenerateRequest, ScoreRequest  # noqa: E402

RESULTS = ROOT / "results" / "yield.json"
TABLE = ROOT / "results" / "yield.md"
FIXTURES = ROOT / "tests" / "fixtures" / "yield_replies.jsonl"
KINDS = {"new_instruction": "instruction", "degrade_response": "degrade"}


class Memo(Backend):
    """Answers a request seen before from memory, so the replies recorded here are the ones the
    stage then parses (the stage asks for exactly the same requests)."""

    def __init__(self, inner: Backend) -> None:
        self.inner, self.fingerprint, self.memo = inner, inner.fingerprint, {}
        self.tokens = inner.tokens

    def generate(self, requests: list[GenerateRequest]) -> list[list[str]]:
        keys = [json.dumps(r.key(), sort_keys=True) for r in requests]
        todo = {k: r for k, r in zip(keys, requests, strict=True) if k not in self.memo}
        for k, out in zip(todo, self.inner.generate(list(todo.values())), strict=True):
            self.memo[k] = out
        return [self.memo[k] for k in keys]

    def score(self, requests: list[ScoreRequest]) -> list[list[float]]:
        return self.inner.score(requests)

    def close(self) -> None:
        self.inner.close()


def measure(model: str, fmt: str, n_seeds: int, n: int, record: bool) -> tuple[dict, list[dict]]:
    from lance_llm import models
    from lance_llm.backends import backend_fingerprint, make_backend
    from lance_llm.config import DataConfig, build_config
    from lance_llm.prompts import load
    from lance_llm.seeds import load_seed
    from lance_llm.stages.clean import REASONS, clean
    from lance_llm.stages.generate import generate, parse_final_answer, templated_replies

    cfg = build_config({"model": {"source": model}, "generate": {
        "format": fmt, "n_instructions": n, "n_degraded": n, "n_responses": 1,
        "sampling": {"max_new_tokens": 160}, "response_sampling": {"max_new_tokens": 192}}})
    seeds = load_seed(DataConfig(seed_path=str(SEED_TASKS), shuffle=True, limit=n_seeds), seed=0)
    m = models.resolve(model)
    backend = Memo(make_backend(cfg, m.path, backend_fingerprint(cfg, m.path)))
    system = load("system")
    t0 = time.time()
    try:
        jobs = [(s, tpl, n, tag) for tpl, tag in KINDS.items() for s in seeds]
        raw = templated_replies(jobs, backend, cfg.generate, system, 1, cfg.seed)
        cands, stats = generate(seeds, seeds, backend, cfg.generate, system, 1, cfg.seed)
    finally:
        backend.close()
    seconds = time.time() - t0
    result = clean({s.id: s for s in seeds}, cands, cfg.clean)
    row: dict = {"model": model, "format": fmt, "seeds": len(seeds), "n": n, "seconds": round(seconds, 1),
                 "generated_tokens": backend.tokens["generated"], "kinds": {}}
    fixtures: list[dict] = []
    for tpl, tag in KINDS.items():
        replies = [r for (s, t, _, _), rs in zip(jobs, raw, strict=True) if t == tpl for r in rs]
        parsed = [parse_final_answer(r) for r in replies]
        origin = "new" if tag == "instruction" else "degraded"
        mine = [c for c in cands if c.origin == origin]
        drops = Counter(d["reason"] for d in result.dropped if d["origin"] == origin)
        row["kinds"][tpl] = {
            "replies": len(replies), "parsed": sum(p is not None for p in parsed),
            "parse_rate": round(sum(p is not None for p in parsed) / max(1, len(replies)), 3),
            "candidates": len(mine), "kept": len(mine) - sum(drops.values()),
            "dropped": {r: drops[r] for r in REASONS if drops[r]},
        }
        if record:
            ok = [(r, p) for r, p in zip(replies, parsed, strict=True) if p is not None][:3]
            bad = [(r, p) for r, p in zip(replies, parsed, strict=True) if p is None][:3]
            fixtures += [{"model": model, "format": fmt, "kind": tpl, "reply": r, "parsed": p} for r, p in ok + bad]
    assert row["kinds"]["new_instruction"]["parsed"] == stats.new_instructions  # the stage parsed the same replies
    return row, fixtures


def table(rows: list[dict]) -> str:
    lines = ["| model | format | kind | replies | parse rate | candidates | kept after cleaning | dropped by rule |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for kind, k in r["kinds"].items():
            dropped = ", ".join(f"{rule} {c}" for rule, c in k["dropped"].items()) or "-"
            lines.append(f"| {r['model']} | {r['format']} | {kind} | {k['replies']} | {100 * k['parse_rate']:.0f}% "
                         f"({k['parsed']}) | {k['candidates']} | {k['kept']} | {dropped} |")
    return "\n".join(lines)


def write_table(rows: list[dict]) -> None:
    runs = "; ".join(f"{r['model']} {r['format']}: {r['seconds']:.0f} s, {r['generated_tokens']} tokens"
                     for r in rows)
    TABLE.write_text(
        "# Yield of the generation templates\n\n"
        "`python -m bench.parse_yield` (see its docstring): Self-Instruct seed tasks (a seeded sample), both\n"
        "templates on every seed, `n` replies each. Parse rate = replies with a non-empty `Final Answer`;\n"
        "a candidate is a parsed new instruction with its one answer, or a parsed degraded answer;\n"
        "cleaning = the loop's rules (stages/clean.py) with its defaults.\n\n"
        f"{table(rows)}\n\nTime and tokens per run: {runs}.\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--formats", default="fill,free")
    ap.add_argument("--seeds", type=int, default=24)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--record", action="store_true", help="keep raw replies as test fixtures")
    ap.add_argument("--table", action="store_true", help="only rewrite results/yield.md")
    args = ap.parse_args()
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    if not args.table:
        fixtures = [f for f in (json.loads(x) for x in FIXTURES.read_text().splitlines())
                    if f["model"] != args.model] if args.record and FIXTURES.exists() else []
        for fmt in args.formats.split(","):
            row, fx = measure(args.model, fmt, args.seeds, args.n, args.record)
            print(json.dumps(row), flush=True)
            rows = [r for r in rows if (r["model"], r["format"]) != (args.model, fmt)] + [row]
            fixtures += fx
        RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
        if args.record:
            FIXTURES.parent.mkdir(parents=True, exist_ok=True)
            FIXTURES.write_text("".join(json.dumps(f) + "\n" for f in fixtures))
    write_table(rows)
    print(table(rows))


if __name__ == "__main__":
    main()
