"""Tests for the annotate stage: SFT selection, preference pairs, next seed, accumulation, SFT_0.

Method step 6: SFT = new pairs with score > 8.0 (instruction and response longer than 5 chars);
pairs: per high-quality seed, candidates = its degraded responses + the original, r = the lowest,
every c with score(c) - score(r) > 2.0 gives (c, r); ties and unscored candidates never pair;
next seed ("code") = new reviewed pairs + reviewed Seed_0, ("paper") = Seed_t + new pairs.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lance_llm.config import AnnotateConfig, ConfigError, DataConfig, build_config
from lance_llm.records import PreferencePair, Review, Sample, SFTExample
from lance_llm.seeds import load_review_examples
from lance_llm.stages.annotate import accumulate, make_pairs, next_seed, seed_sft, select_sft, union_by_id
from lance_llm.stages.review import parse_score, review_prompt

SYSTEM = "You are a careful multi-task assistant."
CFG = AnnotateConfig()


def rv(score: float | None) -> Review:
    return Review(mode="sampled", score=score, samples=[score])


def seed(sid: str, score: float | None, instruction: str | None = None) -> Sample:
    return Sample(id=sid, instruction=instruction or f"Seed instruction {sid} asking something.",
                  response=f"Original good response of {sid}.", review=rv(score))


def degraded(did: str, parent: str, score: float | None) -> Sample:
    return Sample(id=did, instruction=f"Seed instruction {parent} asking something.",
                  response=f"Degraded response {did}.", origin="degraded", parent_id=parent, iteration=1,
                  stage="review", review=rv(score))


def new(nid: str, score: float | None, instruction: str = "A brand new instruction text.",
        response: str = "A response to the new instruction.", parent: str = "s0") -> Sample:
    return Sample(id=nid, instruction=instruction, response=response, origin="new", parent_id=parent,
                  iteration=1, stage="review", review=rv(score))


def pair_ids(pairs: list[PreferencePair]) -> list[tuple[str, str]]:
    return [(p.chosen_id, p.rejected_id) for p in pairs]


# --------------------------------------------------------------------------------------------
# make_pairs
# --------------------------------------------------------------------------------------------


def test_margin_is_strict() -> None:
    h = seed("h", 9.0)
    cands = [degraded("d-eq", "h", 7.0), degraded("d-lt", "h", 6.5)]
    # r = d-lt (6.5); h: 9 - 6.5 = 2.5 > 2 -> pair; d-eq: 7 - 6.5 = 0.5 -> no pair
    assert pair_ids(make_pairs([h], cands, CFG, SYSTEM, 1)) == [("h", "d-lt")]
    # a difference exactly equal to the margin gives no pair
    assert make_pairs([seed("h", 9.0)], [degraded("d", "h", 7.0)], CFG, SYSTEM, 1) == []
    assert make_pairs([seed("h", 9.5)], [degraded("d", "h", 7.5)], CFG, SYSTEM, 1) == []
    assert pair_ids(make_pairs([seed("h", 9.01)], [degraded("d", "h", 7.0)], CFG, SYSTEM, 1)) == [("h", "d")]


@pytest.mark.parametrize(("high", "low"), [
    (round(16 / 3, 4), round(10 / 3, 4)),  # 5.3333 - 3.3333: means of three reviews, as review() stores them
    (round(13 / 3, 4), round(7 / 3, 4)),  # 4.3333 - 2.3333
    (round(26 / 3, 4), round(20 / 3, 4)),  # 8.6667 - 6.6667
    (round(29 / 3, 4), round(23 / 3, 4)),  # 9.6667 - 7.6667
])
def test_margin_equal_difference_with_float_rounding(high: float, low: float) -> None:
    # The two stored scores differ by exactly 2.0000 in decimal, but `high - low` in binary floating
    # point is 2.0000000000000004 (or ...01); a difference equal to the margin must not pair.
    assert round(high - low, 4) == 2.0
    pairs = make_pairs([seed("h", high)], [degraded("d", "h", low)], CFG, SYSTEM, 1)
    assert pairs == []


def test_ties_never_pair_even_with_zero_margin() -> None:
    cfg = AnnotateConfig(pair_margin=0.0)
    h = seed("h", 8.0)
    cands = [degraded("d1", "h", 8.0), degraded("d2", "h", 8.0)]
    assert make_pairs([h], cands, cfg, SYSTEM, 1) == []
    # two equally low candidates: neither is paired with the other
    h2 = seed("h2", 9.0)
    cands2 = [degraded("e1", "h2", 3.0), degraded("e2", "h2", 3.0)]
    pairs = make_pairs([h2], cands2, cfg, SYSTEM, 1)
    assert len(pairs) == 1
    assert pairs[0].chosen_id == "h2"
    assert pairs[0].rejected_id in {"e1", "e2"}


def test_unscored_candidates_excluded() -> None:
    h = seed("h", 9.0)
    cands = [degraded("d-none", "h", None), degraded("d-low", "h", 4.0)]
    pairs = make_pairs([h], cands, CFG, SYSTEM, 1)
    assert pair_ids(pairs) == [("h", "d-low")]
    # an unscored original takes no part either
    h_none = seed("hn", None)
    cands = [degraded("x1", "hn", 9.0), degraded("x2", "hn", 1.0)]
    assert pair_ids(make_pairs([h_none], cands, CFG, SYSTEM, 1)) == [("x1", "x2")]
    # only unscored degraded responses: nothing to pair with
    assert make_pairs([seed("h3", 9.0)], [degraded("y", "h3", None)], CFG, SYSTEM, 1) == []


def test_several_pairs_share_one_rejected() -> None:
    h = seed("h", 9.5)
    cands = [degraded("d1", "h", 8.0), degraded("d2", "h", 2.0), degraded("d3", "h", 4.5), degraded("d4", "h", 3.0)]
    pairs = make_pairs([h], cands, CFG, SYSTEM, 1)
    assert sorted(pair_ids(pairs)) == [("d1", "d2"), ("d3", "d2"), ("h", "d2")]
    assert {p.rejected[0]["content"] for p in pairs} == {"Degraded response d2."}
    assert all(p.score_rejected == 2.0 for p in pairs)


def test_degraded_can_be_chosen_and_original_rejected() -> None:
    h = seed("h", 3.0)
    cands = [degraded("d1", "h", 9.0), degraded("d2", "h", 4.0)]
    pairs = make_pairs([h], cands, CFG, SYSTEM, 1)
    assert pair_ids(pairs) == [("d1", "h")]
    p = pairs[0]
    assert p.chosen == [{"role": "assistant", "content": "Degraded response d1."}]
    assert p.rejected == [{"role": "assistant", "content": "Original good response of h."}]
    assert (p.score_chosen, p.score_rejected) == (9.0, 3.0)


def test_pair_contents() -> None:
    h = seed("h", 9.0, instruction="Explain how vaccines train the immune system.")
    pairs = make_pairs([h], [degraded("d", "h", 2.0)], CFG, SYSTEM, iteration=3)
    assert len(pairs) == 1
    p = pairs[0]
    assert p.prompt == [{"role": "system", "content": SYSTEM},
                        {"role": "user", "content": "Explain how vaccines train the immune system."}]
    assert p.chosen == [{"role": "assistant", "content": "Original good response of h."}]
    assert p.rejected == [{"role": "assistant", "content": "Degraded response d."}]
    assert (p.parent_id, p.chosen_id, p.rejected_id, p.iteration) == ("h", "h", "d", 3)
    assert PreferencePair.from_dict(p.to_dict()) == p


def test_pairs_only_use_own_degraded_responses() -> None:
    h1, h2 = seed("h1", 9.0), seed("h2", 5.0)
    reviewed = [
        degraded("a", "h1", 1.0),
        degraded("b", "h2", 1.0),
        new("n", 0.0, parent="h1"),  # a "new" candidate is never part of a preference pair
        degraded("orphan", "not-a-high-seed", 0.0),
    ]
    pairs = make_pairs([h1, h2], reviewed, CFG, SYSTEM, 1)
    assert pair_ids(pairs) == [("h1", "a"), ("h2", "b")]
    assert [p.parent_id for p in pairs] == ["h1", "h2"]


def test_seed_without_candidates_gives_nothing() -> None:
    assert make_pairs([seed("h", 9.0)], [], CFG, SYSTEM, 1) == []


def test_pair_ids_unique() -> None:
    highs = [seed(f"h{i}", 9.0) for i in range(3)]
    reviewed = [degraded(f"h{i}-d{j}", f"h{i}", float(j)) for i in range(3) for j in range(4)]
    pairs = make_pairs(highs, reviewed, CFG, SYSTEM, 1)
    assert len(pairs) == len({p.id for p in pairs}) > 0


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(st.none(), st.integers(0, 20).map(lambda x: x / 2)),
    st.lists(st.one_of(st.none(), st.integers(0, 20).map(lambda x: x / 2)), max_size=6),
    st.sampled_from([0.0, 0.5, 2.0, 3.5]),
)
def test_pairs_property(orig: float | None, scores: list[float | None], margin: float) -> None:
    h = seed("h", orig)
    cands = [degraded(f"d{i}", "h", s) for i, s in enumerate(scores)]
    cfg = AnnotateConfig(pair_margin=margin)
    pairs = make_pairs([h], cands, cfg, SYSTEM, 1)
    by_id = {c.id: c for c in [h, *cands]}
    scored_vals = [c.score for c in by_id.values() if c.score is not None]
    for p in pairs:
        assert p.score_chosen - p.score_rejected > margin
        assert by_id[p.chosen_id].score == p.score_chosen
        assert by_id[p.rejected_id].score == p.score_rejected
        assert p.score_rejected == min(scored_vals)
    assert len({p.rejected_id for p in pairs}) <= 1
    # every candidate clearing the margin against the lowest score is paired, exactly once
    if scored_vals:
        low = min(scored_vals)
        expected = sum(1 for v in scored_vals if v - low > margin)
        assert len(pairs) == expected
        assert len({p.chosen_id for p in pairs}) == expected


# --------------------------------------------------------------------------------------------
# select_sft
# --------------------------------------------------------------------------------------------


def test_select_sft_threshold_strict_and_new_only() -> None:
    reviewed = [
        new("n-eq", 8.0),
        new("n-above", 8.01),
        new("n-top", 10.0),
        new("n-low", 3.0),
        new("n-none", None),
        degraded("d-top", "h", 10.0),
        Sample(id="s-top", instruction="A seed instruction text.", response="A seed response text.",
               review=rv(10.0)),
    ]
    out = select_sft(reviewed, CFG, SYSTEM, iteration=2)
    assert [e.id for e in out] == ["sft-n-above", "sft-n-top"]
    e = out[0]
    assert e.prompt == [{"role": "system", "content": SYSTEM},
                        {"role": "user", "content": "A brand new instruction text."}]
    assert e.completion == [{"role": "assistant", "content": "A response to the new instruction."}]
    assert (e.source, e.iteration, e.score) == ("generated", 2, 8.01)
    assert SFTExample.from_dict(e.to_dict()) == e


def test_select_sft_min_chars() -> None:
    reviewed = [
        new("i5", 9.0, instruction="Why? "),  # 4 chars after strip
        new("i5b", 9.0, instruction="  Hello  "),  # exactly 5 chars: not longer than 5
        new("i6", 9.0, instruction="Hello!"),  # 6 chars
        new("r5", 9.0, response="Yes!!"),
        new("r6", 9.0, response="Yes!!!"),
    ]
    assert [e.id for e in select_sft(reviewed, CFG, SYSTEM, 1)] == ["sft-i6", "sft-r6"]
    cfg = AnnotateConfig(min_chars=0)
    assert len(select_sft(reviewed, cfg, SYSTEM, 1)) == 5


def test_select_sft_custom_threshold() -> None:
    reviewed = [new("a", 6.0), new("b", 6.5)]
    assert [e.id for e in select_sft(reviewed, AnnotateConfig(sft_threshold=6.0), SYSTEM, 1)] == ["sft-b"]


# --------------------------------------------------------------------------------------------
# next_seed
# --------------------------------------------------------------------------------------------

SEED0 = [seed(f"seed-{i:02d}", float(i % 11)) for i in range(12)]
EARLIER = [new(f"it1-new-{i}", 5.0) for i in range(5)]  # generated in iteration 1
CURRENT = [*SEED0, *EARLIER]  # Seed_1 under the code rule
NEW2 = [new(f"it2-new-{i}", 6.0) for i in range(6)] + [degraded(f"it2-deg-{i}", "seed-00", 2.0) for i in range(3)]


def test_next_seed_code_rule() -> None:
    out = next_seed(NEW2, SEED0, CURRENT, "code", rng_seed=7)
    ids = [s.id for s in out]
    assert sorted(ids) == sorted(s.id for s in [*SEED0, *NEW2])
    assert not any(i.startswith("it1-") for i in ids)  # not the current seed's earlier generated items
    assert len(ids) == len(set(ids))
    # the reviews and scores travel with the items
    by_id = {s.id: s for s in out}
    assert by_id["it2-deg-0"].score == 2.0 and by_id["seed-05"].score == 5.0


def test_next_seed_paper_rule() -> None:
    out = next_seed(NEW2, SEED0, CURRENT, "paper", rng_seed=7)
    assert sorted(s.id for s in out) == sorted(s.id for s in [*CURRENT, *NEW2])


def test_next_seed_shuffled_deterministically() -> None:
    a = [s.id for s in next_seed(NEW2, SEED0, CURRENT, "code", rng_seed=1)]
    b = [s.id for s in next_seed(NEW2, SEED0, CURRENT, "code", rng_seed=1)]
    c = [s.id for s in next_seed(NEW2, SEED0, CURRENT, "code", rng_seed=2)]
    assert a == b
    assert a != c
    assert a != [s.id for s in [*SEED0, *NEW2]]  # shuffled, not concatenated


def test_next_seed_limit_keeps_a_seeded_sample_of_the_union() -> None:
    full = [s.id for s in next_seed(NEW2, SEED0, CURRENT, "code", rng_seed=3)]
    capped = [s.id for s in next_seed(NEW2, SEED0, CURRENT, "code", rng_seed=3, limit=8)]
    assert capped == full[:8] and len(set(capped)) == 8  # the same shuffle, cut: a uniform sample
    assert [s.id for s in next_seed(NEW2, SEED0, CURRENT, "code", rng_seed=3, limit=100)] == full


def test_next_seed_limit_must_be_positive() -> None:
    with pytest.raises(ConfigError, match=r"annotate\.next_seed_limit"):
        build_config({"annotate": {"next_seed_limit": 0}})


# --------------------------------------------------------------------------------------------
# accumulate
# --------------------------------------------------------------------------------------------


def sft(i: str, it: int) -> SFTExample:
    return SFTExample(id=i, prompt=[{"role": "user", "content": i}], completion=[{"role": "assistant",
                      "content": f"answer {i} v{it}"}], source="generated", iteration=it)


def test_accumulate_keeps_previous_and_new_without_duplicates() -> None:
    prev = [sft(f"p{i}", 1) for i in range(10)]
    newer = [sft(f"n{i}", 2) for i in range(5)] + [sft("p3", 2)]  # p3 again (a resumed run)
    out = accumulate(prev, newer, rng_seed=11)
    ids = [e.id for e in out]
    assert len(ids) == len(set(ids)) == 15
    assert set(ids) == {e.id for e in prev} | {e.id for e in newer}
    p3 = next(e for e in out if e.id == "p3")
    assert p3.iteration == 1  # the earlier record is kept
    assert out == accumulate(prev, newer, rng_seed=11)
    assert [e.id for e in accumulate(prev, newer, rng_seed=12)] != ids


def test_accumulate_from_empty_and_into_empty() -> None:
    prev = [sft(f"p{i}", 1) for i in range(4)]
    assert sorted(e.id for e in accumulate([], prev, 0)) == ["p0", "p1", "p2", "p3"]
    assert sorted(e.id for e in accumulate(prev, [], 0)) == ["p0", "p1", "p2", "p3"]
    assert accumulate([], [], 0) == []


def test_accumulate_repeated_is_idempotent_as_a_set() -> None:
    prev = [sft(f"p{i}", 1) for i in range(6)]
    new_ = [sft(f"n{i}", 2) for i in range(6)]
    once = accumulate(prev, new_, 3)
    twice = accumulate(once, new_, 3)
    assert sorted(e.id for e in twice) == sorted(e.id for e in once)


def test_union_by_id_order() -> None:
    a = [sft("x", 1), sft("y", 1)]
    b = [sft("y", 2), sft("z", 2), sft("z", 3)]
    assert [(e.id, e.iteration) for e in union_by_id(a, b)] == [("x", 1), ("y", 1), ("z", 2)]


# --------------------------------------------------------------------------------------------
# seed_sft (SFT_0)
# --------------------------------------------------------------------------------------------


def test_seed_sft_builds_seed_and_review_examples() -> None:
    seeds = SEED0[:3]
    examples = [
        {"id": "rev-a", "instruction": "Say hi.", "response": "Hi.", "rationale": "  Short and fine.  ", "score": 6},
        {"id": "rev-b", "instruction": "Explain gravity.", "response": "Mass attracts mass.",
         "rationale": "Accurate but brief.", "score": 10},
    ]
    out = seed_sft(seeds, examples, SYSTEM, review_prompt)
    assert [e.id for e in out] == ["sft-seed-00", "sft-seed-01", "sft-seed-02", "sft-rev-a", "sft-rev-b"]
    for e, s in zip(out[:3], seeds, strict=True):
        assert e.source == "seed" and e.iteration == 0
        assert e.prompt == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": s.instruction}]
        assert e.completion == [{"role": "assistant", "content": s.response}]
    rev_a, rev_b = out[3:]
    assert rev_a.source == "review_example" and rev_a.score == 6.0
    assert rev_a.prompt[0] == {"role": "system", "content": SYSTEM}
    assert rev_a.prompt[1]["content"] == review_prompt("Say hi.", "Hi.")
    assert rev_a.completion[0]["content"] == "Short and fine.\nscore: 6"
    assert rev_b.completion[0]["content"].endswith("\nscore: 10")


def test_seed_sft_shipped_review_examples_roundtrip_through_parser() -> None:
    examples = load_review_examples(DataConfig())
    out = seed_sft([], examples, SYSTEM, review_prompt)
    assert len(out) == len(examples) >= 10
    for e, ex in zip(out, examples, strict=True):
        reply = e.completion[0]["content"]
        assert reply.rstrip().splitlines()[-1] == f"score: {ex['score']}"
        # what the model learns to write is exactly what the judge parser reads back
        assert parse_score(reply) == pytest.approx(float(ex["score"]))
        assert f"<question>\n{ex['instruction']}\n</question>" in e.prompt[1]["content"]


def test_seed_sft_ids_unique_for_shipped_data() -> None:
    examples = load_review_examples(DataConfig())
    out = seed_sft(SEED0, examples, SYSTEM, review_prompt)
    ids = [e.id for e in out]
    assert len(ids) == len(set(ids))


def test_pairs_and_sft_use_same_system_prompt() -> None:
    h = seed("h", 9.0)
    pairs = make_pairs([h], [degraded("d", "h", 1.0)], CFG, SYSTEM, 1)
    sfts = select_sft([new("n", 9.0)], CFG, SYSTEM, 1)
    seeds = seed_sft([h], [], SYSTEM, review_prompt)
    systems = {m["content"] for m in itertools.chain(pairs[0].prompt, sfts[0].prompt, seeds[0].prompt)
               if m["role"] == "system"}
    assert systems == {SYSTEM}
