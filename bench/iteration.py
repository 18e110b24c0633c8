"""One full LANCE iteration: wall time and peak RSS per stage.

    python -m bench.iteration --seeds 32                      # embedded model, shipped seed (issue 4)
    python -m bench.iteration --model qwen2.5-coder-0.5b --seeds 175 --self-instruct --n 4   # issue 14

Runs `lance_llm.loop.run` on configs/default.yaml with one iteration, `--seeds` seed items and no
M_0 fine-tune (the iteration alone), in a fresh run directory, then reads each stage's manifest
(seconds, and the peak RSS the loop records there). `--self-instruct`: the 175 Self-Instruct seed
tasks (../shared/data/self_instruct) instead of the shipped seed; `--n`: new instructions per
low-scored seed, responses per new instruction and degraded answers per high-scored seed (the
method's 4; the main job uses 2). Goals: <= 3 min for 32 seeds (embedded model); <= 30 min for
175 Self-Instruct seeds with n=4 on Qwen2.5-Coder-0.5B.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from .common import ROOT, SEED_TASKS, Timer, command


def run(args: argparse.Namespace) -> list[dict]:
    from lance_llm.config import load_config
    from lance_llm.loop import run as run_loop
    from lance_llm.rundir import RunDir
    from lance_llm.stages import ITERATION

    tmp = Path(tempfile.mkdtemp(prefix="lance-bench-iter-"))
    # the default config names the IFEval prompts relative to the main checkout; point at them here
    ifeval = ROOT.parent / "shared" / "data" / "ifeval" / "dev.jsonl"
    decon = f"clean.decontaminate_paths=[{ifeval}]" if ifeval.exists() else "clean.decontaminate_paths=[]"
    overrides = ["iterations=1", f"data.limit={args.seeds}", "train.m0_sft=false", f"run_dir={tmp / 'run'}",
                 decon, f"model.source={args.model}"]
    if args.self_instruct:
        overrides.append(f"data.seed_path={SEED_TASKS}")
    if args.n:
        overrides += [f"generate.{k}={args.n}" for k in ("n_instructions", "n_responses", "n_degraded")]
    overrides += args.set
    cfg = load_config(ROOT / "configs" / "default.yaml", overrides)
    with Timer() as t:
        run_loop(cfg, echo=lambda s: None)
    stages, rd = {}, RunDir(tmp / "run")
    for stage in ITERATION:
        if (d := rd.manifest(1, stage.name)) is not None:
            stages[stage.name] = {"seconds": d["seconds"], **d.get("resources", {})}
    funnel = rd.funnel_json(1).read_text() if rd.funnel_json(1).exists() else None
    shutil.rmtree(tmp, ignore_errors=True)
    goal = 1800 if args.self_instruct else 180
    data = "Self-Instruct seeds" if args.self_instruct else "seeds"
    flags = [f"--seeds {args.seeds}", f"--model {args.model}", *(["--self-instruct"] if args.self_instruct else []),
             *([f"--n {args.n}"] if args.n else []), *[f"--set {s}" for s in args.set]]
    return [{
        "metric": f"one full iteration, {args.seeds} {data}, {args.model}" + (f", n={args.n}" if args.n else ""),
        "unit": "s", "ours": round(t.seconds, 1), "baseline": None, "baseline_name": "-", "ratio": None,
        "goal": f"<= {goal} s, peak RSS per stage reported", "met": t.seconds <= goal,
        "details": {"stages": stages, "overrides": overrides, "funnel": json.loads(funnel) if funnel else None},
        "command": command("bench.iteration", flags),
    }]


def key(args: argparse.Namespace) -> str:
    """Where run_all keeps this row: the issue-14 size apart from the 32-seed one."""
    return "iteration:self-instruct" if args.self_instruct else "iteration"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=32)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--self-instruct", action="store_true", help="the 175 Self-Instruct seed tasks as seed")
    p.add_argument("--n", type=int, default=None, help="n_instructions = n_responses = n_degraded (method: 4)")
    p.add_argument("--set", action="append", default=[], help="extra config override KEY=VALUE")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    add_args(ap)
    print(json.dumps(run(ap.parse_args()), indent=1))
