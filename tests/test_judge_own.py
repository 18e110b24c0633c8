"""The own-sample judge benchmark's arithmetic on hand-made labels and scores (no model), its
labels (IFEval's checker, GSM8K's last number), and a whole run with the scripted backend."""

from __future__ import annotations

import json
import math

import pytest

from conftest import ScriptedBackend
from lance_llm.config import build_config
from lance_llm.judge.own import (
    Item,
    label,
    last_number,
    load_items,
    loop_decisions,
    measure,
    prompt_stats,
    rule_scores,
    run_own,
    sibling_scores,
    split_of,
)


def test_prompt_stats_pairwise_pick_and_ties() -> None:
    s = prompt_stats([1.0, 0.0, 0.5, 0.0], [3.0, 1.0, 2.0, None])  # the 4th is unscored: no opinion
    assert (s["right"], s["pairs"]) == (3.0 + 2 * 0.5, 5.0)  # 1 > .5 > 0 ranked right; its 2 pairs half
    assert s["pick"] == 1.0 and s["bottom"] == 0.0 and s["random"] == 0.375 and s["best"] == 1.0
    assert (s["tb_right"], s["tb_wrong"]) == (1.0, 0.0)
    wrong = prompt_stats([1.0, 0.0], [1.0, 2.0])
    assert (wrong["right"], wrong["pairs"], wrong["pick"], wrong["tb_wrong"]) == (0.0, 1.0, 0.0, 1.0)
    tie = prompt_stats([1.0, 0.0, 0.0], [5.0, 5.0, 1.0])
    assert tie["right"] == 0.5 + 1.0 and tie["pairs"] == 2  # a score tie counts half; equal labels no pair
    assert tie["pick"] == 0.5  # the judge's top is a tie: its mean label
    same = prompt_stats([1.0, 1.0], [2.0, 1.0])
    assert same["pairs"] == 0 and "tb_right" not in same


