"""The whole loop in seconds, without a model: the scripted backend (conftest.lance_script) plays
the model, the fake trainer writes checkpoints. Two iterations, both branches, cleaning, pairs,
accumulation, the funnel, resume after a kill, exact invalidation, and a stage added without
touching loop.py. The real-model versions of these checks are in test_loop_real.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import FakeTrainer, ScriptedFactory, lance_script
from lance_llm import loop, models, stage
from lance_llm.config import Config, build_config
from lance_llm.loop import Runner, run
from lance_llm.records import Sample
from lance_llm.rundir import RunDir
from lance_llm.stage import Column, Stage, StageContext
from lance_llm.stages import ITERATION, PREPARE

STAGES = ("review_seed", "generate", "clean", "review_generated", "annotate", "train")


class Killed(BaseException):
    """What a SIGKILL looks like from inside: nothing after it runs (not caught as an Exception)."""


def config(tmp_path: Path, seed_file: Path, base: Path, name: str = "run", *extra: str) -> Config:
    return build_config({
        "run_dir": str(tmp_path / name), "iterations": 2, "model": {"source": str(base)},
        "backend": {"batch_size": 2},
        "data": {"seed_path": str(seed_file)},
        "review": {"mode": "expected", "scale": "raw"},
        "generate": {"n_instructions": 4, "n_responses": 2, "n_degraded": 2},
        "train": {"m0_sft": True},
    }, list(extra))


def start(cfg: Config, echo=None, trainer: FakeTrainer | None = None) -> tuple[loop.RunSummary, ScriptedFactory,
                                                                                  list[str]]:
    lines: list[str] = []
    factory = ScriptedFactory(lance_script)
    summary = run(cfg, echo=echo or lines.append, backends=factory, trainer=trainer or FakeTrainer())
    return summary, factory, lines


def artifacts(root: Path) -> dict[str, str]:
    """sha256 of every record file and checkpoint of a run."""
    rd = RunDir(root)
    out = {}
    for t in rd.iterations():
        for p in sorted(rd.iter_dir(t).rglob("*")):
            if p.is_file() and (p.suffix == ".jsonl" or p.name == "model.safetensors"):
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_two_iterations_both_branches_cleaning_pairs_accumulation_and_funnel(tmp_path, seed_file, fake_base):
    summary, factory, _ = start(config(tmp_path, seed_file, fake_base))
    rd = RunDir(summary.run_dir)
    row = summary.funnels[0]
    # iteration 1, worked out from the script: 2 low seeds x 4 instruction replies (3 parse, 1 does
    # not), of which one is a near-duplicate; 2 answers each ([good] 9, [bad] 2); 2 high seeds x 2
    # degraded answers ([bad] 2): each high seed (9) beats its lowest degraded answer (2)
    assert {k: row[k] for k in ("seeds", "low", "high", "new instr.", "new resp.", "degraded", "generated",
                                "cleaned", "reviewed", "SFT kept", "pairs", "parse fail")} == {
        "seeds": 4, "low": 2, "high": 2, "new instr.": 6, "new resp.": 12, "degraded": 4, "generated": 16,
        "cleaned": 12, "reviewed": 12, "SFT kept": 4, "pairs": 2, "parse fail": 2}
    assert row["clean drops"] == {"instruction_near_duplicate": 4}
    assert row["SFT total"] == 4 + len(rd.read(0, "sft")) and row["DPO total"] == 2
    for t, r in enumerate(summary.funnels, 1):  # the funnel counts the records on disk
        assert r["cleaned"] == len(rd.read(t, "cleaned")) and r["SFT total"] == len(rd.read(t, "sft"))
        assert r["pairs"] == len(rd.read(t, "dpo_new")) and r["DPO total"] == len(rd.read(t, "dpo"))
        assert r["low"] > 0 and r["high"] > 0 and r["SFT kept"] > 0 and r["pairs"] > 0
    # accumulation: SFT_2 ⊇ SFT_1 ⊇ SFT_0, DPO likewise
    ids = [{e.id for e in rd.read(t, name)} for name in ("sft", "dpo") for t in (0, 1, 2)]
    assert ids[0] < ids[1] < ids[2] and ids[3] < ids[4] < ids[5]
    # the code's next-seed rule: Seed_1 = reviewed new candidates of iteration 1 + reviewed Seed_0
    seed0 = {f"s{i}" for i in range(4)}
    assert {s.id for s in rd.read(1, "next_seed")} == {s.id for s in rd.read(1, "reviewed")} | seed0
    # every pair from a seed of the degrade branch; chosen beats rejected by the margin
    seeds = {s.id: s for s in rd.read(2, "seed_reviewed")}
    for p in rd.read(2, "dpo_new"):
        assert seeds[p.parent_id].score > 7.0 and p.score_chosen - p.score_rejected > 2.0
    # M_0, then one model per iteration, each trained from the one before
    assert [t for t, _ in rd.finished_models()] == [0, 1, 2] and summary.final_model == rd.path(2, "model")
    assert [b.fingerprint.split("|")[0] for b in factory.built] == [
        f"scripted:{models.fingerprint(rd.path(t, 'model'))}" for t in (0, 1)]
    assert all(b.closed for b in factory.built)
    assert (summary.run_dir / "funnel.md").read_text().startswith("| iter | seeds |")
    assert (summary.run_dir / "report.html").is_file()


def test_resume_after_a_kill_between_stages_redoes_only_what_was_not_finished(tmp_path, seed_file, fake_base):
    reference, _, _ = start(config(tmp_path, seed_file, fake_base, "reference"))
    cfg = config(tmp_path, seed_file, fake_base, "killed")

    def kill_at_clean_of_iter_2(line: str) -> None:
        if line.startswith("[iter 2] clean ..."):
            raise Killed

    with pytest.raises(Killed):
        start(cfg, echo=kill_at_clean_of_iter_2)
    rd = RunDir(cfg.run_dir)
    before = {(t, s): rd.manifest(t, s)["finished"] for t in (1, 2) for s in STAGES if rd.manifest(t, s)}
    assert (2, "generate") in before and (2, "clean") not in before
    again, factory, lines = start(cfg)
    assert artifacts(again.run_dir) == artifacts(reference.run_dir)  # byte for byte
    skipped = [line.split("]")[1].split(":")[0].strip() for line in lines if line.endswith("done earlier, skipped")]
    assert skipped == ["prepare", "train", *STAGES, "review_seed", "generate"]
    assert all(rd.manifest(t, s)["finished"] == f for (t, s), f in before.items())
    # only iteration 2's review of the cleaned candidates asked the model again
    assert again.llm_calls["misses"] == rd.stats(2, "review_generated")["llm_calls"]["misses"] > 0
    assert len(factory.built) == 1


def test_resume_after_a_crash_inside_training(tmp_path, seed_file, fake_base):
    reference, _, _ = start(config(tmp_path, seed_file, fake_base, "reference"))
    cfg = config(tmp_path, seed_file, fake_base, "crashed")

    class CrashingTrainer(FakeTrainer):
        def __call__(self, kind, model_path, data, out, *args, **kwargs):
            if len(self.calls) == 2:  # M_0, SFT of iteration 1, then this: DPO of iteration 1
                raise Killed
            return super().__call__(kind, model_path, data, out, *args, **kwargs)

    with pytest.raises(Killed):
        start(cfg, trainer=CrashingTrainer())
    assert RunDir(cfg.run_dir).manifest(1, "train") is None
    again, _, lines = start(cfg)
    assert artifacts(again.run_dir) == artifacts(reference.run_dir)
    assert "[iter 1] train ... (not run yet)" in lines


def rerun(cfg: Config) -> list[tuple[int, str]]:
    """(iteration, stage) of every stage a rerun of the finished run with `cfg` ran again."""
    _, _, lines = start(cfg)
    return [(int(line[6]), line.split("]")[1].split(" ...")[0].strip()) for line in lines if " ... (" in line]


def test_exact_invalidation_reruns_the_stages_that_read_a_change_and_no_others(tmp_path, seed_file, fake_base,
                                                                                monkeypatch):
    cfg = config(tmp_path, seed_file, fake_base)
    start(cfg)
    assert rerun(cfg) == []  # nothing changed: nothing runs
    # a threshold only annotate reads, at a value that keeps the same examples: annotate reruns and
    # writes the same sets, so nothing after it runs
    cfg2 = config(tmp_path, seed_file, fake_base, "run", "annotate.sft_threshold=8.5")
    assert rerun(cfg2) == [(1, "annotate"), (2, "annotate")]
    # a margin no pair passes: iteration 1 trains again, so iteration 2 has another model and redoes all
    cfg3 = config(tmp_path, seed_file, fake_base, "run", "annotate.sft_threshold=8.5", "annotate.pair_margin=8.0")
    assert rerun(cfg3) == [(1, "annotate"), (1, "train"), *((2, s) for s in STAGES)]
    # a cleaning setting that changes no decision: clean reruns, its output is unchanged
    cfg3 = config(tmp_path, seed_file, fake_base, "run", "annotate.sft_threshold=8.5", "annotate.pair_margin=8.0",
                  "clean.instruction_max_words=5000")
    assert rerun(cfg3) == [(1, "clean"), (2, "clean")]
    # the engine's numerics are part of the answering model's identity: every LLM stage reruns
    # (the scripted model answers the same, so the data trained on and the models do not change)
    cfg4 = config(tmp_path, seed_file, fake_base, "run", "annotate.sft_threshold=8.5", "annotate.pair_margin=8.0",
                  "clean.instruction_max_words=5000", "model.dtype=float32")
    ran = rerun(cfg4)
    assert {(t, s) for t in (1, 2) for s in ("review_seed", "generate", "review_generated")} <= set(ran)
    assert not any(s == "train" for _, s in ran)
    # an edited template reruns the stages that render it, not M_0's training or the review
    real = stage.digest
    monkeypatch.setattr(stage, "digest", lambda name, text=None: "edited" if name == "new_instruction"
                        else real(name, text))
    assert rerun(cfg4) == [(1, "generate"), (2, "generate")]


def test_a_stage_added_by_a_list_entry_runs_resumes_and_shows_in_the_funnel(tmp_path, seed_file, fake_base):
    def run_lengths(ctx: StageContext) -> dict:
        words = [len(s.response.split()) for s in ctx.read("cleaned")]
        ctx.write("lengths", [{"id": s.id, "words": n} for s, n in zip(ctx.read("cleaned"), words, strict=True)])
        return {"mean_words": round(sum(words) / len(words), 2)}

    lengths = Stage(name="lengths", reads=("cleaned",), writes=("lengths",), config=(), run=run_lengths,
                    funnel=(Column("mean words", "mean words per cleaned response", lambda st: st["mean_words"]),))
    stages = (PREPARE, (*ITERATION[:3], lengths, *ITERATION[3:]))
    cfg = config(tmp_path, seed_file, fake_base)
    lines: list[str] = []
    Runner(cfg, lines.append, ScriptedFactory(lance_script), FakeTrainer(), stages).run()
    rd = RunDir(cfg.run_dir)
    rows = rd.read(1, "lengths")
    assert [r["id"] for r in rows] == [s.id for s in rd.read(1, "cleaned")] and rows[0]["words"] >= 10
    assert "| mean words |" in rd.funnel_md.read_text()
    assert json.loads(rd.funnel_json(2).read_text())["mean words"] == rd.stats(2, "lengths")["mean_words"]
    lines.clear()
    Runner(cfg, lines.append, ScriptedFactory(lance_script), FakeTrainer(), stages).run()
    assert "[iter 1] lengths: done earlier, skipped" in lines


def test_a_stage_cannot_read_or_write_what_it_did_not_declare(tmp_path, seed_file, fake_base):
    def sneaky(ctx: StageContext) -> dict:
        ctx.read("generated")
        return {}

    stage = Stage(name="sneaky", reads=("cleaned",), writes=(), config=(), run=sneaky)
    cfg = config(tmp_path, seed_file, fake_base, "run", "iterations=1")
    with pytest.raises(KeyError, match="without declaring it"):
        Runner(cfg, lambda s: None, ScriptedFactory(lance_script), FakeTrainer(),
               (PREPARE, (*ITERATION[:3], stage))).run()


def test_a_stage_that_skips_a_declared_output_fails_before_its_manifest(tmp_path, seed_file, fake_base):
    stage = Stage(name="lazy", reads=(), writes=("notes",), config=(), run=lambda ctx: {})
    cfg = config(tmp_path, seed_file, fake_base, "run", "iterations=1")
    with pytest.raises(RuntimeError, match="did not write"):
        Runner(cfg, lambda s: None, ScriptedFactory(lance_script), FakeTrainer(), (PREPARE, (stage,))).run()
    assert RunDir(cfg.run_dir).manifest(1, "lazy") is None


def test_the_seed_each_iteration_starts_from(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.resolve(1, "seed_in") == [("seed@0", rd.path(0, "seed"))]
    assert rd.resolve(3, "seed_in") == [("next_seed@2", rd.path(2, "next_seed"))]
    assert rd.resolve(3, "cleaned@earlier") == [(f"cleaned@{t}", rd.path(t, "cleaned")) for t in (1, 2)]
    assert rd.resolve(1, "cleaned@earlier") == []
    assert rd.resolve(2, "sft@prev") == [("sft@1", rd.path(1, "sft"))]
    assert rd.path(1, "model") == tmp_path / "iter_01" / "model"
    with pytest.raises(ValueError, match="bad record reference"):
        rd.resolve(1, "sft@later")


def test_samples_carry_the_answering_models_fingerprint(tmp_path, seed_file, fake_base):
    summary, factory, _ = start(config(tmp_path, seed_file, fake_base, "run", "iterations=1"))
    generated = RunDir(summary.run_dir).read(1, "generated")
    assert generated and all(isinstance(s, Sample) and s.model == factory.built[0].fingerprint for s in generated)


def test_the_seed_is_judged_again_by_each_new_model_and_ranked_against_seed_0(tmp_path, seed_file, fake_base):
    summary, factory, _ = start(config(tmp_path, seed_file, fake_base, "run", "review.scale=rank"))
    rd = RunDir(summary.run_dir)
    second = factory.built[1].fingerprint + "/expected"
    seed2 = rd.read(2, "seed_reviewed")
    assert all(s.review.judge == second for s in seed2)  # one judge per iteration: M_1's
    assert rd.stats(2, "review_seed")["rejudged"] == len(rd.read(1, "next_seed"))
    # the rank scale's yardstick is Seed_0 as this judge scored it: its 2 [hi] and 2 [lo] answers
    ranks = {s.id: s.score for s in seed2 if s.id.startswith("s")}
    assert sorted(ranks.values()) == [2.5, 2.5, 7.5, 7.5]
    assert {s.score for s in seed2} == {0.0, 2.5, 7.5}  # raw 2 below them all, 3 and 9 tied with two each
    # the method's way: the seed keeps the scores its first judge gave
    summary, factory, _ = start(config(tmp_path, seed_file, fake_base, "never", "review.rejudge=never"))
    rd = RunDir(summary.run_dir)
    assert rd.stats(2, "review_seed")["rejudged"] == 0 and rd.stats(2, "review_seed")["pairs"] == 0
    assert {s.review.judge for s in rd.read(2, "seed_reviewed")} == {factory.built[0].fingerprint + "/expected"}


def test_the_funnel_says_when_a_branch_is_empty_for_lack_of_quality(tmp_path, seed_file, fake_base):
    # an SFT threshold no score reaches, and a margin no pair passes
    summary, _, _ = start(config(tmp_path, seed_file, fake_base, "run", "iterations=1", "annotate.sft_threshold=9.5",
                                 "annotate.pair_margin=8.0"))
    row = summary.funnels[0]
    assert row["SFT kept"] == 0 and row["pairs"] == 0
    assert row["empty"] == {"SFT": "no new answer scored above 9.5 (best 9.00)",
                            "pairs": "no candidate beat the lowest of its seed's by more than 8.0 (best margin 7.00)"}
    funnel = RunDir(summary.run_dir).funnel_md.read_text()
    assert "Empty for lack of quality: iter 1: SFT no new answer scored above 9.5" in funnel
    # a threshold every seed clears: the rewrite branch is empty because of the scores
    summary, _, _ = start(config(tmp_path, seed_file, fake_base, "low", "iterations=1", "generate.threshold=1.0"))
    assert summary.funnels[0]["low"] == 0 and summary.funnels[0]["empty"]["low"] == \
        "every seed scored above 1.0 (lowest 3.00)"
