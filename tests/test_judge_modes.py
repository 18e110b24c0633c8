"""Judge modes with fakes (no model): the `criteria` mode asks the ten rubric criteria one by one
and sums P(Yes); a criterion with no probability on Yes/No leaves the pair unscored (a parse
failure, never 0); the question-only criteria are the same requests for every response to one
instruction. The `likelihood` mode's three components, its completeness hinge and its failures.
And the HF backend's prefix plan: which tokens are shared, which are run per row.
"""

from __future__ import annotations

import math

from conftest import ScriptedBackend
from lance_llm.backends.base import ScoreRequest
from lance_llm.backends.hf import _prefix_plan
from lance_llm.config import ReviewConfig
from lance_llm.prompts import load
from lance_llm.records import Sample
from lance_llm.stages.review import (
    CRITERION_ANSWERS,
    criteria,
    criteria_prompts,
    likelihood_score,
    review,
    yes_probability,
)


def yes_no(r: ScoreRequest) -> list[float]:
    """P(Yes) = 0.9 for prompts mentioning `good`, 0.2 otherwise; no probability at all for
    prompts mentioning `broken` (the criteria mode's requests only)."""
    assert r.continuations == CRITERION_ANSWERS and r.prefix == ""
    text = r.messages[-1][1]
    if "broken" in text:
        return [-math.inf, -math.inf]
    p = 0.9 if "good" in text else 0.2
    return [math.log(p), math.log(1 - p)]


def test_criteria_prompts() -> None:
    qs = criteria()
    assert len(qs) == 10 and all(q.endswith("?") for q in qs)
    prompts = criteria_prompts("What is 2+2?", "It is 4.")
    assert len(prompts) == 10
    assert all("It is 4." not in p and "What is 2+2?" in p for p in prompts[:5])  # question criteria
    assert all("It is 4." in p and p.endswith(q) for p, q in zip(prompts[5:], qs[5:], strict=True))


def test_yes_probability() -> None:
    assert math.isclose(yes_probability([math.log(0.3), math.log(0.1)]), 0.75)
    assert math.isnan(yes_probability([-math.inf, -math.inf]))
    assert yes_probability([-math.inf, -1.0]) == 0.0


def test_criteria_mode_scores_and_failures() -> None:
    samples = [Sample("a", "Q?", "a good answer"), Sample("b", "Q?", "a poor answer"),
               Sample("c", "Q?", "broken")]
    backend = ScriptedBackend(score=yes_no)  # criteria mode must not generate
    out, stats = review(samples, backend, ReviewConfig(mode="criteria"), "sys", seed=0)
    a, b, c = (s.review for s in out)
    # five question criteria at 0.2 each, five response criteria at 0.9 (good) or 0.2 (poor)
    assert math.isclose(a.score, 5 * 0.2 + 5 * 0.9) and math.isclose(b.score, 10 * 0.2)
    assert a.mode == "criteria" and len(a.samples) == 10
    assert c.score is None and c.parse_failures == 1  # unscored, not 0
    assert stats.scored == 2 and stats.unscored == 1
    assert len(backend.scored_requests) == 30
    # the question-only requests are identical across the three responses: the backend's
    # dedup (and the durable cache) scores them once
    assert len(set(backend.scored_requests)) == 5 + 3 * 5


def test_prefix_plan() -> None:
    head = list(range(100, 140))  # 40 tokens every sequence shares
    item1, item2 = list(range(200, 240)), list(range(300, 340))
    seqs = [head + item1 + [1, 2], head + item1 + [3, 4], head + item2 + [5], [*head, 7, 8, 9]]
    earliest = [len(s) - 1 for s in seqs]
    shared, clusters = _prefix_plan(seqs, earliest, min_len=32)
    assert shared == 40
    by_member = {tuple(m): plen for plen, m in clusters}
    assert by_member[(0, 1)] == 80  # the two questions about item1 share item1 too
    assert by_member[(2,)] == 40 and by_member[(3,)] == 40
    # no shared prefix worth caching: plain batches
    assert _prefix_plan([[1, 2, 3], [1, 2, 4]], [2, 2], 32) == (0, [])
    # a prefix never covers a position whose logits are needed
    shared, _ = _prefix_plan([[*head, 1], [*head, 2]], [35, 40], 32)
    assert shared == 35


