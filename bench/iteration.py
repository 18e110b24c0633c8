"""One full LANCE iteration on the embedded model: wall time and peak RSS per stage.

    python -m bench.iteration --seeds 32

Runs `lance_llm.loop.run` on configs/default.yaml with one iteration, `--seeds` seed items and no
M_0 fine-tune (the iteration alone), in a fresh run directory, then reads each stage's manifest
(seconds, and the peak RSS the loop records there). Goal: <= 3 min for 32 seeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from .common import ROOT, Timer, command


def run(args: argparse.Namespace) -> list[dict]:
    from lance_llm.config import load_config
    from lance_llm.loop import run as run_loop
    from lance_llm.rundir import RunDir
    from lance_llm.stages import ITERATION

    tmp = Path(tempfile.mkdtemp(prefix="lance-bench-iter-"))
    # the default config names the IFEval prompts relative to the main checkout; point at them here
    ifeval = ROOT.parent.parent / "shared" / "data" / "ifeval" / "dev.jsonl"
    decon = f"clean.decontaminate_paths=[{ifeval}]" if ifeval.exists() else "clean.decontaminate_paths=[]"
    overrides = ["iterations=1", f"data.limit={args.seeds}", "train.m0_sft=false", f"run_dir={tmp / 'run'}",
                 decon, *args.set]
    cfg = load_config(ROOT / "configs" / "default.yaml", overrides)
    with Timer() as t:
        run_loop(cfg, echo=lambda s: None)
    stages, rd = {}, RunDir(tmp / "run")
    for stage in ITERATION:
        if (d := rd.manifest(1, stage.name)) is not None:
            stages[stage.name] = {"seconds": d["seconds"], **d.get("resources", {})}
    shutil.rmtree(tmp, ignore_errors=True)
    return [{
        "metric": f"one full iteration, {args.seeds} seeds, embedded model", "unit": "s",
        "ours": round(t.seconds, 1), "baseline": None, "baseline_name": "-", "ratio": None,
        "goal": "<= 180 s, peak RSS per stage reported", "met": t.seconds <= 180,
        "details": {"stages": stages, "overrides": overrides},
        "command": command("bench.iteration", [f"--seeds {args.seeds}", *[f"--set {s}" for s in args.set]]),
    }]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=32)
    p.add_argument("--set", action="append", default=[], help="extra config override KEY=VALUE")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    add_args(ap)
    print(json.dumps(run(ap.parse_args()), indent=1))
