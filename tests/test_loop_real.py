"""The whole loop on the real embedded SmolLM2-135M model, at a seconds-scale size.

One tiny run (module fixture) is shared by the checks below; the resume test then removes a
stage's output and runs again. Marked slow: it loads and trains the real model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lance_llm import models
from lance_llm.config import load_config
from lance_llm.loop import run
from lance_llm.rundir import RunDir
from lance_llm.stages.review import parse_score

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

# The tiny config (the main job's likelihood judge, rank scale), plus a split threshold at the
# seed's median so both branches run, and a zero pair margin so the few degraded answers form pairs.
THRESHOLD = 5.0
OVERRIDES = [
    f"generate.threshold={THRESHOLD}",
    "generate.n_degraded=4",
    "annotate.pair_margin=0.0",
    "annotate.sft_threshold=3.0",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, list[str]]:
    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    overrides = [*OVERRIDES, f"run_dir={run_dir}"]
    cfg = load_config(ROOT / "configs" / "tiny.yaml", overrides)
    summary = run(cfg)
    return run_dir, summary, overrides


def manifest(run_dir: Path, t: int, stage: str) -> dict:
    return RunDir(run_dir).manifest(t, stage)  # type: ignore[return-value]


def test_every_stage_file_has_its_schema(tiny_run: tuple) -> None:
    run_dir, summary, _ = tiny_run
    rd = RunDir(run_dir)
    seed = rd.read(1, "seed_reviewed")
    assert len(seed) == 6 and all(s.review is not None and s.review.mode == "likelihood" for s in seed)
    assert all(0 <= s.score <= 10 for s in seed)  # type: ignore[operator]
    generated = rd.read(1, "generated")
    seed_ids = {s.id for s in seed}
    assert generated, "the model generated nothing"
    assert all(g.parent_id in seed_ids and g.origin in ("new", "degraded") and g.iteration == 1 for g in generated)
    weights = models.fingerprint(models.resolve("smollm2-135m").path)
    assert all(g.model.startswith(f"{weights}|hf:") and "dtype=" in g.model for g in generated)
    cleaned = rd.read(1, "cleaned")
    dropped = rd.read(1, "clean_dropped")
    assert len(cleaned) + len(dropped) == len(generated)  # nothing lost without a reason
    reviewed = rd.read(1, "reviewed")
    assert [r.id for r in reviewed] == [c.id for c in cleaned] and all(r.review for r in reviewed)
    sft = rd.read(1, "sft")
    assert {e.id for e in rd.read(0, "sft")} <= {e.id for e in sft}  # accumulated
    review_examples = [e for e in sft if e.source == "review_example"]
    assert review_examples and all(parse_score(e.completion[0]["content"]) is not None for e in review_examples)
    nxt = rd.read(1, "next_seed")
    assert {s.id for s in nxt} == {s.id for s in seed} | {r.id for r in reviewed}  # the code's rule
    assert rd.funnel_md.read_text().startswith("| iter |")
    assert summary.final_model == rd.path(1, "model")
    gen_stats = manifest(run_dir, 1, "generate")["stats"]
    assert gen_stats["tokens"]["generated"] > 0 and gen_stats["tokens"]["prompt"] > 0
    assert manifest(run_dir, 1, "review_seed")["stats"]["tokens"]["prompt"] > 0


def test_stage_files_load_with_datasets(tiny_run: tuple) -> None:
    from datasets import load_dataset

    run_dir, _, _ = tiny_run
    rd = RunDir(run_dir)
    for name in ("seed_reviewed", "generated", "cleaned", "reviewed", "sft", "dpo", "next_seed"):
        path = rd.path(1, name)
        n = sum(1 for line in path.read_text().splitlines() if line.strip())
        ds = load_dataset("json", data_files=str(path), split="train")
        assert len(ds) == n, name
    sft = load_dataset("json", data_files=str(rd.path(1, "sft")), split="train")
    assert {"prompt", "completion"} <= set(sft.column_names)  # TRL's prompt-completion format
    dpo = load_dataset("json", data_files=str(rd.path(1, "dpo")), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(dpo.column_names)  # TRL's preference format


def test_pairs_respect_the_margin_and_come_from_high_seeds(tiny_run: tuple) -> None:
    rd = RunDir(tiny_run[0])
    pairs = rd.read(1, "dpo_new")
    assert pairs, "no preference pair: the DPO path was not exercised"
    scores = {s.id: s.score for s in rd.read(1, "reviewed")}
    scores.update({s.id: s.score for s in rd.read(1, "seed_reviewed")})
    for p in pairs:
        assert p.score_chosen - p.score_rejected > 0.0
        assert scores[p.chosen_id] == p.score_chosen and scores[p.rejected_id] == p.score_rejected
        assert scores[p.parent_id] > THRESHOLD  # only high-quality seeds are degraded
        assert p.prompt[0]["role"] == "system" and p.prompt[1]["role"] == "user"


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_training_changed_every_parameter_and_checkpoints_load(tiny_run: tuple) -> None:
    from transformers import AutoModelForCausalLM

    run_dir, _, _ = tiny_run
    rd = RunDir(run_dir)
    train = manifest(run_dir, 1, "train")["stats"]
    assert train["sft"]["steps"] == 1 and train["dpo"]["steps"] == 1
    base = load_file(str(models.resolve("smollm2-135m").path / "model.safetensors"))
    after_sft = load_file(str(rd.path(1, "model_sft") / "model.safetensors"))
    after_dpo = load_file(str(rd.path(1, "model") / "model.safetensors"))
    assert set(base) == set(after_sft) == set(after_dpo)
    assert _changed(base, after_sft) == list(base)  # every trainable tensor moved in SFT
    assert _changed(after_sft, after_dpo) == list(base)  # and again in DPO
    model = AutoModelForCausalLM.from_pretrained(str(rd.path(1, "model")))
    assert torch.equal(model.state_dict()["model.norm.weight"].to(torch.float32), after_dpo["model.norm.weight"])


def test_resume_recomputes_only_the_removed_stage_from_the_cache(tiny_run: tuple) -> None:
    run_dir, first, overrides = tiny_run
    before = {s: manifest(run_dir, 1, s)["finished"] for s in ("review_seed", "generate", "clean", "annotate", "train")}
    RunDir(run_dir).path(1, "reviewed").unlink()
    again = run(load_config(ROOT / "configs" / "tiny.yaml", overrides))
    # the likelihood judge asks three questions per pair, all answered by the cache
    assert again.llm_calls == {"hits": 3 * manifest(run_dir, 1, "review_generated")["stats"]["pairs"], "misses": 0}
    after = {s: manifest(run_dir, 1, s)["finished"] for s in before}
    assert after == before  # upstream and downstream stages were not rerun
    assert RunDir(run_dir).path(1, "reviewed").exists()
    assert first.final_model == again.final_model


def test_eval_after_each_iteration_chooses_on_dev_only(tiny_run: tuple, tmp_path: Path) -> None:
    """`eval.enabled`: resuming the finished run evaluates base and M_1 into run_dir/eval/ and
    names the best on the dev set (IFEval); the multiple-choice benchmark is reported only."""
    run_dir, _, overrides = tiny_run
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps({"key": k, "prompt": p, "instruction_id_list": ["punctuation:no_comma"],
                                       "kwargs": [{}]}) + "\n"
                           for k, p in enumerate(["Name two colours without commas.", "Say hi without commas."])))
    ev = ["eval.enabled=true", f"eval.ifeval_path={dev}", "eval.limit=2", "eval.max_new_tokens=8",
          "eval.benchmarks=[arc_easy]", "eval.bootstrap=50"]
    summary = run(load_config(ROOT / "configs" / "tiny.yaml", [*overrides, *ev]))
    rd = RunDir(run_dir)
    res = json.loads((rd.eval_dir / "results.json").read_text())
    assert [(r["model"], r["iteration"]) for r in res["rows"]] == [("base", None), ("M_1", 1)]
    assert res["rows"][1]["checkpoint"] == str(rd.path(1, "model"))
    assert res["selection"]["reported_only"] == ["arc_easy"] and "dev.jsonl" in res["selection"]["dev"]
    best = res["best"]
    scores = [r["scores"]["ifeval_prompt_strict"] for r in res["rows"]]
    assert best["metric"] == "ifeval_prompt_strict" and best["score"] == max(scores)
    assert best["model"] == res["rows"][scores.index(max(scores))]["model"] and summary.best == best
    assert "Best iteration" in (rd.eval_dir / "results.md").read_text()