def test_combined_mode_is_the_mean_of_expected_and_criteria() -> None:
    def both(r: ScoreRequest) -> list[float]:
        if r.prefix == "":
            return yes_no(r)
        # expected mode: all probability on "6" unless the response is broken
        return [-math.inf] * 11 if "broken" in r.messages[-1][1] else [0.0 if i == 6 else -math.inf for i in range(11)]

    samples = [Sample("a", "Q?", "a good answer"), Sample("c", "Q?", "broken")]
    out, stats = review(samples, ScriptedBackend(score=both), ReviewConfig(mode="combined"), "sys", seed=0)
    a, c = (s.review for s in out)
    assert a.mode == "combined" and math.isclose(a.score, (6 + 5 * 0.2 + 5 * 0.9) / 2)
    assert a.samples == [6.0, 5.5]
    assert c.score is None and c.parse_failures == 1 and stats.unscored == 1


# fluency after the instruction, after the neutral one, log P(end); `broken` responses get -inf
# after the instruction (a server whose top-k ran out)
LIKELIHOOD = {"good": (-1.0, -2.5, -1.0), "echo": (-0.5, -3.0, -20.0), "offtopic": (-2.0, -1.9, -0.5),
              "broken": (-math.inf, -2.0, -1.0)}


def likelihood_parts(r: ScoreRequest) -> list[float]:
    """Fixed answers for the likelihood judge's three requests."""
    if r.end_of_turn:
        assert r.continuations == ("",) and not r.per_token
        return [LIKELIHOOD[r.prefix][2]]
    assert r.per_token and r.prefix == "" and len(r.continuations) == 1
    asked = r.messages[-1][1] != load("neutral_instruction")
    return [LIKELIHOOD[r.continuations[0]][0 if asked else 1]]


def test_likelihood_mode_components_hinge_and_failures() -> None:
    samples = [Sample(k, "Q?", k) for k in ("good", "echo", "offtopic", "broken")] + [Sample("empty", "Q?", " ")]
    backend = ScriptedBackend(score=likelihood_parts)  # likelihood mode must not generate
    cfg = ReviewConfig(mode="likelihood")
    out, stats = review(samples, backend, cfg, "sys", seed=0)
    good, echo, off, broken, empty = (s.review for s in out)
    # samples: fluency, relevance (fluency minus the neutral prompt's), log P(end)
    assert good.mode == "likelihood" and good.samples == [-1.0, 1.5, -1.0]
    lk = cfg.likelihood
    raw = -1.0 + 1.5 + 0.0  # log P(end) = -1 is above the floor: no completeness penalty
    assert math.isclose(good.score, round(10 / (1 + math.exp(-(raw + lk.center))), 4))
    assert math.isclose(good.score, round(likelihood_score([-1.0, 1.5, -1.0], lk), 4))
    # a fluent echo of the question that never ends: relevance 2.5, but log P(end) = -20 costs
    # 0.5 x (20 - 10) = 5 nats, so the complete answer wins
    assert echo.samples == [-0.5, 2.5, -20.0] and echo.score < good.score
    assert off.score < good.score  # relevance -0.1: the instruction does not explain it
    assert broken.score is None and broken.parse_failures == 1  # not a 0
    assert empty.score is None and empty.parse_failures == 1 and stats.unscored == 2  # nothing to read
    assert all(0 <= r.score <= 10 for r in (good, echo, off))
    # the judge reads the answer under the system prompt the generator answered with
    assert all(r.messages[0] == ("system", "sys") for r in backend.scored_requests)
    assert len(backend.scored_requests) == 12


def test_likelihood_score_is_monotone_and_bounded() -> None:
    lk = ReviewConfig().likelihood
    base = likelihood_score([-2.0, 0.5, -3.0], lk)
    assert likelihood_score([-1.5, 0.5, -3.0], lk) > base  # more fluent
    assert likelihood_score([-2.0, 0.9, -3.0], lk) > base  # more relevant
    assert likelihood_score([-2.0, 0.5, -9.0], lk) == base  # still may end here: no penalty
    assert likelihood_score([-2.0, 0.5, -15.0], lk) < base  # cut off
    assert likelihood_score([-2000.0, 0.0, -1.0], lk) == 0.0 and likelihood_score([0.0, 50.0, 0.0], lk) <= 10


def test_score_request_keys_of_plain_requests_are_unchanged() -> None:
    plain = ScoreRequest((("user", "Q"),), "score: ", ("1", "2"))
    assert plain.key() == {"kind": "score", "messages": [["user", "Q"]], "prefix": "score: ",
                           "continuations": ["1", "2"]}  # cached calls of older runs still hit
    assert ScoreRequest((("user", "Q"),), "", ("a",), per_token=True).key()["per_token"] is True
    assert ScoreRequest((("user", "Q"),), "a", ("",), end_of_turn=True).key()["end_of_turn"] is True
