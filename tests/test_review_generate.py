"""Tests for the review, split and generate stages with a scripted fake backend (no model).

Method: 3 sampled reviews per pair, the score is the mean of the parsed ones, a pair with no
parsable review has no score (a counted failure, never 0); score > V is high quality, otherwise
low; low seeds get new instructions (text after `Final Answer:`) and n responses each; high seeds
get degraded responses to their own instruction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from conftest import ScriptedBackend
from lance_llm.backends.base import GenerateRequest, ScoreRequest
from lance_llm.config import GenerateConfig, ReviewConfig, SamplingConfig
from lance_llm.prompts import load, render
from lance_llm.records import Review, Sample
from lance_llm.stages.generate import generate, split
from lance_llm.stages.review import SCORE_PREFIX, SCORE_TOKENS, rank_scale, raw_scores, review, review_prompt

SYSTEM = "You are a careful multi-task assistant."


def user_text(req: GenerateRequest | ScoreRequest) -> str:
    roles = dict(req.messages)
    return roles["user"]


def sample(i: str) -> Sample:
    return Sample(id=i, instruction=f"Instruction number {i} about a topic.",
                  response=f"Response number {i} with some useful content.")


def scored(i: str, score: float | None) -> Sample:
    s = sample(i)
    s.review = Review(mode="sampled", score=score, samples=[score])
    return s


# --------------------------------------------------------------------------------------------
# review: sampled mode
# --------------------------------------------------------------------------------------------


def scripted_review_backend(script: dict[str, list[str]], samples: Sequence[Sample]) -> ScriptedBackend:
    by_prompt = {review_prompt(s.instruction, s.response): script[s.id] for s in samples}

    def gen(req: GenerateRequest) -> list[str]:
        return by_prompt[user_text(req)]

    return ScriptedBackend(gen=gen)


def test_review_sampled_averages_only_parsed_replies() -> None:
    samples = [sample("a"), sample("b"), sample("c"), sample("d")]
    script = {
        "a": ["Good.\nscore: 6", "I cannot decide.", "Great.\nScore: 9"],
        "b": ["no score here", "score: <points>", "score: eleven"],
        "c": ["score: 8/10", "**Score:** 8", "score: 5"],
        "d": ["score: 11", "score: 4/5", "score: 7"],
    }
    backend = scripted_review_backend(script, samples)
    out, stats = review(samples, backend, ReviewConfig(), SYSTEM, seed=0)

    assert [s.id for s in out] == ["a", "b", "c", "d"]
    a, b, c, d = out
    assert a.review is not None and b.review is not None and c.review is not None and d.review is not None
    assert a.score == pytest.approx(7.5)
    assert a.review.samples == [6.0, None, 9.0]
    assert a.review.parse_failures == 1
    assert a.review.replies == script["a"]
    assert a.review.mode == "sampled"

    assert b.score is None  # never 0
    assert b.review.samples == [None, None, None]
    assert b.review.parse_failures == 3

    assert c.score == pytest.approx(7.0)
    assert c.review.parse_failures == 0

    assert d.score == pytest.approx(7.0)  # 11 and 4/5 are failures, not clipped or rescaled
    assert d.review.samples == [None, None, 7.0]
    assert d.review.parse_failures == 2

    assert stats.to_dict() == {"pairs": 4, "scored": 3, "unscored": 1, "replies": 12, "reply_parse_failures": 6}


def test_review_all_failures_is_unscored_not_zero() -> None:
    samples = [sample("x")]
    backend = scripted_review_backend({"x": ["", "meh", "score: -1"]}, samples)
    out, stats = review(samples, backend, ReviewConfig(), SYSTEM, seed=3)
    assert out[0].score is None
    assert out[0].review is not None and out[0].review.score is None
    assert stats.unscored == 1
    assert stats.scored == 0
    assert stats.reply_parse_failures == 3


def test_review_requests_follow_config_and_inputs_untouched() -> None:
    samples = [sample("a"), sample("b")]
    cfg = ReviewConfig(samples=5, sampling=SamplingConfig(temperature=0.3, top_p=0.8, max_new_tokens=77))
    backend = scripted_review_backend({"a": ["score: 1"] * 5, "b": ["score: 2"] * 5}, samples)
    out, _ = review(samples, backend, cfg, SYSTEM, seed=0)

    assert len(backend.generate_calls) == 1  # batched: one call for all pairs
    reqs = backend.generate_calls[0]
    assert len(reqs) == 2
    for req, s in zip(reqs, samples, strict=True):
        assert req.messages[0] == ("system", SYSTEM)
        assert req.messages[1][0] == "user"
        user = req.messages[1][1]
        assert f"<question>\n{s.instruction}\n</question>" in user
        assert f"<response>\n{s.response}\n</response>" in user
        assert (req.sampling.temperature, req.sampling.top_p, req.sampling.max_new_tokens, req.sampling.n) == (
            0.3, 0.8, 77, 5)
    assert reqs[0].sampling.seed != reqs[1].sampling.seed  # per-pair seeds
    assert [s.score for s in out] == [1.0, 2.0]
    assert all(s.review is None for s in samples)  # the inputs are not modified


def test_review_defaults_are_method_numbers() -> None:
    samples = [sample("a")]
    backend = scripted_review_backend({"a": ["score: 5"] * 3}, samples)
    review(samples, backend, ReviewConfig(), SYSTEM, seed=0)
    sp = backend.generate_calls[0][0].sampling
    assert (sp.n, sp.temperature, sp.top_p, sp.max_new_tokens) == (3, 0.7, 0.9, 512)


def test_review_request_seeds_are_deterministic() -> None:
    samples = [sample("a"), sample("b")]
    script = {"a": ["score: 1"] * 3, "b": ["score: 2"] * 3}
    b1, b2, b3 = (scripted_review_backend(script, samples) for _ in range(3))
    review(samples, b1, ReviewConfig(), SYSTEM, seed=0)
    review(samples, b2, ReviewConfig(), SYSTEM, seed=0)
    review(samples, b3, ReviewConfig(), SYSTEM, seed=1)
    assert b1.generate_calls == b2.generate_calls
    assert [r.sampling.seed for r in b1.generated_requests] != [r.sampling.seed for r in b3.generated_requests]


def test_review_empty_makes_no_call() -> None:
    backend = ScriptedBackend()
    out, stats = review([], backend, ReviewConfig(), SYSTEM, seed=0)
    assert out == []
    assert stats.pairs == 0
    assert backend.generate_calls == [] and backend.score_calls == []


# --------------------------------------------------------------------------------------------
# review: expected mode
# --------------------------------------------------------------------------------------------


def one_hot(k: int) -> list[float]:
    lps = [-math.inf] * 11
    lps[k] = 0.0
    return lps


def test_review_expected_mode_uses_logprobs() -> None:
    samples = [sample("a"), sample("b"), sample("c")]
    half = [-math.inf] * 11
    half[2] = half[10] = math.log(0.5)
    scripted = {"a": one_hot(9), "b": half, "c": [-3.0] * 11}
    by_prompt = {review_prompt(s.instruction, s.response): scripted[s.id] for s in samples}
    backend = ScriptedBackend(score=lambda req: by_prompt[user_text(req)])

    out, stats = review(samples, backend, ReviewConfig(mode="expected"), SYSTEM, seed=0)

    assert backend.generate_calls == []
    assert len(backend.score_calls) == 1
    for req in backend.score_calls[0]:
        assert req.prefix == SCORE_PREFIX == "score: "
        assert req.continuations == SCORE_TOKENS
        assert req.messages[0] == ("system", SYSTEM)
    assert [s.score for s in out] == [pytest.approx(9.0), pytest.approx(6.0), pytest.approx(5.0)]
    assert all(s.review is not None and s.review.mode == "expected" for s in out)
    assert stats.scored == 3 and stats.unscored == 0 and stats.reply_parse_failures == 0


# --------------------------------------------------------------------------------------------
# split
# --------------------------------------------------------------------------------------------


def test_split_threshold_is_strict() -> None:
    seeds = [scored("s0", 0.0), scored("s1", 7.0), scored("s2", 7.0001), scored("s3", None),
             scored("s4", 10.0), scored("s5", 6.99), sample("s6")]
    low, high, unscored = split(seeds, 7.0)
    assert [s.id for s in low] == ["s0", "s1", "s5"]  # == threshold is low quality
    assert [s.id for s in high] == ["s2", "s4"]
    assert [s.id for s in unscored] == ["s3", "s6"]  # no review / no score: neither branch


def test_split_other_threshold() -> None:
    seeds = [scored("a", 5.0), scored("b", 5.5)]
    low, high, unscored = split(seeds, 5.0)
    assert ([s.id for s in low], [s.id for s in high], unscored) == (["a"], ["b"], [])


# --------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------

L1 = scored("low-1", 3.0)
L2 = scored("low-2", 7.0)
H1 = scored("high-1", 9.0)

INSTR_REPLIES = {
    "low-1": [
        "Thought Process: widen it.\nFinal Answer: Explain the causes of ocean tides in detail.",
        "Thought Process: I forgot the marker.",
        "Final Answer:",
        '**Final Answer:** "List four renewable energy sources and one drawback of each."',
    ],
    "low-2": ["nothing", "still nothing", "Thought Process: x\nFinal Answer: Compare two sorting algorithms.",
              "no"],
}
DEGRADE_REPLIES = {
    "high-1": [
        "Thought Process: add errors.\nFinal Answer: Water boils at 90 degrees at sea level, always.",
        "I refuse to write a worse answer.",
        "Final Answer: The sky is blue because it reflects the ocean.",
        "final answer: Tides are caused by wind.",
    ],
}


def make_gen_backend(fingerprint: str = "fake-model@1") -> ScriptedBackend:
    instr_prompts = {render(load("new_instruction"), instruction=s.instruction, response=s.response): s.id
                     for s in (L1, L2)}
    degrade_prompts = {render(load("degrade_response"), instruction=s.instruction, response=s.response): s.id
                       for s in (H1,)}

    def gen(req: GenerateRequest) -> list[str]:
        user = user_text(req)
        if user in instr_prompts:
            return INSTR_REPLIES[instr_prompts[user]][: req.sampling.n]
        if user in degrade_prompts:
            return DEGRADE_REPLIES[degrade_prompts[user]][: req.sampling.n]
        return [f"Answer {j} to: {user}" for j in range(req.sampling.n)]

    return ScriptedBackend(gen=gen, fingerprint=fingerprint)


GEN_CFG = GenerateConfig(  # the free format: one reply per sample, parsed after (the fill format: below)
    n_instructions=4, n_responses=3, n_degraded=4, format="free",
    sampling=SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=111),
    response_sampling=SamplingConfig(temperature=0.5, top_p=0.95, max_new_tokens=222),
)


def test_generate_new_candidates_from_parsed_final_answers() -> None:
    backend = make_gen_backend()
    cands, stats = generate([L1, L2], [H1], backend, GEN_CFG, SYSTEM, iteration=1, seed=0)
    new = [c for c in cands if c.origin == "new"]
    expected_instr = [
        ("low-1", "Explain the causes of ocean tides in detail."),
        ("low-1", "List four renewable energy sources and one drawback of each."),
        ("low-2", "Compare two sorting algorithms."),
    ]
    got_instr = list(dict.fromkeys((c.parent_id, c.instruction) for c in new))
    assert got_instr == expected_instr
    assert len(new) == 3 * GEN_CFG.n_responses
    for parent, instr in expected_instr:
        responses = [c.response for c in new if c.instruction == instr and c.parent_id == parent]
        assert responses == [f"Answer {j} to: {instr}" for j in range(GEN_CFG.n_responses)]
    for c in new:
        assert (c.iteration, c.stage, c.model, c.review) == (1, "generate", "fake-model@1", None)

    assert stats.low_seeds == 2 and stats.high_seeds == 1
    assert stats.instruction_replies == 8
    assert stats.instruction_parse_failures == 5  # no marker (x4) and an empty answer (x1)
    assert stats.new_instructions == 3
    assert stats.new_responses == 9


def test_generate_answer_requests() -> None:
    backend = make_gen_backend()
    generate([L1, L2], [H1], backend, GEN_CFG, SYSTEM, iteration=1, seed=0)
    assert len(backend.generate_calls) == 2  # both branches batched together, then the answers
    first, answers = backend.generate_calls
    assert len(first) == 3
    assert [r.sampling.n for r in first] == [4, 4, 4]
    assert all(r.sampling.max_new_tokens == 111 for r in first)
    assert len(answers) == 3  # only for parsed instructions
    for r in answers:
        assert r.messages[0] == ("system", SYSTEM)
        assert r.messages[1][0] == "user"
        assert r.sampling.n == 3
        assert (r.sampling.temperature, r.sampling.top_p, r.sampling.max_new_tokens) == (0.5, 0.95, 222)
    assert len({r.sampling.seed for r in answers}) == 3


def test_generate_degraded_candidates() -> None:
    backend = make_gen_backend()
    cands, stats = generate([L1, L2], [H1], backend, GEN_CFG, SYSTEM, iteration=2, seed=0)
    deg = [c for c in cands if c.origin == "degraded"]
    assert [c.response for c in deg] == [
        "Water boils at 90 degrees at sea level, always.",
        "The sky is blue because it reflects the ocean.",
        "Tides are caused by wind.",
    ]
    for c in deg:
        assert c.instruction == H1.instruction
        assert c.parent_id == "high-1"
        assert (c.iteration, c.stage, c.model) == (2, "generate", "fake-model@1")
    assert stats.degrade_replies == 4
    assert stats.degrade_parse_failures == 1
    assert stats.degraded_responses == 3


def test_fill_format_prefills_the_sections_and_stops_at_the_next() -> None:
    """format=fill: one call writes the thoughts (prefix "Thought Process:", stopped at the model's own
    "Final Answer"), one writes each thought's answer (prefix thought + "Final Answer:", stopped at a
    section label); an answer left empty is the parse failure; the answers then get their responses."""
    from lance_llm.stages.generate import ANSWER_STOP, THOUGHT_STOP

    def gen(req: GenerateRequest) -> list[str]:
        if req.prefix == "Thought Process:":
            # a model that writes its own Final Answer after the thought: the stop cuts it away
            return [f" idea {k}.\nFinal Answer: ignored" for k in range(req.sampling.n)]
        if req.prefix.endswith("Final Answer:"):
            idea = req.prefix.split("idea ")[1][0]
            # idea 2 answers with a section label at once: empty after the stop, a parse failure
            return ["\nOriginal instruction: x" if idea == "2" else f" Task {idea} in detail.\nExample 4\nmore"]
        return [f"Answer {j}" for j in range(req.sampling.n)]

    backend = ScriptedBackend(gen=gen)
    cfg = GenerateConfig(n_instructions=3, n_responses=1, n_degraded=2, thought_max_new_tokens=77,
                         sampling=SamplingConfig(0.7, 0.9, 111))
    cands, stats = generate([L1], [H1], backend, cfg, SYSTEM, iteration=1, seed=0)
    thoughts, answers, responses = backend.generate_calls
    assert [r.prefix for r in thoughts] == ["Thought Process:"] * 2 and all(r.stop == THOUGHT_STOP for r in thoughts)
    assert [r.sampling.n for r in thoughts] == [3, 2] and {r.sampling.max_new_tokens for r in thoughts} == {77}
    assert [r.prefix for r in answers] == [f"Thought Process: idea {k}.\nFinal Answer:" for k in (0, 1, 2, 0, 1)]
    assert all(r.stop == ANSWER_STOP and r.sampling.n == 1 and r.sampling.max_new_tokens == 111 for r in answers)
    assert len({r.sampling.seed for r in answers}) == 5 and answers[0].messages == thoughts[0].messages
    assert [c.instruction for c in cands if c.origin == "new"] == ["Task 0 in detail.", "Task 1 in detail."]
    assert [c.response for c in cands if c.origin == "degraded"] == ["Task 0 in detail.", "Task 1 in detail."]
    assert len(responses) == 2
    assert (stats.instruction_replies, stats.instruction_parse_failures, stats.degrade_parse_failures) == (3, 1, 0)


def test_generate_ids_deterministic_and_unique() -> None:
    c1, _ = generate([L1, L2], [H1], make_gen_backend(), GEN_CFG, SYSTEM, iteration=1, seed=0)
    c2, _ = generate([L1, L2], [H1], make_gen_backend(), GEN_CFG, SYSTEM, iteration=1, seed=0)
    assert [c.id for c in c1] == [c.id for c in c2]
    assert [c.to_dict() for c in c1] == [c.to_dict() for c in c2]
    assert len({c.id for c in c1}) == len(c1)
    c3, _ = generate([L1, L2], [H1], make_gen_backend(), GEN_CFG, SYSTEM, iteration=2, seed=0)
    assert not {c.id for c in c1} & {c.id for c in c3}  # another iteration never reuses an id
    assert all(c.id.startswith("it1-") for c in c1)


def test_generate_request_seeds_deterministic() -> None:
    b1, b2, b3 = make_gen_backend(), make_gen_backend(), make_gen_backend()
    generate([L1, L2], [H1], b1, GEN_CFG, SYSTEM, iteration=1, seed=0)
    generate([L1, L2], [H1], b2, GEN_CFG, SYSTEM, iteration=1, seed=0)
    generate([L1, L2], [H1], b3, GEN_CFG, SYSTEM, iteration=1, seed=5)
    assert b1.generate_calls == b2.generate_calls
    assert [r.sampling.seed for r in b1.generated_requests] != [r.sampling.seed for r in b3.generated_requests]


def test_generate_nothing_to_do() -> None:
    backend = make_gen_backend()
    cands, stats = generate([], [], backend, GEN_CFG, SYSTEM, iteration=1, seed=0)
    assert cands == []
    assert stats.new_instructions == 0 and stats.degraded_responses == 0


# --------------------------------------------------------------------------------------------
# rank scale: 10 x the mid-rank percentile of the raw score within the seed's raw scores
# --------------------------------------------------------------------------------------------
def raw(i: str, score: float | None, raw_score: float | None = None) -> Sample:
    s = sample(i)
    s.review = Review(mode="likelihood", score=score, samples=[score], raw_score=raw_score)
    return s


def test_rank_scale_is_the_mid_rank_percentile_within_the_reference() -> None:
    ref = [1.0, 2.0, 3.0, 4.0]
    out = rank_scale([raw("a", 2.5), raw("b", 2.0), raw("c", 0.5), raw("d", 9.0), raw("e", 4.0)], ref)
    assert [s.score for s in out] == [5.0, 3.75, 0.0, 10.0, 8.75]  # 2 below; 1 below + half of 1 tie; ...
    assert [s.review.raw_score for s in out] == [2.5, 2.0, 0.5, 9.0, 4.0]  # the judge's own score is kept
    # the seed ranked against itself: (k + 0.5) / n, whatever the raw values are
    seed = rank_scale([raw(str(k), v) for k, v in enumerate([0.1, 7.0, 7.5, 42.0])], [0.1, 7.0, 7.5, 42.0])
    assert [s.score for s in seed] == [1.25, 3.75, 6.25, 8.75]
    assert [s.score for s in rank_scale([raw("t", 3.0)] * 3, [3.0, 3.0, 3.0])] == [5.0] * 3  # all tied: the middle


def test_rank_scale_is_idempotent_and_leaves_unscored_and_empty_references_alone() -> None:
    once = rank_scale([raw("a", 2.5), raw("b", 1.0)], [1.0, 2.0, 3.0])
    assert rank_scale(once, [1.0, 2.0, 3.0]) == once  # always starts from raw_score
    unscored = raw("u", None)
    assert rank_scale([unscored], [1.0, 2.0]) == [unscored] and rank_scale([sample("n")], [1.0])[0].review is None
    assert rank_scale([raw("a", 2.5)], []) == [raw("a", 2.5)]  # nothing to rank against
    assert raw_scores([*once, unscored, raw("r", 6.0, raw_score=0.5)]) == [2.5, 1.0, 0.5]
