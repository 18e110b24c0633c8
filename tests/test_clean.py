"""Tests for the clean stage (lance_llm.stages.clean): each rule on hand-made samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from lance_llm.config import CleanConfig
from lance_llm.records import RecordError, Sample
from lance_llm.stages.clean import REASONS, clean, load_decontamination, normalize, rouge_similar

S1_I = "Explain how photosynthesis converts sunlight into chemical energy inside plant cells."
S1_R = (
    "Photosynthesis takes place in chloroplasts, where chlorophyll captures light and the plant uses "
    "that energy to turn water and carbon dioxide into glucose and oxygen."
)
S2_I = "Describe the main causes of the French Revolution and its immediate consequences."
S2_R = (
    "Financial crisis, food shortages and Enlightenment ideas undermined the monarchy; in 1789 the "
    "Estates-General became a National Assembly, feudal privileges ended and the king lost power."
)
SEEDS = {
    "s1": Sample(id="s1", instruction=S1_I, response=S1_R),
    "s2": Sample(id="s2", instruction=S2_I, response=S2_R),
}

I_PARA = "Explain how photosynthesis turns sunlight into chemical energy inside plant cells."
I_POEM = "Write a short poem about autumn leaves drifting across a quiet city park."
I_POEM2 = "Write a short poem about autumn leaves drifting across a quiet town park."
I_BREAD = "List three practical tips for keeping a sourdough starter healthy during winter."
I_PLANTS = "Compare the water needs of cacti and ferns kept as houseplants."

R_POEM1 = "Crimson leaves spin slowly down, settling on benches while pigeons wander between the empty paths."
R_POEM2 = "Golden maple foliage whispers over lanterns as evening joggers pass the shuttered kiosk at dusk."
R_POEM3 = "Old oak branches shed amber coins onto the pond, and children collect them in paper bags."
R_BREAD = "Feed the starter twice daily, keep it near a warm oven, and use filtered water for best results."
R_PLANTS = "Cacti need water only every few weeks, whereas ferns like evenly moist soil and humid air."

D_COPY = S1_R.replace("oxygen", "nitrogen")  # the good answer with one word changed
D_WRONG = (
    "Photosynthesis mostly happens at night, when roots absorb moonlight and convert soil minerals "
    "directly into sugar."
)
D_WRONG2 = "Plants get all their energy from the soil, so sunlight only keeps their leaves warm and green."


def new(cid: str, instruction: str, response: str, parent: str = "s1") -> Sample:
    return Sample(id=cid, instruction=instruction, response=response, origin="new", parent_id=parent)


def deg(cid: str, response: str, parent: str = "s1") -> Sample:
    instruction = SEEDS[parent].instruction
    return Sample(id=cid, instruction=instruction, response=response, origin="degraded", parent_id=parent)


def kept_ids(result) -> list[str]:
    return [c.id for c in result.kept]


def reasons(result) -> dict[str, str]:
    return {d["id"]: d["reason"] for d in result.dropped}


def test_fixture_texts_are_mutually_dissimilar() -> None:
    # The tests below rely on these texts being unrelated to each other under ROUGE-L.
    texts = [S1_R, S2_R, R_POEM1, R_POEM2, R_POEM3, R_BREAD, R_PLANTS, D_WRONG, D_WRONG2]
    for i, a in enumerate(texts):
        for b in texts[i + 1 :]:
            assert not rouge_similar(a, b, 0.7), (a, b)


# --- rouge_similar and normalize ---------------------------------------------------------------


def test_rouge_similar_identical_and_disjoint() -> None:
    assert rouge_similar(R_POEM1, R_POEM1, 0.7)
    assert not rouge_similar("alpha beta gamma delta", "one two three four", 0.7)
    assert not rouge_similar("", R_POEM1, 0.7)  # no tokens: nothing to be similar to


def test_rouge_similar_substring_of_long_text_via_recall() -> None:
    short = "keep the starter warm"
    long = "When baking in winter " + short + " and feed it often with fresh flour and filtered water daily."
    f1 = rouge_scorer.RougeScorer(["rougeL"]).score(short, long)["rougeL"].fmeasure
    assert f1 < 0.7  # F1 alone would miss it ...
    assert rouge_similar(short, long, 0.7)  # ... recall/precision of 1.0 catches it
    assert rouge_similar(long, short, 0.7)  # and the test is symmetric


def test_rouge_similar_threshold_is_strict() -> None:
    # 3 of 4 tokens in common: recall = precision = F1 = 0.75 exactly.
    assert not rouge_similar("a b c d", "a b c x", 0.75)
    assert rouge_similar("a b c d", "a b c x", 0.74)
    assert not rouge_similar(R_POEM1, R_POEM1, 1.0)  # identical scores 1.0, which is not > 1.0


def test_normalize() -> None:
    assert normalize("  Hello\n\tWORLD  again ") == "hello world again"
    assert normalize("Straße") == normalize("STRASSE")


# --- new instructions -------------------------------------------------------------------------


def test_paraphrase_of_seed_instruction_dropped_different_one_kept() -> None:
    r = clean(SEEDS, [new("a", I_PARA, R_POEM1), new("b", I_POEM, R_POEM2)], CleanConfig())
    assert kept_ids(r) == ["b"]
    assert reasons(r) == {"a": "instruction_similar_to_seed"}


def test_near_identical_instructions_keep_only_the_first() -> None:
    cands = [
        new("a1", I_POEM, R_POEM1),
        new("b1", I_POEM2, R_POEM2),
        new("a2", I_POEM, R_POEM3),
        new("b2", I_POEM2, R_BREAD),
        new("c1", I_PLANTS, R_PLANTS),
    ]
    r = clean(SEEDS, cands, CleanConfig())
    assert kept_ids(r) == ["a1", "a2", "c1"]
    assert reasons(r) == {"b1": "instruction_near_duplicate", "b2": "instruction_near_duplicate"}


def test_instruction_length_bounds() -> None:
    cfg = CleanConfig(instruction_max_words=13)  # bounds are inclusive: 13 words is fine, 14 is not
    too_long = "Write a detailed essay on the history of bread baking across many different cultures."
    assert len(I_POEM.split()) == 13 and len(too_long.split()) == 14
    cands = [
        new("short", "Name three rivers.", R_POEM1),
        new("long", too_long, R_POEM2),
        new("ok", I_POEM, R_POEM3),
    ]
    r = clean(SEEDS, cands, cfg)
    assert kept_ids(r) == ["ok"]
    assert reasons(r) == {"short": "instruction_length", "long": "instruction_length"}


def test_responses_sharing_one_instruction_all_kept() -> None:
    cands = [new("a", I_POEM, R_POEM1), new("b", I_POEM, R_POEM2), new("c", I_POEM, R_POEM3)]
    r = clean(SEEDS, cands, CleanConfig(), seen={S1_I, S1_R})
    assert kept_ids(r) == ["a", "b", "c"]
    assert r.dropped == []


def test_always_filter_false_reproduces_single_instruction_quirk() -> None:
    single = [new("a", "Name three rivers.", R_POEM1), new("b", "Name three rivers.", R_POEM2)]
    strict = clean(SEEDS, single, CleanConfig(always_filter=True))
    assert kept_ids(strict) == []
    assert set(reasons(strict).values()) == {"instruction_length"}
    quirk = clean(SEEDS, single, CleanConfig(always_filter=False))
    assert kept_ids(quirk) == ["a", "b"]
    # A lone paraphrase of the seed instruction slips through too.
    assert kept_ids(clean(SEEDS, [new("p", I_PARA, R_POEM1)], CleanConfig(always_filter=False))) == ["p"]
    # With two distinct instructions for the parent the filters apply again.
    two = [*single, new("c", I_POEM, R_POEM3)]
    r = clean(SEEDS, two, CleanConfig(always_filter=False))
    assert kept_ids(r) == ["c"]
    assert reasons(r) == {"a": "instruction_length", "b": "instruction_length"}
    # Response rules still apply under the quirk.
    r = clean(SEEDS, [new("s", I_PARA, "Too short.")], CleanConfig(always_filter=False))
    assert reasons(r) == {"s": "response_length"}


# --- responses --------------------------------------------------------------------------------


def test_short_response_dropped_at_ten_word_boundary() -> None:
    nine = "one two three four five six seven eight nine"
    ten = "Rivers carve valleys slowly as water erodes soft rock over centuries."
    assert len(nine.split()) == 9 and len(ten.split()) == 11
    r = clean(SEEDS, [new("a", I_POEM, nine), new("b", I_POEM, ten)], CleanConfig())
    assert kept_ids(r) == ["b"]
    assert reasons(r) == {"a": "response_length"}
    r = clean(SEEDS, [new("c", I_POEM, ten)], CleanConfig(response_max_words=10))
    assert reasons(r) == {"c": "response_length"}


def test_new_response_similar_to_seed_response_dropped() -> None:
    r = clean(
        SEEDS,
        [new("a", I_PLANTS, S1_R.replace("glucose", "sugar")), new("b", I_PLANTS, R_PLANTS)],
        CleanConfig(),
    )
    assert kept_ids(r) == ["b"]
    assert reasons(r) == {"a": "response_similar_to_seed"}


def test_response_near_duplicates_are_per_instruction() -> None:
    near = R_POEM1.replace("pigeons", "sparrows")
    cands = [new("a", I_POEM, R_POEM1), new("b", I_POEM, near), new("c", I_PLANTS, near)]
    r = clean(SEEDS, cands, CleanConfig())
    # Same instruction: the near copy goes; under another instruction it is a different pair.
    assert kept_ids(r) == ["a", "c"]
    assert reasons(r) == {"b": "response_near_duplicate"}


# --- degraded responses -----------------------------------------------------------------------


def test_degraded_rules() -> None:
    cands = [
        deg("copy", D_COPY),
        deg("wrong", D_WRONG),
        deg("wrong_again", D_WRONG.replace("moonlight", "starlight")),
        deg("short", "Plants eat dirt to grow."),
        deg("wrong2", D_WRONG2),
    ]
    r = clean(SEEDS, cands, CleanConfig(), seen={S1_I, S1_R, S2_I, S2_R})
    assert kept_ids(r) == ["wrong", "wrong2"]
    assert reasons(r) == {
        "copy": "response_similar_to_seed",
        "wrong_again": "response_near_duplicate",
        "short": "response_length",
    }


# --- exact deduplication ----------------------------------------------------------------------


def test_exact_duplicate_instruction_across_parents() -> None:
    variant = "  list three practical tips for keeping a sourdough starter healthy during WINTER. "
    cands = [
        new("a", I_BREAD, R_BREAD, "s1"),
        new("b", variant, R_PLANTS, "s2"),
        new("c", I_POEM, R_POEM1, "s2"),
    ]
    r = clean(SEEDS, cands, CleanConfig())
    assert kept_ids(r) == ["a", "c"]
    assert reasons(r) == {"b": "exact_duplicate"}
    assert kept_ids(clean(SEEDS, cands, CleanConfig(exact_dedup=False))) == ["a", "b", "c"]


def test_instruction_dedup_counts_only_kept_candidates() -> None:
    # s1's copy of the instruction loses its only response, so s2's copy is the first kept one.
    cands = [new("a", I_BREAD, "Too short.", "s1"), new("b", I_BREAD, R_BREAD, "s2")]
    r = clean(SEEDS, cands, CleanConfig())
    assert kept_ids(r) == ["b"]
    assert reasons(r) == {"a": "response_length"}


def test_exact_duplicate_response_and_seen_texts() -> None:
    cands = [
        new("a", I_POEM, R_POEM1, "s1"),
        new("b", I_PLANTS, R_POEM1.upper(), "s2"),  # same response, other parent and instruction
        new("c", S2_I.lower(), R_POEM2, "s1"),  # instruction is a seed text
        new("d", I_BREAD, S2_R, "s1"),  # response is a seed text
        deg("e", R_POEM1, "s2"),  # degraded response equal to a kept new one
    ]
    r = clean(SEEDS, cands, CleanConfig(), seen={S1_I, S1_R, S2_I, S2_R})
    assert kept_ids(r) == ["a"]
    assert reasons(r) == {
        "b": "exact_duplicate",
        "c": "exact_duplicate",
        "d": "exact_duplicate",
        "e": "exact_duplicate",
    }


# --- decontamination --------------------------------------------------------------------------

EVAL = "A farmer has seventeen sheep and all but nine run away across the hills so how many sheep remain"


def _eval_file(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_decontamination_13gram_hit_and_12_word_near_miss(tmp_path: Path) -> None:
    path = _eval_file(
        tmp_path, [json.dumps({"prompt": EVAL}), "", json.dumps({"prompt": "Too short to match."})]
    )
    grams = load_decontamination([path], "prompt", 13)
    words = EVAL.split()
    hit = "Puzzle time: " + " ".join(words[:13]).upper() + " meadow today?"
    miss = "Puzzle time: " + " ".join(words[:12]) + " a meadow today?"
    cands = [
        new("hit", I_POEM, hit),
        new("miss", I_POEM, miss),
        new("instr", "Riddle: " + " ".join(words[3:16]), R_POEM1),
        deg("deg", D_WRONG),
    ]
    r = clean(SEEDS, cands, CleanConfig(), contamination=grams)
    assert kept_ids(r) == ["miss", "deg"]
    assert reasons(r) == {"hit": "contaminated", "instr": "contaminated"}
    # No contamination set: nothing is flagged.
    assert "contaminated" not in reasons(clean(SEEDS, cands, CleanConfig()))
    # A set built with another n would never match, so it is refused rather than ignored.
    with pytest.raises(ValueError, match="decontaminate_ngram=13"):
        clean(SEEDS, cands, CleanConfig(), contamination=load_decontamination([path], "prompt", 8))


def test_short_eval_prompt_yields_no_ngrams(tmp_path: Path) -> None:
    path = _eval_file(tmp_path, [json.dumps({"prompt": "What is two plus two?"})])
    assert load_decontamination([path], "prompt", 13) == set()
    assert ("what", "is") in load_decontamination([path], "prompt", 2)


def test_decontamination_reader_errors_name_file_and_line(tmp_path: Path) -> None:
    bad_json = _eval_file(tmp_path, [json.dumps({"prompt": EVAL}), "{not json"])
    with pytest.raises(RecordError, match=rf"{bad_json}:2"):
        load_decontamination([bad_json], "prompt", 13)
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"question": EVAL}) + "\n", encoding="utf-8")
    with pytest.raises(RecordError, match=rf"{missing}:1: missing field 'prompt'"):
        load_decontamination([str(missing)], "prompt", 13)
    with pytest.raises(ValueError, match="n-gram"):
        load_decontamination([], "prompt", 0)


# --- validation, priority, counts -------------------------------------------------------------


def test_unknown_parent_raises_naming_candidate() -> None:
    with pytest.raises(ValueError, match="'orphan'"):
        clean(SEEDS, [new("ok", I_POEM, R_POEM1), new("orphan", I_BREAD, R_BREAD, "s9")], CleanConfig())
    with pytest.raises(ValueError, match="'none'"):
        clean(SEEDS, [Sample(id="none", instruction=I_POEM, response=R_POEM1, origin="new")], CleanConfig())
    with pytest.raises(ValueError, match="'seedlike'"):
        clean(
            SEEDS,
            [Sample(id="seedlike", instruction=I_POEM, response=R_POEM1, parent_id="s1")],
            CleanConfig(),
        )


def test_one_reason_per_candidate_first_rule_wins(tmp_path: Path) -> None:
    grams = load_decontamination([_eval_file(tmp_path, [json.dumps({"prompt": EVAL})])], "prompt", 13)
    cands = [
        new("cont", "Hi.", EVAL),  # contaminated response and short instruction -> contaminated
        new("dup", "Hi.", S1_R),  # seen response and short instruction -> exact_duplicate
        new("ilen", "Hi.", "Too short."),  # short instruction and short response -> instruction_length
    ]
    r = clean(SEEDS, cands, CleanConfig(), seen={S1_R}, contamination=grams)
    assert reasons(r) == {"cont": "contaminated", "dup": "exact_duplicate", "ilen": "instruction_length"}
    assert [d["id"] for d in r.dropped] == ["cont", "dup", "ilen"]


def test_counts_invariant_and_records_in_input_order() -> None:
    cands = [
        new("a", I_POEM, R_POEM1, "s1"),
        deg("b", D_WRONG, "s1"),
        new("c", I_PARA, R_POEM2, "s1"),
        new("d", I_PLANTS, R_PLANTS, "s2"),
        new("e", I_POEM2, R_POEM3, "s1"),
        new("f", I_PLANTS, "Too short.", "s2"),
        deg("g", D_COPY, "s1"),
        new("h", I_BREAD, R_POEM1.lower(), "s2"),
    ]
    r = clean(SEEDS, cands, CleanConfig())
    assert kept_ids(r) == ["a", "b", "d"]
    assert r.dropped[0] == {
        "id": "c",
        "parent_id": "s1",
        "origin": "new",
        "reason": "instruction_similar_to_seed",
    }
    expected = dict.fromkeys(REASONS, 0)
    expected.update(
        instruction_similar_to_seed=1,
        instruction_near_duplicate=1,
        response_length=1,
        response_similar_to_seed=1,
        exact_duplicate=1,
        input=8,
        kept=3,
    )
    assert r.counts == expected
    assert r.counts["input"] == r.counts["kept"] + sum(r.counts[k] for k in REASONS)


def test_empty_input() -> None:
    r = clean(SEEDS, [], CleanConfig())
    assert r.kept == [] and r.dropped == []
    assert r.counts == {**dict.fromkeys(REASONS, 0), "input": 0, "kept": 0}
