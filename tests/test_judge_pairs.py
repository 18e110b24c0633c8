"""Judge reliability, part 1: the labelled pair set and the metric (no model).

The pair set: every pair is labelled "gold wins", kinds are the five corruptions, each corruption
is what it says (a truncated answer is a prefix, a shuffled one has the same words...), dev and
test never share a task, and building twice gives the same pairs. The metric: an oracle judge
scores 1.0, a random one about 0.5, a tie is wrong, an unscored side is a parse failure (never 0).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from conftest import ScriptedBackend
from lance_llm.backends.base import GenerateRequest, ScoreRequest
from lance_llm.config import ReviewConfig
from lance_llm.judge.pairs import IRRELEVANT, KINDS, build_pairs, load_pairs, load_tasks, select, split_of
from lance_llm.judge.reliability import agreement, judge_reliability, metric, outcome, wilson
from lance_llm.records import RecordError

SELF_INSTRUCT = next((a / "shared/data/self_instruct/seed_tasks.jsonl" for a in Path(__file__).resolve().parents[2:]
                      if (a / "shared/data/self_instruct/seed_tasks.jsonl").exists()), Path("/nonexistent"))


@pytest.fixture(scope="module")
def pairs():
    return load_pairs()[0]  # Self-Instruct when present beside the repo, else the shipped seed


def test_labels_kinds_and_corruptions(pairs) -> None:
    assert {p.kind for p in pairs} == set(KINDS)
    gold_of = {p.task_id: p.gold for p in pairs}
    for p in pairs:
        assert p.label == "gold" and p.corrupted != p.gold and p.id == f"{p.task_id}/{p.kind}"
        if p.kind == "truncated":
            assert p.gold.startswith(p.corrupted) and len(p.corrupted.split()) < len(p.gold.split())
        elif p.kind == "shuffled":
            assert sorted(p.corrupted.split()) == sorted(p.gold.split())
        elif p.kind == "irrelevant":
            assert p.corrupted in IRRELEVANT
        elif p.kind == "other_task":
            donors = [t for t, g in gold_of.items() if g == p.corrupted and t != p.task_id]
            assert donors and all(split_of(t) == p.split for t in donors)
        elif p.kind == "contradicted":
            assert len(p.corrupted.split()) >= len(p.gold.split())  # same text, a fact changed


def test_split_is_by_task_and_deterministic(pairs) -> None:
    dev = {p.task_id for p in pairs if p.split == "dev"}
    test = {p.task_id for p in pairs if p.split == "test"}
    assert dev and test and not dev & test
    assert len(test) > len(dev)  # about 2/3 of the tasks are held out for the reported figures
    again = load_pairs()[0]
    assert [p.to_dict() for p in again] == [p.to_dict() for p in pairs]
    assert select(pairs, "dev") == [p for p in pairs if p.split == "dev"]
    assert len(select(pairs, "test", 7)) == 7


@pytest.mark.skipif(not SELF_INSTRUCT.exists(), reason="Self-Instruct seed tasks not beside the repo")
def test_self_instruct_source() -> None:
    tasks, src = load_tasks(SELF_INSTRUCT)
    assert len(tasks) == 175 and src == SELF_INSTRUCT
    _tid, instruction, gold = next(t for t in tasks if t[0] == "seed_task_1")
    assert "Night : Day" in instruction and gold.startswith("The relation between")


def test_fallback_and_bad_file(tmp_path: Path) -> None:
    f = tmp_path / "seed.jsonl"
    rows = [{"id": f"t{i}", "instruction": f"Question {i}?",
             "response": f"Answer {i} is long enough. It has three sentences. The value is {i + 10}."}
            for i in range(12)]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    built, summary = build_pairs(load_tasks(f)[0])
    assert summary["tasks"] == 12 and len(built) == 12 * len(KINDS)
    f.write_text('{"id": "x", "instruction": "Q?"}\n')
    with pytest.raises(RecordError, match=r"seed.jsonl:1: missing gold answer"):
        load_tasks(f)


def test_outcome_and_interval() -> None:
    assert outcome(7.0, 3.0) == "right"
    assert outcome(5.0, 5.0) == "wrong"  # a tie is wrong
    assert outcome(None, 0.0) == "parse_failure" and outcome(9.0, None) == "parse_failure"
    lo, hi = wilson(50, 100)
    assert lo < 0.5 < hi and round(hi - lo, 2) == 0.19
    assert wilson(10, 10)[1] == 1.0 and wilson(0, 0) is None


def test_metric_oracle_random_and_failures(pairs) -> None:
    oracle = metric(pairs, [(9.0, 2.0)] * len(pairs))
    assert oracle["accuracy"] == 1.0 and oracle["parse_failures"] == 0
    assert all(k["accuracy"] == 1.0 for k in oracle["per_kind"].values())
    rng = random.Random(0)
    rand = metric(pairs, [(rng.uniform(0, 10), rng.uniform(0, 10)) for _ in pairs])
    assert 0.4 < rand["accuracy"] < 0.6
    lo, hi = rand["ci95"]
    assert lo < 0.5 < hi
    # unscored gold: a parse failure, excluded from accuracy, not a loss by 0
    mixed = metric(pairs[:4], [(None, 3.0), (8.0, None), (5.0, 5.0), (6.0, 1.0)])
    assert mixed["parse_failures"] == 2 and mixed["scored"] == 2
    assert mixed["accuracy"] == 0.5 and mixed["accuracy_all"] == 0.25
    assert mixed["outcomes"][pairs[0].id] == "parse_failure"
    a = {"x": "right", "y": "wrong", "z": "parse_failure"}
    assert agreement(a, {"x": "right", "y": "right", "z": "right"}) == {"pairs": 2, "agreement": 0.5}


def gold_knowing(golds: set[str], oracle: bool, garble: str = "") -> ScriptedBackend:
    """A scripted judge that knows the gold answers: high score for gold, low otherwise (oracle), or
    a random one; sampled mode gets free text, unparsable for one response in `garble`."""
    rng = random.Random(1)

    def good(text: str) -> bool:
        if not oracle:
            return rng.random() < 0.5
        return any(f"<response>\n{g}\n</response>" in text for g in golds)

    def score(r: ScoreRequest) -> list[float]:
        if not oracle:  # a random distribution over the score tokens
            return [rng.uniform(-5, 0) for _ in r.continuations]
        best = 9 if good(r.messages[-1][1]) else 2
        return [0.0 if i == best else -20.0 for i in range(len(r.continuations))]

    def gen(r: GenerateRequest) -> list[str]:
        text = r.messages[-1][1]
        reply = "I cannot say." if garble and garble in text else f"Fine. score: {9 if good(text) else 2}"
        return [reply] * r.sampling.n

    return ScriptedBackend(gen, score)


def test_judge_reliability_with_fake_backends(pairs) -> None:
    sub = select(pairs, "test", 40)
    golds = {p.gold for p in sub}
    res = judge_reliability(gold_knowing(golds, oracle=True), ReviewConfig(mode="expected"), sub, "sys")
    assert res["accuracy"] == 1.0 and res["parse_failure_rate"] == 0 and res["pairs"] == 40
    assert res["seconds_per_pair"] >= 0 and set(res["per_kind"]) <= set(KINDS)
    rand = judge_reliability(gold_knowing(golds, oracle=False), ReviewConfig(mode="expected"),
                             select(pairs, None), "sys")
    assert 0.35 < rand["accuracy"] < 0.65
    garble = sub[0].gold  # every pair of that task loses its gold score: parse failures, not zeros
    res = judge_reliability(gold_knowing(golds, oracle=True, garble=garble),
                            ReviewConfig(mode="sampled", samples=2), sub, "sys")
    hit = [p for p in sub if p.gold == garble or p.corrupted == garble]
    assert res["parse_failures"] == len(hit) and res["accuracy"] == 1.0


def test_degraded_check_compares_each_degraded_answer_with_its_seed_answer() -> None:
    from lance_llm.judge.reliability import degraded_check
    from lance_llm.records import Review, Sample

    def s(sid: str, raw: float | None, origin: str = "seed", parent: str | None = None) -> Sample:
        review = Review("likelihood", None if raw is None else raw / 2, raw_score=raw)  # scores on the rank scale
        return Sample(sid, "Q?", "A.", origin=origin, parent_id=parent, review=review)  # type: ignore[arg-type]

    seed = [s("a", 8.0), s("b", 5.0), s("c", None)]
    gen = [s("d1", 3.0, "degraded", "a"), s("d2", 5.0, "degraded", "b"), s("d3", 9.0, "degraded", "a"),
           s("d4", 1.0, "degraded", "c"), s("d5", 1.0, "degraded", "gone"), s("n1", 0.0, "new", "a")]
    r = degraded_check(seed, gen)
    # raw scores: d1 below a (right), d2 ties b (wrong), d3 above a (wrong); an unscored seed answer
    # or one not found is a failure, never a win; new answers are not degraded ones
    assert (r["pairs"], r["right"], r["scored"], r["parse_failures"]) == (5, 1, 3, 2)
    assert r["accuracy"] == round(1 / 3, 4)


def test_judge_signals_without_labels() -> None:
    from lance_llm.judge.reliability import judge_signals, spearman
    from lance_llm.records import PreferencePair, Review, Sample, assistant, chat_prompt

    assert spearman([1, 2, 3], [10, 20, 30]) == 1.0 and spearman([1, 2, 3], [3, 2, 1]) == -1.0
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == 1.0  # mid-ranks for ties

    def s(i: str, raw: float, judge: str) -> Sample:
        return Sample(i, "q", f"answer {i}", review=Review(mode="likelihood", score=raw, judge=judge))

    before = [s("a", 1.0, "m0"), s("b", 2.0, "m0"), s("c", 3.0, "m0"), s("d", 4.0, "m0")]
    after = [s("a", 1.5, "m1"), s("b", 2.5, "m1"), s("c", 5.0, "m1"), s("d", 4.5, "m1")]  # c and d swapped
    pair = PreferencePair("p", chat_prompt("sys", "q"), assistant("one two three"), assistant("one"), "a", "x", "y",
                          9.0, 1.0, 1)
    sig = judge_signals(before, after, [s("g", 4.5, "m1")], [pair])
    assert sig["agreement"] == {"items": 4, "spearman": 0.8, "pairwise": round(5 / 6, 4)}
    assert sig["spread"]["scores"] == 5 and sig["spread"]["ties"] == round(1 / 10, 4)  # 4.5 twice
    assert sig["lengths"] == {"pairs": 1, "chosen_words": 3.0, "rejected_words": 1.0}
    # the same judge again (review.rejudge=never): nothing to compare
    assert "agreement" not in judge_signals(before, before, [], [])