def test_measure_aggregates_over_prompts_and_closes_the_gap() -> None:
    labels = [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
    oracle = measure(labels, [[4, 1, 1, 1], [1, 1, 4, 3], [1, 2, 3, 4]], build_config())
    assert oracle["pairwise"] == 1.0 and oracle["pick"] == 1.0 and oracle["gap_closed"] == 1.0
    assert oracle["random"] == pytest.approx((0.25 + 0.5 + 1.0) / 3, abs=1e-4) and oracle["best"] == 1.0
    assert oracle["prompts"] == 3 and oracle["prompts_with_differing_labels"] == 2 and oracle["pairs"] == 3 + 4
    assert oracle["top_bottom"] == {"right": 2, "wrong": 0}
    lo, hi = oracle["pairwise_ci95"]
    assert lo == hi == 1.0
    flipped = measure(labels, [[-x for x in g] for g in [[4, 1, 1, 1], [1, 1, 4, 3], [1, 2, 3, 4]]], build_config())
    assert flipped["pairwise"] == 0.0 and flipped["gap_closed"] < 0 and flipped["top_bottom"]["wrong"] == 2


def test_loop_decisions_use_the_loops_thresholds_and_scale() -> None:
    cfg = build_config()  # raw scale, SFT > 8.0, margin 2.0
    labels = [[1.0, 0.0, 1.0], [0.5, 0.0, 1.0]]
    d = loop_decisions(labels, [[9.0, 2.0, 8.5], [9.5, 9.0, 3.0]], cfg, None)
    # selected: 9.0 (pass), 8.5 (pass), 9.5 (0.5: not a pass), 9.0 (fail)
    assert d["sft_selected"] == 4 and d["sft_precision"] == 0.5 and d["base_rate"] == 0.5
    # prompt 1: rejected 2.0 (label 0); 9.0 and 8.5 beat it by > 2: two right pairs
    # prompt 2: rejected 3.0 (label 1); 9.5 (0.5) and 9.0 (0) pass the margin: two wrong pairs
    assert d["preference_pairs"] == {"right": 2, "equal": 0, "wrong": 2}
    # rank scale: 10 x the mid-rank percentile within the seed's raw scores
    ranked = loop_decisions([[1.0, 0.0]], [[5.0, 0.5]], cfg, reference=[1.0, 2.0, 3.0, 4.0])
    assert ranked["sft_selected"] == 1 and ranked["preference_pairs"]["right"] == 1  # 5.0 -> 10, 0.5 -> 0


def test_rules_and_labels() -> None:
    answers = [["a b c", "a", "a b"]]
    assert rule_scores("longer", answers) == [[3.0, 1.0, 2.0]] and rule_scores("shorter", answers) == [[-3, -1, -2]]
    assert rule_scores("random", answers) == [[0.0, 0.0, 0.0]]  # its expectation: every answer tied
    assert last_number("so 3 + 4 = 7.\nThe answer is 1,250.") == "1250" and last_number("none") is None
    assert last_number("18.0 dollars") == "18"
    assert sibling_scores("agreement", [["so 4", "it is 4", "5", "no number"]]) == [[1.0, 1.0, 0.0, 0.0]]
    consensus = sibling_scores("consensus", [["the cat sat", "the cat sat", "dogs bark"]])[0]
    assert consensus[0] == consensus[1] == pytest.approx(0.5) and consensus[2] == 0.0
    gsm = Item("gsm8k-1", "gsm8k", "q", "18")
    assert label(gsm, "She makes $18 a day.") == 1.0 and label(gsm, "18 eggs, so 36") == 0.0
    doc = {"key": 1, "prompt": "Say hi without commas.", "instruction_id_list": ["punctuation:no_comma"],
           "kwargs": [{}]}
    item = Item("ifeval-1", "ifeval", doc["prompt"], doc)
    assert label(item, "Hi there") == 1.0 and label(item, "Hi, there") == 0.0


def test_splits_are_stable_and_disjoint() -> None:
    dev, test = load_items("ifeval", "dev"), load_items("ifeval", "test")
    assert not {i.id for i in dev} & {i.id for i in test}
    assert 0.3 < len(dev) / (len(dev) + len(test)) < 0.5
    assert [i.id for i in load_items("ifeval", "test", limit=5)] == [i.id for i in test[:5]]
    assert all(split_of(i.id) == "dev" for i in dev)


def test_a_whole_run_with_a_scripted_model() -> None:
    """Answers with more commas score lower under a judge that prefers commas: on a no-comma
    prompt that judge must be wrong every time, and the rule `shorter` right."""
    doc = {"key": 7, "prompt": "Answer without commas.", "instruction_id_list": ["punctuation:no_comma"],
           "kwargs": [{}]}
    items = [Item("ifeval-7", "ifeval", doc["prompt"], doc)]
    replies = ["fine answer here", "a, b", "one, two, three, four"]

    def gen(req):  # the loop's way: the system prompt, the prompt as the user turn
        assert req.messages[0][0] == "system" and req.messages[1] == ("user", doc["prompt"])
        return replies[: req.sampling.n]

    def score(req):  # expected mode: all mass on the number of commas
        text = req.messages[-1][1].split("<response>")[1].split("</response>")[0]
        return [0.0 if i == min(10, text.count(",")) else -math.inf for i in range(11)]

    cfg = build_config({"review": {"mode": "expected", "scale": "raw"}})
    res = run_own(ScriptedBackend(gen, score), cfg, items, ["expected"], n=3, system="sys")
    assert res["answers"][0]["labels"] == [1.0, 0.0, 0.0]
    assert res["results"]["expected"]["pairwise"] == 0.0 and res["results"]["expected"]["pick"] == 0.0
    assert res["results"]["rule:shorter"]["pairwise"] == 0.5  # "a, b" is shortest: one right, one wrong
    assert res["results"]["rule:longer"]["pick"] == 0.0


def test_lance_judge_own_end_to_end_with_a_scripted_model(tmp_path, fake_base, monkeypatch, capsys) -> None:
    from lance_llm import backends
    from lance_llm.cli import main

    def gen(req):
        return ["Hi there", "Hi, there"][: req.sampling.n] if "without" not in req.messages[-1][1] else ["x"]

    monkeypatch.setenv("LANCE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backends, "make_backend", lambda cfg, path, fp: ScriptedBackend(gen, lambda r: [-1.0]))
    assert main(["judge", str(fake_base), "--own", "--sources", "ifeval", "--split", "dev", "--limit", "3",
                 "--n", "2", "--mode", "likelihood", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "| rule:shorter |" in out and "wrote" in out
    doc = json.loads((tmp_path / "out" / "judge_own.json").read_text())
    entry = next(iter(doc.values()))
    assert entry["prompts"] == 3 and len(entry["answers"]) == 3 and set(entry["results"]) == {
        "likelihood", "rule:shorter", "rule:longer", "rule:random", "siblings:agreement", "siblings:consensus"}
    assert entry["sample_seconds"] is not None and entry["results"]["likelihood"]["seconds_per_item"] is not None
    # again, all from the cache: no cost was measured, and none is made up
    assert main(["judge", str(fake_base), "--own", "--sources", "ifeval", "--split", "dev", "--limit", "3",
                 "--n", "2", "--mode", "likelihood", "--out", str(tmp_path / "again")]) == 0
    again = next(iter(json.loads((tmp_path / "again" / "judge_own.json").read_text()).values()))
    assert again["answers"] == entry["answers"] and again["sample_seconds"] is None
    assert again["results"]["likelihood"]["seconds_per_item"] is None
    assert main(["judge", str(fake_base), "--own", "--sources", "nope"]) == 2
    assert "--sources: unknown ['nope']" in capsys.readouterr().err
