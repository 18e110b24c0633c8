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
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from lance_llm.judge.own import markdown  # noqa: E402

RESULTS = HERE / "judge_own.json"
TABLE = HERE / "judge_own.md"
CONFIG = HERE.parent / "configs" / "default.yaml"


def measure(model: str, sources: list[str], split: str, limit: int | None, modes: list[str], n: int,
            overrides: list[str]) -> dict[str, dict]:
    from lance_llm.config import load_config
    from lance_llm.judge.run import run_own_judge

    cfg = load_config(CONFIG, [f"model.source={model}", *overrides])
    got = run_own_judge(cfg, model, modes, sources, split, limit, n, out=Path(tempfile.mkdtemp()))["results"]
    return {key.rsplit("|", 1)[1]: {**res, "settings": {**res["settings"], "config": str(CONFIG.relative_to(
        HERE.parent)), "overrides": overrides}} for key, res in got.items()}


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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if not args.table:
        t0 = time.time()
        got = measure(args.model, args.sources.split(","), args.split, args.limit, args.modes.split(","), args.n,
                      args.overrides)
        for source, res in got.items():
            key = f"{args.model}|{args.split}|{source}"
            old = stored.get(key, {})
            same = old.get("answers") == res["answers"]  # same samples: judges measured apart add up
            results = {**(old.get("results", {}) if same else {}), **res["results"]}
            for mode, r in res["results"].items():  # a cost read from the cache: keep the measured one
                if r["seconds_per_item"] is None and same and mode in old.get("results", {}):
                    r["seconds_per_item"] = old["results"][mode]["seconds_per_item"]
            if res["sample_seconds"] is None and same:
                res["sample_seconds"] = old.get("sample_seconds")
            stored[key] = {**res, "results": results,
                           "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"),
                           "commands": [*(old.get("commands", []) if same else []), "python bench/judge_own.py "
                                        + " ".join(argv if argv is not None else sys.argv[1:])]}
        print(f"done in {time.time() - t0:.0f}s", file=sys.stderr)
        RESULTS.write_text(json.dumps(stored, indent=1, ensure_ascii=False) + "\n")
    TABLE.write_text(markdown(stored))
    print(TABLE.read_text(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
