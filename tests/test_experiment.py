"""The experiment's configs and its pieces of logic (scripts/experiment.py): the second model and the
seed-only control differ from the LANCE config only where stated; the checkpoint rule reads only the
selection split; the tables read only the reported split."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from lance_llm.backends.hf import cpu_has_bf16
from lance_llm.config import load_config
from lance_llm.judge.own import split_of

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exp() -> Any:
    spec = importlib.util.spec_from_file_location("experiment", ROOT / "scripts" / "experiment.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def diff(a: dict, b: dict) -> set[str]:
    fa, fb = flat(a), flat(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def test_the_two_models_configs_differ_only_in_model_and_run_dir() -> None:
    qwen = load_config(ROOT / "configs" / "experiment-qwen.yaml")
    smol = load_config(ROOT / "configs" / "experiment-smollm2.yaml")
    # Qwen's dtype is pinned (float32) so that its run, parked, resumes on a CPU of another kind
    assert diff(qwen.to_dict(), smol.to_dict()) == {"model.source", "model.dtype", "run_dir"}
    # what the issue asks of the run itself
    assert qwen.iterations >= 3 and qwen.train.method == "lora" and qwen.train.m0_sft
    assert qwen.data.seed_path == "../shared/data/self_instruct/seed_tasks.jsonl"
    assert "../shared/data/ifeval/dev.jsonl" in qwen.clean.decontaminate_paths


def test_the_seed_only_control_differs_only_in_its_steps_and_run_dir(exp: Any) -> None:
    cfg = load_config(ROOT / "configs" / "experiment-qwen.yaml")
    ctrl = exp.control_config(cfg, 123)
    assert diff(cfg.to_dict(), ctrl.to_dict()) == {"train.sft.max_steps", "run_dir"}
    assert ctrl.train.sft.max_steps == 123 and ctrl.run_dir == "runs/experiment-qwen/control"


def _items(passing: set[str], keys: list[str]) -> dict[str, dict[str, list[float]]]:
    return {"ifeval_prompt_strict": {k: [1.0 if k in passing else 0.0, 1.0] for k in keys}}


def test_the_checkpoint_rule_reads_the_selection_split_only(exp: Any) -> None:
    keys = [str(k) for k in range(200)]
    dev = [k for k in keys if split_of(f"ifeval-{k}") == "dev"]
    test = [k for k in keys if split_of(f"ifeval-{k}") == "test"]
    assert 60 < len(dev) < 100  # ~40%
    items = {"M_0": _items(set(keys), keys),  # never a candidate
             "M_1": _items(set(dev[:10]), keys),
             "M_2": _items(set(dev[:20]) | set(test), keys),  # best on both splits
             "M_3": _items(set(dev[:20]), keys)}  # ties M_2 on the selection split: the earlier wins
    best, why = exp.choose(items)
    assert best == "M_2" and f"selection split ({len(dev)} prompts)" in why
    items["M_3"] = _items(set(dev[:21]), keys)  # better on selection, worse on the reported split
    assert exp.choose(items)[0] == "M_3"
    table = exp.results_table(items)
    assert f"ifeval_prompt_strict ({len(test)})" in table  # the reported split's size
    assert "| M_2 | 1.000 |" in table and "| M_3 | 0.000 |" in table
    paired = exp.paired_table(items, "M_0")
    assert f"| M_1 vs M_0 | -1.000 (p 0.000; 0 vs {len(test)}) |" in paired


def test_the_judge_table_rounds_and_skips_the_no_model_rules(exp: Any, tmp_path: Path) -> None:
    f = tmp_path / "judge_own" / "M_1" / "judge_own.json"
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps({"m|ifeval": {"results": {
        "likelihood": {"pairwise": 0.34375, "pairwise_ci95": [0.169, 0.5147], "sft_precision": 0.1,
                       "base_rate": 0.14166666666666666, "sft_selected": 17},
        "rule:shorter": {"pairwise": 0.5}}}}))
    table = exp.judge_table(tmp_path)
    assert "| M_1 | ifeval | likelihood | 0.34 [0.17, 0.51] | 0.10 (base rate 0.142, 17 selected) |" in table
    assert "rule:" not in table


def test_the_training_numerics_are_read_from_the_train_manifests(exp: Any, tmp_path: Path) -> None:
    from lance_llm.rundir import RunDir

    rd = RunDir(tmp_path)
    for t, stats in ((0, {"sft": {"steps": 9}}), (1, {"dpo": {"bf16": True}, "sft": {"bf16": False}})):
        rd.manifest_path(t, "train").parent.mkdir(parents=True)
        rd.manifest_path(t, "train").write_text(json.dumps({"stats": stats}))
    got = exp.train_bf16(rd)
    assert list(got.items()) == [("M_0 sft", None), ("M_1 sft", False), ("M_1 dpo", True)]
    assert exp.numerics_line(got).endswith(
        ": M_0 sft numerics not recorded, M_1 sft float32, M_1 dpo bf16 autocast.")


def test_only_base_m0_and_the_chosen_checkpoint_get_the_full_evaluation(exp: Any, tmp_path: Path) -> None:
    """The select part evaluates IFEval for every checkpoint; the eval part then runs the benchmarks on
    base, M_0 and the M_t the rule chose from what select wrote, and the report merges both."""
    import argparse
    import dataclasses
    import json

    from lance_llm.rundir import RunDir

    cfg = dataclasses.replace(load_config(ROOT / "configs" / "experiment-smollm2.yaml"), run_dir=str(tmp_path / "run"))
    rd = RunDir(tmp_path / "run")
    rd.root.mkdir(parents=True)
    rd.run_json.write_text("{}")  # a run directory on this machine: the report reads it, not results/
    args = argparse.Namespace(limit=200, ifeval_limit=None, benchmarks="arc_easy,gsm8k", judge_limit=30,
                              out=tmp_path / "results" / "experiment.md")

    def models_of(cmd: list[str]) -> str:
        return cmd[cmd.index("--models") + 1]

    assert models_of(exp.commands("c.yaml", cfg, args)["eval"][0]) == "base"  # no M_0, nothing chosen yet
    rd.path(0, "model").mkdir(parents=True)
    rd.write_manifest(0, "train", {}, {}, ["model"], {}, 0.0)
    keys = [str(k) for k in range(200)]
    dev = [k for k in keys if split_of(f"ifeval-{k}") == "dev"]
    selected = {"M_0": _items(set(), keys), "M_1": _items(set(dev[:5]), keys), "M_2": _items(set(dev[:9]), keys)}
    (rd.root / exp.SELECT_DIR).mkdir()
    (rd.root / exp.SELECT_DIR / "items.json").write_text(json.dumps(selected))
    cmds = exp.commands("c.yaml", cfg, args)
    assert cmds["select"][0][-4:] == ["--benchmarks", "none", "--out", str(tmp_path / "run" / exp.SELECT_DIR)]
    assert models_of(cmds["eval"][0]) == "base,M_0,M_2"
    (rd.root / "eval").mkdir()
    (rd.root / "eval" / "items.json").write_text(json.dumps({"M_2": {"arc_easy": {"1": [1.0, 1.0]}}}))
    merged = exp.load_items(rd.root)
    assert set(merged["M_2"]) == {"ifeval_prompt_strict", "arc_easy"} and set(merged["M_1"]) == {"ifeval_prompt_strict"}
    assert "| M_1 | 0.000 | - | - |" in exp.results_table(merged)  # M_1: IFEval only


def test_a_command_past_the_deadline_is_stopped_and_said_so(exp: Any, tmp_path: Path) -> None:
    import sys
    import time

    log = tmp_path / "x.log"
    t0 = time.time()
    with pytest.raises(exp.DeadlineError):
        exp.step([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], log,
                 deadline=time.time() + 2)
    assert time.time() - t0 < 30
    text = log.read_text()
    assert "started" in text and "stopped at the --stop-after deadline" in text
    assert exp.step([sys.executable, "-c", "pass"], log, deadline=time.time() + 60) < 30  # in time: no error


@pytest.mark.slow
def test_the_experiment_runs_end_to_end_at_toy_size_and_resumes(tmp_path: Path) -> None:
    """Every part on the embedded model at toy size (1 iteration, 1 step per training, a few items
    per benchmark): M_0, M_1 and the control are trained with LoRA, evaluated, judged, exported with
    their adapters (M_1 rebuilt from them bit for bit), and reported; a second run redoes nothing."""
    import json
    import shutil
    import subprocess
    import sys

    import yaml

    from lance_llm import models
    from lance_llm.lineage import rebuild

    cfg = yaml.safe_load((ROOT / "configs" / "experiment-smollm2.yaml").read_text())
    cfg.update(run_dir=str(tmp_path / "runs" / "toy"), iterations=1)
    spec = importlib.util.spec_from_file_location("experiment", ROOT / "scripts" / "experiment.py")
    exp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exp)  # type: ignore[union-attr]

    def exp_finished(results: Path) -> bool:
        return exp.finished_elsewhere(exp.load_config(tmp_path / "toy.yaml"), results)

    cfg["data"]["limit"] = 6
    cfg["generate"].update(n_instructions=2, n_responses=1, n_degraded=2, thought_max_new_tokens=32,
                           sampling={"max_new_tokens": 48}, response_sampling={"max_new_tokens": 48})
    cfg["clean"] = {"instruction_min_words": 3, "response_min_words": 3}
    cfg["annotate"] = {"pair_margin": 0.5}
    cfg["train"]["sft"].update(max_steps=1, max_length=256)
    cfg["train"]["dpo"].update(max_steps=1, max_length=256)
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "results" / "experiment.md"
    cmd = [sys.executable, str(ROOT / "scripts" / "experiment.py"), "--configs", str(config), "--limit", "3",
           "--ifeval-limit", "4", "--benchmarks", "arc_easy", "--judge-limit", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    run = tmp_path / "runs" / "toy"
    control = json.loads((run / "control" / "control.json").read_text())
    train = json.loads((run / "iter_01" / "train.manifest.json").read_text())["stats"]
    assert control["steps"] == train["sft"]["steps"] + ((train.get("dpo") or {}).get("steps") or 0) >= 1
    lineage = json.loads((tmp_path / "results" / "toy" / "checkpoints" / "lineage.json").read_text())
    ckpts = lineage["checkpoints"]
    assert set(ckpts) == {"M_0", "M_1", "control"}
    assert ckpts["M_1"]["adapters"][:1] == ckpts["M_0"]["adapters"] == ckpts["control"]["adapters"][:1]
    assert ckpts["M_1"]["fingerprint"] == models.fingerprint(run / "iter_01" / "model")
    rebuilt = rebuild(tmp_path / "results" / "toy" / "checkpoints" / "lineage.json", "M_1", tmp_path / "m1")
    assert models.fingerprint(rebuilt) == ckpts["M_1"]["fingerprint"]
    kept = tmp_path / "results" / "toy" / "run"
    assert (kept / "eval" / "items.json").exists() and (kept / "eval_control" / "items.json").exists()
    assert (kept / "eval_ifeval" / "items.json").exists()
    full = json.loads((kept / "eval" / "items.json").read_text())
    assert set(full) == {"base", "M_0", "M_1"} and all("arc_easy" in full[m] for m in full)
    assert (kept / "iter_01" / "funnel.json").exists() and (kept / "control" / "control.json").exists()
    report = out.read_text()
    for row in ("| base |", "| M_0 |", "| control |", "| M_1 |", "| M_1 vs M_0 |", "| control vs M_0 |",
                "| M_1 vs control |", "Chosen: **M_1**", "| 1 |"):  # the last: the self-written share row
        assert row in report, row

    # run again: everything is done, nothing is trained or evaluated again
    t_control = (run / "control" / "model" / "model.safetensors").stat().st_mtime_ns
    log = out.with_suffix(".log")
    before = len(log.read_text())
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "control" / "model" / "model.safetensors").stat().st_mtime_ns == t_control
    second = log.read_text()[before:]
    assert "lance_llm.cli run" in second and "IFEval prompt-level strict" not in second and "lm-eval done" not in second

    # on a machine without the run directory, the report is rebuilt from what results/ kept
    run.rename(tmp_path / "elsewhere")
    rebuilt = subprocess.run([*cmd, "--report-only"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    text = out.read_text()
    assert "the run directory is not on this machine" in text
    numerics = "bf16 autocast" if cpu_has_bf16() else "float32"  # train.bf16 "auto", resolved here
    for row in ("| M_1 vs M_0 |", "| M_1 vs control |", "Chosen: **M_1**", "| 1 |", "Seed-only control: M_0 +",
                f"M_0 sft {numerics}, M_1 sft {numerics}", f" s, {numerics}."):
        assert row in text, row
    assert text.split("### Results on the reported split")[1] == report.split("### Results on the reported split")[1]

    # a machine without the run directory and without the evaluations cached continues from what
    # the park part kept: weights rebuilt from the adapters, nothing trained or evaluated again
    state = tmp_path / "results" / "toy" / "state"
    doc = json.loads((state / "park.json").read_text())
    assert [e["checkpoint"] for e in doc["checkpoints"]] == ["iter_00/model", "iter_01/model_sft", "iter_01/model",
                                                              "control/model"]
    assert not list((state / "run").glob("**/model*/*.safetensors"))  # no merged weights, only adapters
    assert (state / "run" / "iter_01" / "model_sft" / "adapter" / "adapter_model.safetensors").exists()
    assert {e["how"] for e in doc["checkpoints"]} <= {"adapter", "copy"} and doc["checkpoints"][0]["how"] == "adapter"
    cached = models.cache_root() / "eval" / "results"
    for e in doc["checkpoints"]:
        shutil.rmtree(cached / e["fingerprint"], ignore_errors=True)
    assert exp_finished(tmp_path / "results")  # every part ran: a new machine would only rebuild the report
    shutil.rmtree(tmp_path / "results" / "toy" / "run" / "eval_control")  # as if parked before the control's eval
    assert not exp_finished(tmp_path / "results")
    manifest = (tmp_path / "elsewhere" / "iter_01" / "train.manifest.json").read_text()
    before = len(log.read_text())
    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    third = log.read_text()[before:]
    assert "lance_llm.park restore" in third and "rebuilding iter_01/model " in third and "stopped" not in third
    assert "IFEval prompt-level strict" not in third and "lm-eval done" not in third
    assert (run / "iter_01" / "train.manifest.json").read_text() == manifest  # not retrained
    for e in doc["checkpoints"]:
        assert models.fingerprint(run / e["checkpoint"]) == e["fingerprint"]
    results = out.read_text().split("### Results on the reported split")[1]
    assert results == report.split("### Results on the reported split")[1]
