"""Time `lance eval` per benchmark and per item on this machine, to size an evaluation budget.

    flock /tmp/lance-cpu.lock python scripts/bench_eval.py smollm2-135m --n 16 --ifeval-n 16

Each multiple-choice benchmark runs alone on N seeded items (one lm-eval call each; the fixed
cost of a call, mostly the model load, is timed first), once per `--engines` entry: `lance` (our
scoring path, what `lance eval` uses) and `hf` (lm-eval's own hf model); with both, each line also
gives hf's time over ours and whether every item's verdict agrees. IFEval generates for N prompts
(greedy, 256 new tokens). Prints one JSON line per part: seconds, seconds per item, score.
Nothing is cached (a fresh temporary result cache).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from lance_llm import models
from lance_llm.config import EvalConfig
from lance_llm.evaluate import harness, runner


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--ifeval-n", type=int, default=16)
    ap.add_argument("--ifeval", default="../shared/data/ifeval/dev.jsonl")
    ap.add_argument("--benchmarks", default=",".join(b for b in harness.METRIC if b != "gsm8k"))
    ap.add_argument("--engines", default="lance", help="comma-separated, of " + ", ".join(harness.ENGINES))
    ap.add_argument("--max-new-tokens", type=int, default=256)
    args = ap.parse_args()
    m = models.resolve(args.model)
    target = runner.Target(args.model, None, m.path, m.fingerprint)
    with tempfile.TemporaryDirectory() as tmp:
        if args.ifeval_n:
            cfg = EvalConfig(ifeval_path=args.ifeval, ifeval_limit=args.ifeval_n, benchmarks=[],
                             max_new_tokens=args.max_new_tokens)
            ev = runner.Evaluator(cfg, results_cache=Path(tmp), echo=lambda s: None)
            t0 = time.time()
            res = ev.model_results(target)["ifeval"]
            secs = time.time() - t0
            items = res["items"]
            print(json.dumps({"model": args.model, "part": "ifeval", "n": len(items), "seconds": round(secs, 1),
                              "per_item": round(secs / len(items), 2),
                              "prompt_strict": sum(i["prompt_strict"] for i in items) / len(items)}), flush=True)
        engines = args.engines.split(",")
        for engine in engines:
            t0 = time.time()  # one lm-eval call on a single 2-choice item: about the fixed cost (model load)
            harness.run(m.path, {"winogrande": 1}, seed=0, engine=engine, fingerprint=m.fingerprint)
            print(json.dumps({"model": args.model, "engine": engine, "part": "lm-eval fixed cost (load + 1 item)",
                              "seconds": round(time.time() - t0, 1)}), flush=True)
        for b in [x for x in args.benchmarks.split(",") if x]:
            seen: dict[str, tuple[float, list[float]]] = {}
            for engine in engines:
                t0 = time.time()
                per = harness.run(m.path, {b: args.n}, seed=0, engine=engine, fingerprint=m.fingerprint)[b]
                seen[engine] = (time.time() - t0, [i["correct"] for i in per])
                secs, correct = seen[engine]
                row = {"model": args.model, "engine": engine, "part": b, "n": len(per), "seconds": round(secs, 1),
                       "per_item": round(secs / len(per), 2), "acc": sum(correct) / len(per)}
                if {"lance", "hf"} <= seen.keys():
                    row.update(hf_over_lance=round(seen["hf"][0] / seen["lance"][0], 2),
                               same_verdicts=seen["hf"][1] == seen["lance"][1])
                print(json.dumps(row), flush=True)

if __name__ == "__main__":
    main()
