"""The self-improvement experiment: does LANCE make the model better on held-out benchmarks?

For each experiment config (default: Qwen2.5-Coder-0.5B, then SmolLM2-135M as the control) it
runs the LANCE loop (`lance run`), evaluates every checkpoint of the run (`lance eval`: base,
M_0, M_1, M_2 on IFEval and the multiple-choice benchmarks), measures the judge's reliability
per iteration (`lance judge`), and writes results/experiment.md: the evaluation table with 95%
intervals, the judge reliability, the funnel and the diversity/drift of every iteration, the
exact commands, wall times and the machine. A hand-written analysis kept in
results/findings.md is included at the top (the numbers below it are regenerated).

    make experiment                                   # = python scripts/experiment.py
    python scripts/experiment.py --configs configs/experiment-smollm2.yaml --ifeval-limit 20

Every step resumes: re-running finishes what a crash left and recomputes nothing that is done
(the run directory and the evaluation cache are keyed by content).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from lance_llm.drift import drift_markdown, drift_rows  # noqa: E402
from lance_llm.judge.pairs import KINDS  # noqa: E402
from lance_llm.rundir import RunDir  # noqa: E402
from lance_llm.stages import ITERATION, PREPARE  # noqa: E402

DEFAULT_CONFIGS = ["configs/experiment-qwen.yaml", "configs/experiment-smollm2.yaml"]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} cores{mem}, {platform.platform()}, Python {platform.python_version()}, "
            f"torch {torch.__version__} ({'CUDA' if torch.cuda.is_available() else 'CPU only'})")


def step(cmd: list[str], log: Path) -> float:
    """Run one command, its output teed to `log`; return its wall time; stop on failure."""
    print("$", shlex.join(cmd), flush=True)
    t0 = time.time()
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"\n$ {shlex.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        sys.exit(f"experiment: `{shlex.join(cmd)}` failed with exit code {proc.returncode}; see {log}")
    return time.time() - t0


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Seconds spent per stage kind, summed over iterations, from the stage manifests."""
    rd, out = RunDir(run_dir), {}
    for t in rd.iterations():
        for stage in (PREPARE if t == 0 else ITERATION):
            if (m := rd.manifest(t, stage.name)) is not None:
                out[stage.name] = out.get(stage.name, 0.0) + float(m.get("seconds") or 0.0)
    return out


def checkpoints(cfg: dict[str, Any], run_dir: Path) -> list[tuple[str, str]]:
    """(label, model source) of base, M_0 (when trained) and every M_t of the run."""
    out = [("base", str(cfg["model"]["source"]))]
    for t, d in RunDir(run_dir).finished_models():
        out.append((f"M_{t}", str(d.relative_to(ROOT))))
    return out


