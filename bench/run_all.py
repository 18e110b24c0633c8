"""Run every benchmark and write bench/results.json and the table in BENCHMARKS.md.

    python -m bench.run_all                  # all of them (make bench)
    python -m bench.run_all --only gen,clean --gen-max-new 64   # a subset, smaller sizes

Each module's sizes are options here with a prefix (`--gen-prompts`, `--train-steps`, ...).
Results already in bench/results.json for benchmarks not run this time are kept; the table
between the BEGIN/END markers in BENCHMARKS.md is regenerated from the whole file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

from . import clean, gen, iteration, judge, train
from .common import ROOT, machine

MODULES = {"gen": gen, "judge": judge, "train": train, "clean": clean, "iteration": iteration}
RESULTS = ROOT / "bench" / "results.json"
DOC = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- BEGIN bench table (make bench) -->", "<!-- END bench table -->"


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:g}" if isinstance(v, float) else str(v)


def table(results: dict) -> str:
    lines = ["| metric | ours | baseline (same run) | ratio | goal | met | command |", "|---|---|---|---|---|---|---|"]
    benchmarks = results.get("benchmarks", {})
    for name in MODULES:
        for key in sorted(k for k in benchmarks if k == name or k.startswith(name + ":")):
            for r in benchmarks[key]["rows"]:
                unit = r.get("unit", "")
                base = f"{_fmt(r['baseline'])} {unit} ({r['baseline_name']})" if r["baseline"] is not None else "-"
                lines.append(f"| {r['metric']} | {_fmt(r['ours'])} {unit} | {base} | {_fmt(r['ratio'])} | "
                             f"{r['goal']} | {'yes' if r['met'] else 'no'} | `{r['command']}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", default=",".join(MODULES), help="comma-separated subset of " + ",".join(MODULES))
    for name, mod in MODULES.items():
        group = argparse.ArgumentParser(add_help=False)
        mod.add_args(group)
        for action in group._actions:
            flag, dest = f"--{name}-{action.option_strings[0].lstrip('-')}", f"{name}__{action.dest}"
            if isinstance(action, argparse._StoreTrueAction):
                ap.add_argument(flag, dest=dest, action="store_true", help=action.help)
                continue
            ap.add_argument(flag, dest=dest, default=action.default, type=action.type,
                            action="append" if action.default == [] else None, help=action.help)
    args = ap.parse_args(argv)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"benchmarks": {}}
    failed = 0
    for name in args.only.split(","):
        mod = MODULES[name]
        sub = argparse.Namespace(**{k.split("__", 1)[1]: v for k, v in vars(args).items() if k.startswith(name + "__")})
        if getattr(sub, "set", None) is None and name == "iteration":
            sub.set = []
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        t0 = time.time()
        try:
            rows = mod.run(sub)
        except Exception:
            traceback.print_exc()
            failed += 1
            continue
        # a module may keep several sizes apart (bench.iteration: the 32-seed and the 175-seed row)
        key = mod.key(sub) if hasattr(mod, "key") else name
        results["benchmarks"][key] = {"rows": rows, "seconds": round(time.time() - t0, 1), "machine": machine(),
                                       "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        RESULTS.write_text(json.dumps(results, indent=1, default=str) + "\n")
        for r in rows:
            print(f"[bench] {r['metric']}: ours {r['ours']} baseline {r['baseline']} ratio {r['ratio']} "
                  f"met={r['met']}", file=sys.stderr, flush=True)
    doc = DOC.read_text() if DOC.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    head, rest = doc.split(BEGIN, 1)
    DOC.write_text(head + BEGIN + "\n" + table(results) + "\n" + END + rest.split(END, 1)[1])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
