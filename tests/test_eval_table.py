"""`lance eval` bookkeeping without a model: bootstrap intervals, best-iteration choice, the table,
which models of a run are evaluated, seeded subsets, and CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lance_llm.cli import main
from lance_llm.evaluate import data, runner, table
from lance_llm.rundir import RunDir


def _row(name: str, it: int | None, correct: list[int], inst: list[tuple[int, int]] | None = None) -> table.Row:
    r = table.Row(name, it)
    r.items["arc_easy"] = {str(i): (float(c), 1.0) for i, c in enumerate(correct)}
    r.items["ifeval_prompt_strict"] = {str(i): (float(c), 1.0) for i, c in enumerate(correct)}
    if inst:
        r.items["ifeval_inst_strict"] = {str(i): (float(a), float(b)) for i, (a, b) in enumerate(inst)}
    return r


def test_scores_intervals_and_paired_delta() -> None:
    base = _row("base", None, [0] * 30 + [1] * 10, inst=[(1, 2)] * 40)
    same = _row("M_0", 0, [0] * 30 + [1] * 10, inst=[(1, 2)] * 40)
    better = _row("M_1", 1, [1] * 40, inst=[(2, 2)] * 40)
    rows = table.build([base, same, better], resamples=500, seed=0)
    assert rows[0]["scores"]["arc_easy"] == 0.25 and rows[0]["n"]["arc_easy"] == 40
    assert rows[0]["scores"]["ifeval_inst_strict"] == 0.5  # sum of followed / sum of instructions
    lo, hi = rows[0]["ci95"]["arc_easy"]
    assert lo < 0.25 < hi
    assert rows[0]["delta_vs_previous"] == {}
    # identical items: the paired difference is exactly 0 in every resample
    assert rows[1]["delta_vs_previous"]["arc_easy"]["ci95"] == [0.0, 0.0]
    d = rows[2]["delta_vs_previous"]["arc_easy"]
    assert d["delta"] == 0.75 and d["ci95"][0] > 0 and d["against"] == "M_0"
    # average = mean of headline metrics (IFEval prompt strict + benchmarks), not instruction level
    assert rows[2]["scores"]["average"] == 1.0 and rows[0]["scores"]["average"] == 0.25
    assert rows[2]["delta_vs_previous"]["average"]["ci95"][0] > 0


def test_best_is_chosen_on_the_dev_metric_earliest_on_ties() -> None:
    rows = table.build([_row("base", None, [0, 1, 0, 1]), _row("M_0", 0, [1, 1, 0, 1]),
                        _row("M_1", 1, [1, 1, 1, 0])], resamples=100)
    best = table.select_best(rows, "ifeval_prompt_strict")
    assert best is not None and best["model"] == "M_0" and best["iteration"] == 0
    assert "highest ifeval_prompt_strict" in best["reason"] and "M_1 0.750" in best["reason"]
    flat = table.build([_row("base", None, [1, 0]), _row("M_1", 1, [0, 1])], resamples=50)
    assert table.select_best(flat, "ifeval_prompt_strict")["model"] == "base"


def test_markdown_has_a_row_per_model_and_counts() -> None:
    rows = table.build([_row("base", None, [0, 1, 1]), _row("M_1", 1, [1, 1, 1])], resamples=50)
    md = table.markdown({"rows": rows, "best": table.select_best(rows, "ifeval_prompt_strict"),
                         "selection": {"dev": "IFEval dev", "reported_only": ["arc_easy"]}})
    lines = md.splitlines()
    assert lines[0].startswith("| model | arc_easy (n=3) | ifeval_prompt_strict (n=3) | average |")
    assert lines[2].startswith("| base | 0.667 [") and lines[3].startswith("| M_1 | 1.000 [")
    assert "Δ +0.333" in lines[3] and "**M_1**" in md and "Reported only" in md


def _model(d: Path) -> None:
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(d.name.encode() + str(d).encode())


def test_run_targets_base_then_finished_iterations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    _model(tmp_path / "base")
    run.mkdir()
    rd = RunDir(run)
    rd.run_json.write_text(json.dumps({"base_model": {"path": str(tmp_path / "base")}}))
    for t in (0, 1, 2):
        _model(rd.path(t, "model"))
    for t in (0, 1):  # iteration 2's train stage has not finished: no manifest
        rd.write_manifest(t, "train", {}, {}, ["model"], {}, 0.0)
    got = runner.run_targets(run)
    assert [(t.model, t.iteration) for t in got] == [("base", None), ("M_0", 0), ("M_1", 1)]
    assert len({t.fingerprint for t in got}) == 3
    targets, rd = runner.targets_for(str(run))
    assert rd == run and len(targets) == 3
    assert main(["eval", str(run), "--models", "M_0,M_7", "--ifeval", "none"]) == 2  # before any model loads
    assert "--models: M_7 not in" in capsys.readouterr().err
    assert runner.default_out(str(run), rd) == RunDir(run).eval_dir


def test_subset_indices_seeded_sorted_and_full() -> None:
    a = data.sample_indices(1000, 10, seed=1)
    assert a == data.sample_indices(1000, 10, seed=1) and a == sorted(a) and len(set(a)) == 10
    assert a != data.sample_indices(1000, 10, seed=2)
    assert data.sample_indices(5, None, 0) == data.sample_indices(5, 50, 0) == [0, 1, 2, 3, 4]


def test_cli_refuses_bad_settings_before_loading(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["eval", "smollm2-135m", "--benchmarks", "arc_easy,nope", "--ifeval", "none"]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err
    assert main(["eval", "smollm2-135m", "--limit", "-3"]) == 2
    assert "--limit" in capsys.readouterr().err
    assert main(["eval", "smollm2-135m", "--mc-limit", "many"]) == 2  # the alias scripts/experiment.py uses
    assert "--limit: expected a positive number or 'full'" in capsys.readouterr().err
    assert main(["eval", "smollm2-135m", "--models", "M_1"]) == 2
    assert "--models picks rows of a run directory; smollm2-135m is not one" in capsys.readouterr().err
    missing = tmp_path / "missing.jsonl"
    assert main(["eval", "smollm2-135m", "--ifeval", str(missing)]) == 2
    assert "missing.jsonl: cannot read" in capsys.readouterr().err


def test_evaluator_writes_after_each_model_and_reuses_its_cache(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Bookkeeping only: generation and lm-eval are replaced by fixed answers (the real path is
    tested in test_eval_real.py)."""
    from lance_llm.config import EvalConfig
    from lance_llm.evaluate import harness, ifeval

    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps({"key": k, "prompt": f"p{k}", "instruction_id_list": ["punctuation:no_comma"],
                                       "kwargs": [{}]}) + "\n" for k in range(4)))
    calls: list[str] = []
    snapshots: list[dict] = []

    def fake_generate(path: Path, fp: str, docs: list, *a: object, **k: object) -> list[str]:
        calls.append(f"gen {fp}")
        return ["no commas here" if fp == "fpB" else "a, b"] * len(docs)

    def fake_run(path: Path, sizes: dict, *a: object, **k: object) -> dict:
        calls.append(f"mc {path.name}")
        out_json = tmp_path / "out" / "results.json"
        if out_json.exists():  # the first model's row is on disk before the second one is scored
            snapshots.append(json.loads(out_json.read_text()))
        return {b: [{"idx": i, "correct": float(i % 2)} for i in range(n)] for b, n in sizes.items()}

    monkeypatch.setattr(ifeval, "generate", fake_generate)
    monkeypatch.setattr(harness, "run", fake_run)
    cfg = EvalConfig(ifeval_path=str(dev), benchmarks=["arc_easy"], limit=6, bootstrap=50)
    targets = [runner.Target("base", None, tmp_path / "a", "fpA"), runner.Target("M_1", 1, tmp_path / "b", "fpB")]
    ev = runner.Evaluator(cfg, results_cache=tmp_path / "cache", echo=lambda s: None)
    res = ev.evaluate(targets, tmp_path / "out")
    assert calls == ["gen fpA", "mc a", "gen fpB", "mc b"]
    assert [r["model"] for r in snapshots[0]["rows"]] == ["base"] and snapshots[0]["pending"] == ["M_1"]
    assert res["pending"] == [] and res["best"]["model"] == "M_1"
    assert res["rows"][1]["delta_vs_previous"]["ifeval_prompt_strict"]["delta"] == 1.0
    items = json.loads((tmp_path / "out" / "items.json").read_text())  # per-item verdicts, for paired tests
    assert items["base"]["ifeval_prompt_strict"] == {str(k): [0.0, 1.0] for k in range(4)}
    assert items["M_1"]["ifeval_prompt_strict"] == {str(k): [1.0, 1.0] for k in range(4)}
    assert sorted(items["M_1"]["arc_easy"].values()) == sorted([[float(i % 2), 1.0] for i in range(6)])
    # again: all from the cache; a damaged cache file is recomputed, not trusted
    calls.clear()
    next((tmp_path / "cache" / "fpB").glob("arc_easy-*.json")).write_text("{torn")
    again = runner.Evaluator(cfg, results_cache=tmp_path / "cache", echo=lambda s: None).evaluate(
        targets, tmp_path / "out")
    assert calls == ["mc b"] and again["rows"][1]["scores"] == res["rows"][1]["scores"]
