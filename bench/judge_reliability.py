"""Judge benchmark (issue 7): every review mode on every model, on the held-out test pairs.

    flock /tmp/lance-cpu.lock python bench/judge_reliability.py --model smollm2-135m --limit 200 --sampled-limit 10
    flock /tmp/lance-cpu.lock \
        python bench/judge_reliability.py --model qwen2.5-coder-0.5b --limit 150 --sampled-limit 8
    python bench/judge_reliability.py --model smollm2-135m --modes likelihood --tag all  # every test pair
    python bench/judge_reliability.py --table          # rewrite the Markdown table from the stored results

Per model and mode: pairwise accuracy with its 95% interval, accuracy per corruption kind, parse
failures, seconds per pair, the cost ratio against the sampled judge (the method's way, measured
in the same run on the first `--sampled-limit` pairs, as it costs ~20x more), and the agreement
between modes. Results accumulate in bench/judge_results.json (one entry per model, replaced when
re-run), so each model can be measured under its own CPU-lock hold; bench/judge_results.md is
rewritten from all stored entries.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from itertools import combinations
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from lance_llm.config import Config  # noqa: E402
from lance_llm.judge.pairs import load_pairs, select  # noqa: E402
from lance_llm.judge.reliability import agreement, judge_reliability, metric  # noqa: E402

RESULTS = HERE / "judge_results.json"
TABLE = HERE / "judge_results.md"
KINDS = ("truncated", "other_task", "shuffled", "contradicted", "irrelevant")


def measure(model: str, modes: list[str], split: str, limit: int | None, sampled_limit: int,
            samples: int, max_new: int, save=lambda entry: None) -> dict:
    """One model, every mode; `save(entry)` after each mode, so a timeout keeps what was done."""
    from lance_llm import models
    from lance_llm.backends import make_backend
    from lance_llm.prompts import load

    cfg = Config()
    pairs, summary = load_pairs()
    chosen = select(pairs, split, limit)
    resolved = models.resolve(model)
    t0 = time.perf_counter()
    backend = make_backend(cfg, resolved.path, resolved.fingerprint)
    load_s = time.perf_counter() - t0
    system = load("system")
    results = {}
    for mode in modes:
        sub = chosen[:sampled_limit] if mode == "sampled" else chosen
        rcfg = dataclasses.replace(cfg.review, mode=mode, samples=samples,
                                   sampling=dataclasses.replace(cfg.review.sampling, max_new_tokens=max_new))
        print(f"{model}: {mode} on {len(sub)} pairs", file=sys.stderr, flush=True)
        results[mode] = judge_reliability(backend, rcfg, sub, system, seed=0)
        r = results[mode]
        print(f"  accuracy {r['accuracy']} ci {r['ci95']} parse failures {r['parse_failures']} "
              f"s/pair {r['seconds_per_pair']}", file=sys.stderr, flush=True)
        save(_entry(model, resolved.fingerprint, split, chosen, modes, sampled_limit, samples, max_new,
                    backend, cfg, load_s, summary, results))
    return _entry(model, resolved.fingerprint, split, chosen, modes, sampled_limit, samples, max_new,
                  backend, cfg, load_s, summary, results)


def _entry(model, fingerprint, split, chosen, modes, sampled_limit, samples, max_new, backend, cfg, load_s,
           summary, results) -> dict:
    base = results.get("sampled", {}).get("seconds_per_pair")
    for r in results.values():
        r["cost_vs_sampled"] = round(r["seconds_per_pair"] / base, 4) if base else None
    agree = {f"{a} vs {b}": agreement(results[a]["outcomes"], results[b]["outcomes"])
             for a, b in combinations(results, 2)}
    return {"model": model, "fingerprint": fingerprint, "split": split, "pairs": len(chosen),
            "sampled_pairs": min(sampled_limit, len(chosen)) if "sampled" in modes else 0,
            "sampled_settings": {"samples": samples, "max_new_tokens": max_new},
            "dtype": str(getattr(backend, "dtype", "")), "batch_size": cfg.backend.batch_size,
            "load_seconds": round(load_s, 1), "pair_set_source": summary["source"],
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
            "command": " ".join(sys.argv), "results": results, "agreement": agree}


def derive_combined(entry: dict) -> None:
    """Add `combined` (the mean of the expected and criteria scores of each side of each pair,
    exactly what review.mode=combined computes) from this run's stored per-pair scores, with the
    two modes' summed cost, marked `derived`; used when combined was not run itself."""
    res = entry["results"]
    if "combined" in res or not {"expected", "criteria"} <= set(res):
        return
    by_id = {p.id: p for p in load_pairs()[0]}
    ids = list(res["expected"]["scores"])
    pairs = [by_id[i] for i in ids]

    def mean(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round((a + b) / 2, 4)

    scores = [tuple(mean(e, c) for e, c in zip(res["expected"]["scores"][i], res["criteria"]["scores"][i],
                                              strict=True)) for i in ids]
    r = metric(pairs, scores)
    r.update(mode="combined", derived=True,
             seconds_per_pair=round(res["expected"]["seconds_per_pair"] + res["criteria"]["seconds_per_pair"], 4))
    base = res.get("sampled", {}).get("seconds_per_pair")
    r["cost_vs_sampled"] = round(r["seconds_per_pair"] / base, 4) if base else None
    res["combined"] = r
    for a in ("expected", "criteria", "sampled"):
        if a in res:
            entry["agreement"][f"{a} vs combined"] = agreement(res[a]["outcomes"], r["outcomes"])


def table(doc: dict) -> str:
    lines = ["| model | mode | pairs | accuracy | 95% CI | parse failures | s/pair | cost vs sampled | "
             + " | ".join(KINDS) + " |", "|" + "---|" * (8 + len(KINDS))]
    for entry in doc.values():
        for mode, r in entry["results"].items():
            ci = r["ci95"]
            cost = r.get("cost_vs_sampled")
            label = mode + (" (derived)" if r.get("derived") else "")
            row = [entry["model"], label, str(r["pairs"]), _f(r["accuracy"]),
                   f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else "-", f"{100 * r['parse_failure_rate']:.0f}%",
                   f"{r['seconds_per_pair']:.3f}",
                   "-" if cost is None else f"1/{1 / cost:.0f}" if cost < 1 else f"{cost:.1f}x"]
            row += [_f(r["per_kind"].get(k, {}).get("accuracy")) for k in KINDS]
            lines.append("| " + " | ".join(row) + " |")
    agree = [f"- {e['model']}, {k}: {v['agreement']} on {v['pairs']} pairs"
             for e in doc.values() for k, v in e["agreement"].items()]
    head = "\n\nAgreement between modes (same outcome on pairs both scored):\n\n"
    return "\n".join(lines) + head + "\n".join(agree) + "\n"


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=[], help="model source (repeatable)")
    ap.add_argument("--modes", default="likelihood,expected,criteria,sampled", help="comma-separated review modes")
    ap.add_argument("--split", default="test", choices=["dev", "test"])
    ap.add_argument("--limit", type=int, help="pairs per mode (the first N of the split, seeded order)")
    ap.add_argument("--sampled-limit", type=int, default=20, help="pairs for the (costly) sampled judge")
    ap.add_argument("--samples", type=int, default=3, help="sampled judge: reviews per pair (method: 3)")
    ap.add_argument("--max-new", type=int, default=160, help="sampled judge: new tokens per review")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--tag", default="", help="stored as MODEL/SPLIT/TAG (a second entry per model, e.g. `all`)")
    ap.add_argument("--table", action="store_true", help="only rewrite the Markdown table")
    ap.add_argument("--derive-combined", action="store_true",
                    help="add `combined` from stored expected + criteria scores where it was not run")
    args = ap.parse_args()
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    for model in args.model:
        def save(entry: dict, key: str = "/".join(filter(None, [model, args.split, args.tag]))) -> None:
            doc[key] = entry
            args.out.write_text(json.dumps(doc, indent=1) + "\n")

        save(measure(model, args.modes.split(","), args.split, args.limit, args.sampled_limit,
                     args.samples, args.max_new, save))
    if args.derive_combined:
        for entry in doc.values():
            derive_combined(entry)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    md = table(doc)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