def judge_table(run_dir: Path) -> str:
    """One row per (checkpoint, review mode) from RUN_DIR/judge/LABEL-MODE/judge.json."""
    head = ["model", "mode", "pairs", "accuracy [95% CI]", "parse failures", "s/pair", *KINDS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    found = sorted(run_dir.glob("judge/*/judge.json"), key=lambda p: (p.parent.name.split("-")[0] != "base",
                                                                       p.parent.name))
    for path in found:
        doc = json.loads(path.read_text(encoding="utf-8"))
        label = path.parent.name.rsplit("-", 1)[0]
        for mode, r in doc["results"].items():
            acc = "–" if r.get("accuracy") is None else f"{r['accuracy']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
            kinds = [("–" if (k := r.get("per_kind", {}).get(kind, {}).get("accuracy")) is None else f"{k:.2f}")
                     for kind in KINDS]
            lines.append("| " + " | ".join([label, mode, str(r["pairs"]), acc,
                                             f"{100 * (r.get('parse_failure_rate') or 0):.0f}%",
                                             f"{r.get('seconds_per_pair') or 0:.2f}", *kinds]) + " |")
    if not found:
        return "(not measured: run without --no-judge)"
    return "\n".join(lines) + ("\n\nTest split of the labelled pairs (`lance judge`); right = the gold answer "
                               "scores strictly higher; a pair with an unscored side is a parse failure, "
                               "outside the accuracy.")


def section(config: str, args: argparse.Namespace, log: Path) -> str:
    cfg = yaml.safe_load((ROOT / config).read_text(encoding="utf-8"))
    run_dir = ROOT / cfg["run_dir"]
    lance = [sys.executable, "-m", "lance_llm.cli"]
    run_cmd = [*lance, "run", config]
    eval_cmd = [*lance, "eval", str(cfg["run_dir"]), "--ifeval-limit", str(args.ifeval_limit),
                "--mc-limit", str(args.mc_limit)]
    cmds = {"lance run": run_cmd, "lance eval": eval_cmd}
    times = {} if args.report_only else {k: step(c, log) for k, c in cmds.items()}
    if not args.no_judge:  # after the run: its checkpoints are what is judged
        for label, model in checkpoints(cfg, run_dir):
            for mode, limit in (("expected", args.judge_limit), ("sampled", args.judge_sampled_limit)):
                key = f"lance judge {label} {mode}"
                cmds[key] = [*lance, "judge", model, config, "--mode", mode, "--split", "test", "--limit",
                             str(limit), "--out", str(Path(cfg["run_dir"]) / "judge" / f"{label}-{mode}")]
                if not args.report_only:
                    times[key] = step(cmds[key], log)
    shown = "; the times are of this invocation, ~0 s when already done" if times else ""
    parts = [f"## {cfg['model']['source']} (`{config}`)", "", f"Commands (each resumes{shown}):", "",
             *[f"- `lance {shlex.join(c[3:])}`" + (f": {times[k]:.0f} s" if k in times else "")
               for k, c in cmds.items()], ""]
    secs = stage_seconds(run_dir)
    if secs:
        parts += ["Compute time per stage (summed over iterations, from the stage manifests): "
                  + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()) + f"; total {sum(secs.values()):.0f} s.", ""]
    parts += ["### Judge reliability", "", judge_table(run_dir), ""]
    rd = RunDir(run_dir)
    for title, path in (("Evaluation", rd.eval_dir / "results.md"), ("Funnel", rd.funnel_md)):
        parts += [f"### {title}", "", path.read_text(encoding="utf-8").strip() if path.is_file()
                  else f"(missing: {path.relative_to(ROOT)})", ""]
    parts += ["### Diversity and drift", "", drift_markdown(drift_rows(run_dir)), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    p.add_argument("--ifeval-limit", type=int, default=40, help="IFEval dev prompts per checkpoint")
    p.add_argument("--mc-limit", type=int, default=30, help="items per multiple-choice benchmark")
    p.add_argument("--judge-limit", type=int, default=60, help="judge pairs per checkpoint, expected mode")
    p.add_argument("--judge-sampled-limit", type=int, default=8,
                   help="judge pairs per checkpoint, sampled mode (3 free-text reviews each: costly)")
    p.add_argument("--no-judge", action="store_true", help="skip the judge-reliability step")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: write the Markdown from what the runs and evaluations left on disk")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "experiment.md")
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = args.out.with_suffix(".log")
    t0 = time.time()
    sections = [section(c, args, log) for c in args.configs]
    findings = args.out.parent / "findings.md"
    head = ["# The self-improvement experiment", "",
            f"Command: `python scripts/experiment.py {shlex.join(argv if argv is not None else sys.argv[1:])}` "
            + ("(this file only: the numbers come from the run directories and evaluations that "
               "`make experiment` = `python scripts/experiment.py` made; the commands are listed per model)."
               if args.report_only else f"(`make experiment`); {time.time() - t0:.0f} s wall for this invocation."),
            "",
            f"Machine: {machine()}.", ""]
    if findings.is_file():
        head += [findings.read_text(encoding="utf-8").strip(), ""]
    text = "\n".join(head + sections)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
