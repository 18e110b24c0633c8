"""IFEval scoring (lm-eval's checker, made offline): known verdicts on hand-made responses.

For each instruction type, one response that satisfies it and one that violates it. No model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lance_llm.evaluate import ifeval

DEV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ifeval" / "dev.jsonl"

# (instruction id, kwargs, satisfying response, violating response)
CASES = [
    ("punctuation:no_comma", {}, "Hello world and goodbye", "Hello, world"),
    ("change_case:english_lowercase", {}, "all of this is lowercase.", "This Is Not Lowercase."),
    ("change_case:english_capital", {}, "ALL OF THIS IS UPPERCASE.", "Only partly UPPERCASE."),
    ("change_case:capital_word_frequency", {"capital_relation": "at least", "capital_frequency": 3},
     "THIS IS VERY loud. Really.", "This is quiet. Nothing SHOUTS here."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* first\n* second", "* only one"),
    ("detectable_format:title", {}, "<<A Fine Title>>\nSome text.", "A Fine Title\nSome text."),
    ("detectable_format:json_format", {}, '{"answer": 42}', "answer: 42"),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 5}, "one two three",
     "one two three four five six seven"),
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 2},
     "Just one sentence here.", "First sentence. Second sentence. Third one."),
    ("keywords:existence", {"keywords": ["banana"]}, "I ate a banana today.", "I ate an apple today."),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "The dog barked.", "The cat meowed."),
    ("startend:quotation", {}, '"Everything is quoted."', "Nothing is quoted."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Dear Ann,\nSee you.\nP.S. Bring cake.",
     "Dear Ann,\nSee you."),
]


def _doc(iid: str, kwargs: dict, prompt: str = "Do the task.") -> dict:
    return {"key": 1, "prompt": prompt, "instruction_id_list": [iid], "kwargs": [kwargs]}


@pytest.mark.parametrize(("iid", "kwargs", "good", "bad"), CASES, ids=[c[0] for c in CASES])
def test_known_verdicts(iid: str, kwargs: dict, good: str, bad: str) -> None:
    ok = ifeval.score(_doc(iid, kwargs), good)
    assert ok["prompt_strict"] and ok["inst_strict"] == [True]
    no = ifeval.score(_doc(iid, kwargs), bad)
    assert not no["prompt_strict"] and no["inst_strict"] == [False]
    assert not no["prompt_loose"]


def test_loose_forgives_a_preamble_line_strict_does_not() -> None:
    doc = _doc("punctuation:no_comma", {})
    v = ifeval.score(doc, "Sure, here it is:\nNo commas in this line")
    assert v["prompt_strict"] is False and v["prompt_loose"] is True


def test_instruction_level_lists_each_instruction() -> None:
    doc = {"key": 7, "prompt": "p", "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"],
           "kwargs": [{}, {}]}
    v = ifeval.score(doc, "no commas But Capitals")
    assert v["inst_strict"] == [True, False] and v["prompt_strict"] is False


def test_repeat_prompt_uses_the_prompt() -> None:
    doc = _doc("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, prompt="Say hi.")
    assert ifeval.score(doc, "Say hi. Hi!")["prompt_strict"]
    assert not ifeval.score(doc, "Hi!")["prompt_strict"]


def test_empty_response_fails_every_instruction() -> None:
    assert ifeval.score(_doc("punctuation:no_comma", {}), "   ")["inst_loose"] == [False]


def test_load_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    good = json.dumps(_doc("punctuation:no_comma", {}))
    p.write_text(good + "\n{not json\n")
    with pytest.raises(ifeval.IFEvalError, match=r"bad\.jsonl:2: not JSON"):
        ifeval.load(p)
    p.write_text(good + "\n" + json.dumps(_doc("made_up:thing", {})) + "\n")
    with pytest.raises(ifeval.IFEvalError, match=r"bad\.jsonl:2: unknown instruction"):
        ifeval.load(p)


def test_seeded_subset_is_stable(tmp_path: Path) -> None:
    p = tmp_path / "ten.jsonl"
    p.write_text("".join(json.dumps({**_doc("punctuation:no_comma", {}), "key": k}) + "\n" for k in range(10)))
    a, b = ifeval.load(p, limit=4, seed=3), ifeval.load(p, limit=4, seed=3)
    assert [d["key"] for d in a] == [d["key"] for d in b] and len(a) == 4
    assert len(ifeval.load(p)) == 10


@pytest.mark.skipif(not DEV.exists(), reason="../shared/data/ifeval/dev.jsonl not present")
def test_dev_file_loads() -> None:
    assert len(ifeval.load(DEV)) == 271
