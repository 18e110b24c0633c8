"""Own-sample judge benchmark (issue 13): the judge on the model's own answers, labelled objectively.

    flock /tmp/lance-cpu.lock python bench/judge_own.py --model smollm2-135m --split test --limit 60 \
        --modes likelihood,expected
    python bench/judge_own.py --table        # rewrite the Markdown table from the stored results

Per model, source (IFEval, GSM8K) and judge (review modes, and the no-model rules shorter /
longer / random): pairwise accuracy with its 95% bootstrap interval over prompts, the judge's
pick of n against a random pick and the best of n, the bottom pick, top-vs-bottom right/wrong,
the loop's SFT selection precision against the base rate and its preference pairs right / equal
/ wrong, seconds per judged answer (lance_llm.judge.own). Samples and scores go through a durable
cache (<lance cache>/judge_own/cache.sqlite), so adding a mode re-samples nothing. Results
accumulate in bench/judge_own.json under (model, split, source); bench/judge_own.md is rewritten.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

RESULTS = HERE / "judge_own.json"
TABLE = HERE / "judge_own.md"
CONFIG = HERE.parent / "configs" / "default.yaml"


def measure(model: str, sources: list[str], split: str, limit: int | None, modes: list[str], n: int,
            overrides: list[str]) -> dict[str, dict]:
    from lance_llm import models
    from lance_llm.backends import backend_fingerprint, make_backend
    from lance_llm.backends.cache import CachedBackend
    from lance_llm.config import load_config
    from lance_llm.judge.own import load_items, run_own
    from lance_llm.prompts import load
    from lance_llm.seeds import load_seed

    cfg = load_config(CONFIG, [f"model.source={model}", *overrides])
    resolved = models.resolve(cfg.model.source, cfg.model.cache_dir)
    fp = backend_fingerprint(cfg, resolved.path)
    backend = CachedBackend(lambda: make_backend(cfg, resolved.path, fp), fp,
                            models.cache_root(cfg.model.cache_dir) / "judge_own" / "cache.sqlite",
                            chunk_size=cfg.backend.batch_size * 4)
    out = {}
    try:
        for source in sources:
            items = load_items(source, split, limit, cfg.seed)
            backend.label = f"{model} {source}"
            res = run_own(backend, cfg, items, modes, n, load("system"), load_seed(cfg.data, cfg.seed), cfg.seed,
                          progress=lambda s, src=source: print(f"{model} {src}: {s}", file=sys.stderr, flush=True))
            res["settings"] = {"config": str(CONFIG.relative_to(HERE.parent)), "overrides": overrides,
                               "sampling": vars(cfg.generate.response_sampling), "scale": cfg.review.scale,
                               "sft_threshold": cfg.annotate.sft_threshold, "pair_margin": cfg.annotate.pair_margin}
            out[source] = res
    finally:
        backend.close()
    return out


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(results: dict) -> str:
    head = ["model", "source", "split", "prompts (differing)", "judge", "pairwise [95% CI]", "pick", "random", "best",
            "bottom", "gap closed", "top/bottom right:wrong", "SFT precision (base, selected)",
            "pairs right/equal/wrong", "s/answer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, entry in results.items():
        model, split, source = key.split("|")
        for judge, r in entry["results"].items():
            ci = r.get("pairwise_ci95")
            pw = _f(r["pairwise"]) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
            sft = f"{_f(r['sft_precision'])} ({_f(r['base_rate'])}, {r['sft_selected']})"
            pairs = "/".join(str(r["preference_pairs"][k]) for k in ("right", "equal", "wrong"))
            lines.append("| " + " | ".join([
                model, source, split, f"{r['prompts']} ({r['prompts_with_differing_labels']})", judge, pw,
                _f(r["pick"]), _f(r["random"]), _f(r["best"]), _f(r["bottom"]), _f(r["gap_closed"]),
                f"{r['top_bottom']['right']}:{r['top_bottom']['wrong']}", sft, pairs,
                _f(r["seconds_per_item"], 3)]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sources", default="ifeval,gsm8k")
    ap.add_argument("--split", choices=["dev", "test"], default="test")
    ap.add_argument("--limit", type=int, default=None, help="prompts per source (seeded order); default all")
    ap.add_argument("--modes", default="likelihood,expected")
    ap.add_argument("--n", type=int, default=4, help="answers sampled per prompt (the method's 4)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--table", action="store_true", help="only rewrite the Markdown table")
    args = ap.parse_args(argv)
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if not args.table:
        t0 = time.time()
        got = measure(args.model, args.sources.split(","), args.split, args.limit, args.modes.split(","), args.n,
                      args.overrides)
        for source, res in got.items():
            stored[f"{args.model}|{args.split}|{source}"] = {
                **res, "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"),
                "command": "python bench/judge_own.py " + " ".join(argv if argv is not None else sys.argv[1:])}
        print(f"done in {time.time() - t0:.0f}s", file=sys.stderr)
        RESULTS.write_text(json.dumps(stored, indent=1, ensure_ascii=False) + "\n")
    TABLE.write_text(table(stored))
    print(TABLE.read_text(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
