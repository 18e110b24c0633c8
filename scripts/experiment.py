"""The self-improvement experiment: does LANCE, the loop, make a model better on held-out benchmarks?

    make experiment                                       # = python scripts/experiment.py
    python scripts/experiment.py --configs configs/experiment-smollm2.yaml --parts run,control
    python scripts/experiment.py --report-only            # results/experiment.md from what is on disk
    python scripts/experiment.py --stop-after 7200        # 2 h, then stop and park (run again to go on)

Per experiment config (Qwen2.5-Coder-0.5B, then SmolLM2-135M), on the same budget:
- run      `lance run CONFIG`: M_0 = LoRA SFT of the base on the seed + review examples, then LANCE
           iterations M_1..M_T (LoRA SFT then DPO each);
- control  the seed-only control: M_0 trained further on the same SFT_0 for as many optimizer
           steps as the LANCE iterations took in all (SFT + DPO), so that more epochs on the seed
           are not mistaken for the loop's effect (`control_config`: the run's config with only
           `train.sft.max_steps` and `run_dir` changed);
- select   IFEval (all of the dev file) for base, M_0..M_T: the selection split picks the reported
           M_t by the rule below, the other split is reported for every checkpoint;
- eval     base, M_0, the chosen M_t and the control on everything: IFEval and ARC-Easy/Challenge,
           HellaSwag, Winogrande, MMLU and GSM8K on `--limit` items each (the M_t not chosen are
           reported on IFEval only: nothing else about them enters a conclusion);
- judge    the judge's own-sample precision per checkpoint (`lance judge --own`, test split);
- export   LoRA adapters and lineage.json to results/NAME/checkpoints (lance_llm.lineage), and
           the run's small files (funnels, manifests, eval results and per-item verdicts);
- park     the whole run directory but its merged weights, and the evaluation results cached for
           its checkpoints, to results/NAME/state (lance_llm.park): run it (`--parts park`)
           before the machine goes, commit results/, and the next machine continues from there;
- report   results/experiment.md: the table on the reported split, paired tests against M_0 and
           the control, the checkpoint chosen by the rule fixed below, the funnel, the share of
           self-written data, judge precision, drift, commands, times and the machine.

The checkpoint rule, fixed before any run: among M_1..M_T, the highest IFEval prompt-level strict
accuracy on the selection split (the IFEval dev prompts the judge issue used to choose its
settings: `judge.own.split_of(id) == "dev"`, 40%); ties go to the earlier iteration. Every figure
in the table is on the other 60% of IFEval and on the other benchmarks, which nothing was tuned on.

Every part resumes: `lance run` and `lance eval` skip what is done (run directory manifests, the
evaluation cache), the control is kept once trained for the right number of steps, and the report
is rebuilt from disk. Stop it at any point and run the same command again to continue. On a machine
without the run directory, a parked run (results/NAME/state/park.json) is first restored: its
weights rebuilt from the adapters and checked against the recorded fingerprints and manifests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from lance_llm.config import Config, load_config  # noqa: E402
from lance_llm.drift import drift_markdown, drift_rows  # noqa: E402
from lance_llm.evaluate.paired import compare, describe  # noqa: E402
from lance_llm.judge.own import split_of  # noqa: E402
from lance_llm.launch import stop_group  # noqa: E402
from lance_llm.records import stable_int  # noqa: E402
from lance_llm.rundir import RunDir  # noqa: E402
from lance_llm.stages import ITERATION, PREPARE  # noqa: E402

DEFAULT_CONFIGS = ["configs/experiment-qwen.yaml", "configs/experiment-smollm2.yaml"]
PARTS = ("run", "control", "select", "eval", "judge", "export", "park", "report")
BENCHMARKS = "arc_easy,arc_challenge,hellaswag,winogrande,mmlu,gsm8k"
HEADLINE = ("ifeval_prompt_strict", "ifeval_inst_strict", "arc_easy", "arc_challenge", "hellaswag", "winogrande",
            "mmlu", "gsm8k")
SELECT_METRIC = "ifeval_prompt_strict"
SELECT_DIR = "eval_ifeval"  # the select part's output in the run directory (IFEval of every checkpoint)
RULE = ("among M_1..M_T, the highest IFEval prompt-level strict accuracy on the selection split (the "
        "IFEval dev prompts the judge issue chose its settings on, 40%); ties go to the earlier iteration")


# -- the seed-only control ---------------------------------------------------------------------
def lance_steps(rd: RunDir) -> tuple[int, list[int]]:
    """Optimizer steps (SFT + DPO) of every finished LANCE iteration, and those iterations."""
    iters = [t for t in rd.iterations() if t > 0 and rd.finished(t, "model")]
    steps = 0
    for t in iters:
        st = rd.stats(t, "train") or {}
        steps += int((st.get("sft") or {}).get("steps") or 0) + int((st.get("dpo") or {}).get("steps") or 0)
    return steps, iters


def control_config(cfg: Config, steps: int) -> Config:
    """The seed-only control's config: the run's own, with only the SFT step count and run_dir set."""
    sft = dataclasses.replace(cfg.train.sft, max_steps=steps)
    return dataclasses.replace(cfg, run_dir=str(Path(cfg.run_dir) / "control"),
                               train=dataclasses.replace(cfg.train, sft=sft))


def train_control(config: str) -> dict[str, Any]:
    """M_0 + SFT on SFT_0 for as many steps as LANCE took; kept in RUN_DIR/control/ (model/,
    control.json); done once per step count."""
    from lance_llm import models
    from lance_llm.stages.train import train_sft

    cfg = load_config(ROOT / config)
    rd = RunDir(ROOT / cfg.run_dir)
    if not rd.finished(0, "model"):
        sys.exit(f"control: {rd.root} has no M_0 (train.m0_sft: true, then `lance run {config}`)")
    steps, iters = lance_steps(rd)
    if steps == 0:
        sys.exit(f"control: {rd.root} has no finished LANCE iteration yet")
    ccfg = control_config(cfg, steps)
    out, meta = ROOT / ccfg.run_dir / "model", ROOT / ccfg.run_dir / "control.json"
    if meta.exists() and out.exists():
        done = json.loads(meta.read_text(encoding="utf-8"))
        if done.get("steps") == steps:
            return done
    res = train_sft(rd.path(0, "model"), rd.path(0, "sft"), out, ccfg.train, stable_int(cfg.seed, "control"),
                    cfg.model.trust_remote_code)
    doc = {"steps": steps, "lance_iterations": iters, "start": "M_0", "start_fingerprint":
           models.fingerprint(rd.path(0, "model")), "data": str(rd.path(0, "sft").relative_to(rd.root)),
           "fingerprint": models.fingerprint(out), "train": res.to_dict()}
    meta.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return doc


# -- running the parts -------------------------------------------------------------------------
class DeadlineError(Exception):
    """--stop-after ran out during a command (which was stopped)."""


STOPPED = 75  # exit status after --stop-after stopped the experiment (EX_TEMPFAIL: run it again)


def step(cmd: list[str], log: Path, deadline: float | None = None) -> float:
    """Run one command, its output appended to `log`; return its wall time; stop on failure. Past
    `deadline` (time.time()) the command is terminated and DeadlineError raised: every part resumes from
    what it finished (stage manifests, the LLM call cache, the evaluation cache)."""
    print("$", shlex.join(cmd), flush=True)
    t0 = time.time()
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"\n$ {shlex.join(cmd)}\n")
        fh.flush()
        # its own process group: stopping it stops what it started too (trainer ranks, servers)
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(None if deadline is None else max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            stop_group(proc, grace=60)
            fh.write(f"\n[experiment] stopped at the --stop-after deadline after {time.time() - t0:.0f} s\n")
            raise DeadlineError(shlex.join(cmd)) from None
        except BaseException:  # Ctrl-C, or the driver killed: take the command down with it
            stop_group(proc, grace=60)
            raise
    if proc.returncode != 0:
        sys.exit(f"experiment: `{shlex.join(cmd)}` failed with exit code {proc.returncode}; see {log}")
    return time.time() - t0


def commands(config: str, cfg: Config, args: argparse.Namespace) -> dict[str, list[list[str]]]:
    lance = [sys.executable, "-m", "lance_llm.cli"]
    run_dir = cfg.run_dir
    ifev = ["--ifeval-limit", str(args.ifeval_limit)] if args.ifeval_limit else []
    ev = ["--limit", str(args.limit), "--benchmarks", args.benchmarks, *ifev]
    rd = RunDir(ROOT / run_dir)
    items = load_items(source_dir(cfg, args.out.parent))  # what select/eval measured (kept copy: see report)
    best = choose(items)[0]  # None until the select part has evaluated an M_t
    trained = [t for t, _ in rd.finished_models()] or sorted(int(m[2:]) for m in items if m.startswith("M_"))
    full = ",".join(["base", *(["M_0"] if 0 in trained else []), *([best] if best else [])])
    judged = [("base", str(cfg.model.source))] + [(f"M_{t}", str(Path(run_dir) / f"iter_{t:02d}" / "model"))
                                                  for t in trained]
    if (ROOT / run_dir / "control" / "model").exists() or "control" in items:
        judged.append(("control", str(Path(run_dir) / "control" / "model")))
    return {
        "run": [[*lance, "run", config]],
        "control": [[sys.executable, "scripts/experiment.py", "--train-control", config]],
        "select": [[*lance, "eval", run_dir, "--benchmarks", "none", "--out", str(Path(run_dir) / SELECT_DIR), *ifev]],
        "eval": [[*lance, "eval", run_dir, "--models", full, *ev]] + ([  # the control once it is trained
            [*lance, "eval", str(Path(run_dir) / "control" / "model"), "--out", str(Path(run_dir) / "eval_control"),
             *ev]] if (ROOT / run_dir / "control" / "model").exists() or "control" in items else []),
        "judge": [[*lance, "judge", model, config, "--own", "--mode", cfg.review.mode, "--split", "test",
                   "--limit", str(args.judge_limit), "--out", str(Path(run_dir) / "judge_own" / label)]
                  for label, model in judged],
        "export": [[sys.executable, "-m", "lance_llm.lineage", "export", run_dir,
                    str(results_dir(cfg, args.out.parent) / "checkpoints")]],
        "park": [[sys.executable, "-m", "lance_llm.park", "save", run_dir, str(parked(cfg, args.out.parent))]],
    }


def finished_elsewhere(cfg: Config, results: Path) -> bool:
    """Every part ran and was exported (the control's adapters in lineage.json, the full evaluation
    and the control's kept): what a machine without the run directory has nothing left to do for."""
    lineage, kept = results_dir(cfg, results) / "checkpoints" / "lineage.json", results_dir(cfg, results) / "run"
    if not lineage.is_file() or not (kept / "eval" / "items.json").is_file():
        return False
    return "control" in json.loads(lineage.read_text(encoding="utf-8")).get("checkpoints", {}) and \
        (kept / "eval_control" / "items.json").is_file()


def parked(cfg: Config, results: Path) -> Path:
    """Where the park part keeps the run for the next machine (lance_llm.park)."""
    return results_dir(cfg, results) / "state"


def results_dir(cfg: Config, results: Path) -> Path:
    return results / Path(cfg.run_dir).name


def keep_small_files(cfg: Config, results: Path) -> None:
    """The run's small files under results/NAME/run/: config, run.json, funnels, manifests, eval
    results and per-item verdicts, the control's record, judge results. No weights, no records."""
    src, dest = ROOT / cfg.run_dir, results_dir(cfg, results) / "run"
    patterns = ["config.yaml", "run.json", "funnel.md", "iter_*/funnel.json", "iter_*/*.manifest.json",
                "eval/results.*", "eval/items.json", "eval_control/results.*", "eval_control/items.json",
                f"{SELECT_DIR}/results.*", f"{SELECT_DIR}/items.json",
                "control/control.json", "judge_own/*/judge_own.*"]
    for pattern in patterns:
        for f in src.glob(pattern):
            (dest / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest / f.relative_to(src))
    dest.mkdir(parents=True, exist_ok=True)
    (dest / FACTS).write_text(json.dumps(run_facts(src), indent=1, default=str) + "\n", encoding="utf-8")


def add_control_to_lineage(cfg: Config, results: Path) -> None:
    from lance_llm import models

    lineage = results_dir(cfg, results) / "checkpoints" / "lineage.json"
    ctrl = ROOT / cfg.run_dir / "control" / "model"
    if not lineage.exists() or not (ctrl / "adapter").exists():
        return
    doc = json.loads(lineage.read_text(encoding="utf-8"))
    rel = Path("adapters") / "control" / "model"
    shutil.copytree(ctrl / "adapter", lineage.parent / rel, dirs_exist_ok=True)
    doc["checkpoints"]["control"] = {"fingerprint": models.fingerprint(ctrl),
                                     "adapters": [*doc["checkpoints"]["M_0"]["adapters"], rel.as_posix()]}
    lineage.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


# -- the report ----------------------------------------------------------------------------------
def split_items(items: dict[str, dict[str, list[float]]], metric: str, part: str) -> dict[str, tuple[float, float]]:
    """One model's items of `metric`; IFEval items restricted to the selection or reported split."""
    got = {k: (float(v[0]), float(v[1])) for k, v in items.get(metric, {}).items()}
    if metric.startswith("ifeval_"):
        want = "dev" if part == "select" else "test"
        got = {k: v for k, v in got.items() if split_of(f"ifeval-{k}") == want}
    return got


def score(items: dict[str, tuple[float, float]]) -> float | None:
    den = sum(d for _, d in items.values())
    return sum(n for n, _ in items.values()) / den if den else None


def load_items(src: Path) -> dict[str, dict[str, Any]]:
    """label -> metric -> per-item verdicts, from the select and eval parts and the control's evaluation
    (`src`: the run directory, or its copy under results/)."""
    out: dict[str, dict[str, Any]] = {}
    for part in (SELECT_DIR, "eval"):
        run_items = src / part / "items.json"
        if run_items.exists():
            for label, metrics in json.loads(run_items.read_text(encoding="utf-8")).items():
                out.setdefault(label, {}).update(metrics)
    ctrl = src / "eval_control" / "items.json"
    if ctrl.exists():
        for items in json.loads(ctrl.read_text(encoding="utf-8")).values():
            out["control"] = items
    return out


def choose(items: dict[str, dict[str, Any]]) -> tuple[str | None, str]:
    """The reported checkpoint by RULE, and the selection scores behind it."""
    cands = sorted((label for label in items if label.startswith("M_") and label != "M_0"),
                   key=lambda x: int(x[2:]))
    scores = {label: score(split_items(items[label], SELECT_METRIC, "select")) for label in cands}
    scored = [lab for lab in cands if scores[lab] is not None]
    if not scored:
        return None, "no LANCE checkpoint evaluated yet"
    best = max(scored, key=lambda lab: scores[lab])  # max keeps the first (earliest) of equals
    n = len(split_items(items[best], SELECT_METRIC, "select"))
    return best, f"selection split ({n} prompts): " + ", ".join(f"{lab} {scores[lab]:.3f}" for lab in scored)


def results_table(items: dict[str, dict[str, Any]]) -> str:
    order = [lab for lab in ("base", "M_0", "control") if lab in items]
    order += sorted((lab for lab in items if lab.startswith("M_") and lab != "M_0"), key=lambda x: int(x[2:]))
    metrics = [m for m in HEADLINE if any(m in items[lab] for lab in order)]
    sizes = {m: max(len(split_items(items[lab], m, "report")) for lab in order) for m in metrics}
    head = ["model", *[f"{m} ({sizes[m]})" for m in metrics], "average"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lab in order:
        vals = [score(split_items(items[lab], m, "report")) for m in metrics]
        avg = sum(v for v in vals if v is not None) / len(metrics) if all(v is not None for v in vals) else None
        lines.append("| " + " | ".join([lab, *("-" if v is None else f"{v:.3f}" for v in vals),
                                        "-" if avg is None else f"{avg:.3f}"]) + " |")
    return "\n".join(lines)


def paired_table(items: dict[str, dict[str, Any]], against: str) -> str:
    if against not in items:
        return f"({against} not evaluated yet)"
    others = [lab for lab in items if lab not in ("base", against)]
    others.sort(key=lambda x: (not x.startswith("M_"), int(x[2:]) if x.startswith("M_") else 0))
    metrics = [m for m in HEADLINE if m in items[against]]
    lines = ["| model | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 1)]
    for lab in others:
        cells = []
        for m in metrics:
            a, b = split_items(items[against], m, "report"), split_items(items[lab], m, "report")
            cells.append(describe(compare(a, b)) if set(a) & set(b) else "-")
        lines.append(f"| {lab} vs {against} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def self_written(rd: RunDir) -> list[dict[str, int]]:
    """Per finished iteration: the SFT and DPO sets trained on, and how much of them the model wrote."""
    rows = []
    for t in rd.iterations():
        if t == 0 or not rd.finished(t, "model"):
            continue
        sft, dpo = rd.read(t, "sft"), rd.read(t, "dpo")
        rows.append({"iteration": t, "sft": len(sft), "sft_own": sum(1 for e in sft if e.source == "generated"),
                     "dpo": len(dpo), "dpo_own": sum(1 for p in dpo if p.chosen_id != p.parent_id)})
    return rows


def self_written_markdown(rows: list[dict[str, int]]) -> str:
    lines = ["| iteration | SFT examples | self-written | share | DPO pairs | chosen written by the model | share |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['iteration']} | {r['sft']} | {r['sft_own']} | {r['sft_own'] / max(1, r['sft']):.0%} | "
              f"{r['dpo']} | {r['dpo_own']} | {r['dpo_own'] / max(1, r['dpo']):.0%} |" for r in rows]
    return "\n".join(lines)


FACTS = "facts.json"  # what the report needs from the run's records, kept beside the small files


def run_facts(run_dir: Path) -> dict[str, Any]:
    """The report's figures that come from records and manifests (not kept under results/)."""
    rd = RunDir(run_dir)
    return {"self_written": self_written(rd), "drift": drift_rows(run_dir), "stage_seconds": stage_seconds(rd),
            "train_bf16": train_bf16(rd)}


def source_dir(cfg: Config, results: Path) -> Path:
    """Where the report reads a model's run: the run directory while it is on this machine, else its
    small files under results/ (what the export part kept), so the tables can be rebuilt anywhere."""
    live = ROOT / cfg.run_dir
    return live if (live / "run.json").exists() else results_dir(cfg, results) / "run"


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def judge_table(src: Path) -> str:
    """The own-sample judge per checkpoint: pairwise accuracy and the precision of its SFT picks."""
    rows = []
    for f in sorted((src / "judge_own").glob("*/judge_own.json")):
        for key, doc in json.loads(f.read_text(encoding="utf-8")).items():
            for mode, r in doc.get("results", {}).items():
                if mode.startswith(("rule:", "siblings:")):
                    continue
                ci = r.get("pairwise_ci95") or [None, None]
                rows.append(f"| {f.parent.name} | {key.rsplit('|', 1)[-1]} | {mode} | {_num(r.get('pairwise'))} "
                            f"[{_num(ci[0])}, {_num(ci[1])}] | {_num(r.get('sft_precision'))} "
                            f"(base rate {_num(r.get('base_rate'), 3)}, {r.get('sft_selected')} selected) |")
    if not rows:
        return "(not measured yet)"
    return ("| model | prompts | judge | pairwise [95% CI] | SFT precision |\n|---|---|---|---|---|\n"
            + "\n".join(rows))


def stage_seconds(rd: RunDir) -> dict[str, float]:
    out: dict[str, float] = {}
    for t in rd.iterations():
        for stage in (PREPARE if t == 0 else ITERATION):
            if (m := rd.manifest(t, stage.name)) is not None:
                out[stage.name] = out.get(stage.name, 0.0) + float(m.get("seconds") or 0.0)
    return out


NUMERICS = {True: "bf16 autocast", False: "float32", None: "numerics not recorded"}


def train_bf16(rd: RunDir) -> dict[str, bool | None]:
    """Per training run ("M_1 dpo"), whether the Trainer autocast to bf16 (None: not recorded, trained
    before the manifest said). A parked run can resume on another CPU kind, where "auto" resolves anew."""
    out: dict[str, bool | None] = {}
    for t in rd.iterations():
        stats = ((m := rd.manifest(t, "train")) and m.get("stats")) or {}
        for step in ("sft", "dpo"):  # in training order (the manifest's keys are sorted)
            if isinstance(st := stats.get(step), dict):
                out[f"M_{t} {step}"] = st.get("bf16")
    return out


def numerics_line(bf16: dict[str, bool | None]) -> str:
    if not bf16:
        return ""
    return ("Training numerics (per training run, as resolved on the machine that ran it): "
            + ", ".join(f"{k} {NUMERICS[v]}" for k, v in bf16.items()) + ".")


def section(config: str, args: argparse.Namespace) -> str:
    cfg = load_config(ROOT / config)
    src = source_dir(cfg, args.out.parent)
    live = src == ROOT / cfg.run_dir
    facts: dict[str, Any] = {}
    if live:
        facts = run_facts(src)
    elif (src / FACTS).is_file():
        facts = json.loads((src / FACTS).read_text(encoding="utf-8"))
    items = load_items(src)
    best, why = choose(items)
    cmds = commands(config, cfg, args)
    parts = [f"## {cfg.model.source} (`{config}`)", "", "Commands (each resumes):", ""]
    parts += [f"- {part}: `{'python ' + shlex.join(c[1:]) if c[0] == sys.executable else shlex.join(c)}`"
              for part in PARTS[:-1] for c in cmds.get(part, [])]
    secs = facts.get("stage_seconds") or {}
    if not live:
        parts += ["", f"(Read from {src.relative_to(ROOT) if src.is_relative_to(ROOT) else src}: the run directory "
                  "is not on this machine.)"]
    if secs:
        parts += ["", "Compute time per stage (summed over iterations, from the manifests): "
                  + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()) + f"; total {sum(secs.values()):.0f} s."]
    if line := numerics_line(facts.get("train_bf16") or {}):
        parts += ["", line]
    ctrl = src / "control" / "control.json"
    if ctrl.exists():
        c = json.loads(ctrl.read_text(encoding="utf-8"))
        parts += ["", f"Seed-only control: M_0 + {c['steps']} SFT steps on SFT_0 (LANCE iterations "
                  f"{c['lance_iterations']} took {c['steps']} SFT + DPO steps), {c['train']['seconds']:.0f} s, "
                  f"{NUMERICS[c['train'].get('bf16')]}."]
    parts += ["", "### Results on the reported split", "",
              f"Checkpoint rule (fixed before the run): {RULE}. Chosen: **{best or '-'}** ({why}).", "",
              results_table(items) if items else "(not evaluated yet)", "",
              "IFEval columns: the 60% of dev.jsonl outside the selection split; other columns: `--limit` "
              "seeded items each (GSM8K exact match, the rest accuracy).", "",
              "### Paired tests against M_0", "", paired_table(items, "M_0"), "",
              "### Paired tests against the seed-only control", "", paired_table(items, "control"), "",
              "Cells: Δ (p of the exact McNemar test; items right only for the row's model vs only for "
              "the reference), or Δ [paired-bootstrap 95% interval] for instruction-level IFEval.", "",
              "### Self-written share of the training sets", "", self_written_markdown(facts.get("self_written") or []),
              "", "### Judge on the model's own answers", "", judge_table(src), ""]
    if (src / "funnel.md").is_file():
        parts += ["### Funnel", "", (src / "funnel.md").read_text(encoding="utf-8").strip(), ""]
    parts += ["### Diversity and drift", "", drift_markdown(facts.get("drift") or []), ""]
    return "\n".join(parts)


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    import torch

    return (f"{cpu}, {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    p.add_argument("--limit", type=int, default=200, help="items per multiple-choice benchmark and GSM8K")
    p.add_argument("--ifeval-limit", type=int, help="IFEval prompts (default: all of the dev file)")
    p.add_argument("--benchmarks", default=BENCHMARKS, help=f"lance eval --benchmarks (default {BENCHMARKS})")
    p.add_argument("--judge-limit", type=int, default=30, help="own-sample judge: IFEval+GSM8K test prompts")
    p.add_argument("--report-only", action="store_true", help="= --parts report")
    p.add_argument("--stop-after", type=float, metavar="SECONDS",
                   help="stop the command running after this long, park the run (results/NAME/state; takes a "
                   "minute or two more) and write the report if asked for; exit status 75: run again, here or "
                   "elsewhere, to go on")
    p.add_argument("--train-control", metavar="CONFIG", help=argparse.SUPPRESS)  # the control part's worker
    p.add_argument("--out", type=Path, default=ROOT / "results" / "experiment.md",
                   help="the report; results/NAME/ (adapters, small files) go beside it")
    args = p.parse_args(argv)
    if args.train_control:
        print(json.dumps(train_control(args.train_control)))
        return 0
    parts = ["report"] if args.report_only else args.parts.split(",")
    bad = [x for x in parts if x not in PARTS]
    if bad:
        p.error(f"unknown part(s) {', '.join(bad)}; known: {', '.join(PARTS)}")
    log = args.out.with_suffix(".log")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    deadline = None if args.stop_after is None else time.time() + args.stop_after
    stopped = False
    for config in args.configs:
        cfg = load_config(ROOT / config)
        state = parked(cfg, args.out.parent)
        away = not (ROOT / cfg.run_dir / "run.json").exists()
        if away and set(parts) - {"report"}:
            if finished_elsewhere(cfg, args.out.parent):
                # every part ran on another machine: its report is rebuilt from results/, nothing to restore
                print(f"{config}: finished on another machine ({results_dir(cfg, args.out.parent)}); delete that "
                      "folder to run it again", flush=True)
                continue
            if (state / "park.json").exists():
                # another machine ran the first parts: continue from what it parked
                key = f"{Path(config).stem} restore"
                times[key] = step([sys.executable, "-m", "lance_llm.park", "restore", str(state), cfg.run_dir], log)
        try:
            for part in PARTS[:-1]:
                if part not in parts:
                    continue
                for cmd in commands(config, cfg, args)[part]:  # rebuilt per part: judge/eval see new checkpoints
                    key = f"{Path(config).stem} {part}"
                    times[key] = times.get(key, 0.0) + step(cmd, log, None if part == "park" else deadline)
                if part == "export":
                    add_control_to_lineage(cfg, args.out.parent)
                    keep_small_files(cfg, args.out.parent)
        except DeadlineError as e:
            stopped = True
            if not (ROOT / cfg.run_dir / "run.json").exists():
                print(f"experiment: --stop-after reached during `{e}`, before {cfg.run_dir} began", flush=True)
                break
            print(f"experiment: --stop-after reached during `{e}`; parking {cfg.run_dir} in {state}", flush=True)
            keep_small_files(cfg, args.out.parent)
            times[f"{Path(config).stem} park"] = step(commands(config, cfg, args)["park"][0], log)
            break
    if "report" in parts:
        head = ["# The self-improvement experiment", "", f"Report written on: {machine()} (the machines each "
                "model's parts ran on are named below).", ""]
        findings = args.out.parent / "findings.md"
        if findings.is_file():
            head += [findings.read_text(encoding="utf-8").strip(), ""]
        if times:
            head += ["Wall time of this invocation per part: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()),
                     ""]
        text = "\n".join(head + [section(c, args) for c in args.configs])
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(args.out)
        print(f"wrote {args.out}")
    if stopped:
        print("experiment: stopped before the end; run the same command again (here, or on another machine "
              "after committing results/) to continue", flush=True)
        return STOPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())
