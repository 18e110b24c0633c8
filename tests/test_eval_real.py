"""`lance eval` on the real embedded model (SmolLM2-135M): lm-eval offline on tiny subsets, IFEval
generation, the results files, and the per-model cache (a second evaluation recomputes nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lance_llm import models
from lance_llm.config import EvalConfig
from lance_llm.evaluate import harness, ifeval, runner
from lance_llm.report import Run, evaluation

PROMPTS = [
    ("Write one short sentence about the sea, in lowercase letters only.", "change_case:english_lowercase", {}),
    ("Name three fruits. Do not use any commas.", "punctuation:no_comma", {}),
    ("Say hello. Wrap your whole answer in double quotation marks.", "startend:quotation", {}),
]


@pytest.mark.slow
def test_eval_offline_on_tiny_subsets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dev = tmp_path / "ifeval.jsonl"
    dev.write_text("".join(json.dumps({"key": i, "prompt": p, "instruction_id_list": [iid], "kwargs": [kw]}) + "\n"
                           for i, (p, iid, kw) in enumerate(PROMPTS)))
    cfg = EvalConfig(ifeval_path=str(dev), max_new_tokens=24, limit=4, bootstrap=200,
                     benchmarks=list(harness.METRIC))  # the five multiple-choice tasks + GSM8K (generation)
    runner.check(cfg)
    m = models.resolve("smollm2-135m")
    target = runner.Target("smollm2-135m", None, m.path, m.fingerprint)
    ev = runner.Evaluator(cfg, results_cache=tmp_path / "cache", echo=lambda s: None)
    results = ev.evaluate([target], tmp_path / "run" / "eval")

    row = results["rows"][0]
    assert set(harness.METRIC) <= set(row["scores"])
    for bench in harness.METRIC:  # every lm-eval task ran on its 4 items and gives an accuracy
        assert row["n"][bench] == 4
        assert 0.0 <= row["scores"][bench] <= 1.0
    assert row["n"]["ifeval_prompt_strict"] == 3 and 0.0 <= row["scores"]["ifeval_prompt_strict"] <= 1.0
    cached = json.loads(next((tmp_path / "cache" / m.fingerprint).glob("ifeval-*.json")).read_text())
    assert len(cached["items"]) == 3 and all(isinstance(i["response"], str) for i in cached["items"])
    # the stored verdicts are the checker's verdicts on the stored responses
    docs = ifeval.load(dev)
    assert [i["prompt_strict"] for i in cached["items"]] == [
        ifeval.score(d, i["response"])["prompt_strict"] for d, i in zip(docs, cached["items"], strict=True)]
    mc = json.loads(next((tmp_path / "cache" / m.fingerprint).glob("arc_easy-*.json")).read_text())
    assert all(i["correct"] in (0.0, 1.0) for i in mc["items"])
    assert (tmp_path / "run" / "eval" / "results.md").read_text().startswith("| model |")

    # a second evaluation reads the cache: nothing is generated or scored again
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("recomputed a cached result")

    monkeypatch.setattr(harness, "run", boom)
    monkeypatch.setattr(ifeval, "generate", boom)
    again = runner.Evaluator(cfg, results_cache=tmp_path / "cache", echo=lambda s: None).evaluate(
        [target], tmp_path / "out2")
    assert again["rows"][0]["scores"] == row["scores"]

    # the run report's evaluation section reads this results.json
    html = evaluation(Run(tmp_path / "run"))
    assert "smollm2-135m" in html and "arc_easy" in html and "ifeval_prompt_strict" in html
