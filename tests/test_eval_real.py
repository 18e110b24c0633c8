"""`lance eval` on the real embedded model (SmolLM2-135M): lm-eval offline on tiny subsets, IFEval
generation, the results files, and the per-model cache (a second evaluation recomputes nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lance_llm import models
from lance_llm.config import EvalConfig
from lance_llm.evaluate import gsm8k, harness, ifeval, runner
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
                     benchmarks=list(harness.METRIC))  # the five multiple-choice tasks (lm-eval) + GSM8K (ours)
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
    monkeypatch.setattr(gsm8k, "run", boom)
    again = runner.Evaluator(cfg, results_cache=tmp_path / "cache", echo=lambda s: None).evaluate(
        [target], tmp_path / "out2")
    assert again["rows"][0]["scores"] == row["scores"]

    # the run report's evaluation section reads this results.json
    html = evaluation(Run(tmp_path / "run"))
    assert "smollm2-135m" in html and "arc_easy" in html and "ifeval_prompt_strict" in html


@pytest.mark.slow
def test_gsm8k_through_our_backend_matches_lm_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our GSM8K path (evaluate/gsm8k.py) against lm-eval's own gsm8k task on the same 4 questions,
    float32: the same greedy replies, and our scoring gives lm-eval's verdicts on its replies."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = models.resolve("smollm2-135m")
    theirs = harness.run(m.path, {"gsm8k": 4}, seed=0, dtype="float32", engine="hf")["gsm8k"]
    docs = gsm8k.load(4, seed=0)
    ours = gsm8k.run(m.path, m.fingerprint, docs, dtype="float32")
    assert [o["idx"] for o in ours] == [t["idx"] for t in theirs] == [d["_idx"] for d in docs]
    assert [o["response"].strip() for o in ours] == [t["response"].strip() for t in theirs]
    assert [gsm8k.correct(t["response"], d["answer"]) for t, d in zip(theirs, docs, strict=True)] == [
        t["correct"] for t in theirs]


@pytest.mark.slow
def test_multiple_choice_through_our_scoring_path_matches_lm_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    """LanceLM (evaluate/mc.py, what `lance eval` uses) against lm-eval's own hf model on 3 items of
    every multiple-choice benchmark, float32: every choice's log-likelihood within 2e-3 nats (the
    shared-context forward and the continuation-only LM head change only rounding), the same
    is_greedy flags, the same verdicts."""
    import lm_eval
    from lm_eval.api.task import ConfigurableTask

    from lance_llm.evaluate.data import subset_file
    from lance_llm.evaluate.mc import LanceLM

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = models.resolve("smollm2-135m")
    names = [b for b in harness.METRIC if b != "gsm8k"]

    def samples(model: object, args: dict | None) -> dict[str, list[dict]]:
        tasks = [ConfigurableTask(config=harness.task_config(b, subset_file(b, 3, 0)[0])) for b in names]
        res = lm_eval.simple_evaluate(model=model, model_args=args, tasks=tasks, batch_size=4, device="cpu",
                                      log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
        return {b: sorted(res["samples"][f"lance_{b}"], key=lambda s: s["doc_id"]) for b in names}

    seen: list[tuple[int, int]] = []
    lm = LanceLM(m.path, m.fingerprint, batch_size=4, dtype="float32", progress=lambda d, t: seen.append((d, t)))
    try:
        ours = samples(lm, None)
    finally:
        lm.close()
    theirs = samples("hf", {"pretrained": str(m.path), "dtype": "float32"})
    assert seen and seen[-1][0] == seen[-1][1] >= 15  # progress reached every context (winogrande: 2 per item)
    for b in names:
        assert len(ours[b]) == len(theirs[b]) == 3
        for a, t in zip(ours[b], theirs[b], strict=True):
            mine, ref = [r[0] for r in a["resps"]], [r[0] for r in t["resps"]]
            assert len(mine) == len(ref) >= 2
            for (ll, greedy), (ll_ref, greedy_ref) in zip(mine, ref, strict=True):
                assert ll < 0 and abs(ll - ll_ref) < 2e-3, (b, a["doc_id"], ll, ll_ref)
                assert greedy == greedy_ref
            assert a[harness.METRIC[b]] == t[harness.METRIC[b]]
