"""The indexed near-duplicate search in stages.clean gives exactly the all-pairs ROUGE-L decisions.

Fast, no model: random texts over a small vocabulary (so overlaps are frequent), with near copies,
short texts contained in long ones, repeated words and texts without ROUGE tokens.
"""

from __future__ import annotations

import random

import pytest

from lance_llm.config import CleanConfig
from lance_llm.records import Sample
from lance_llm.stages import clean as cl

VOCAB = ["the", "a", "cat", "dog", "sat", "on", "mat", "red", "blue", "green", "runs", "fast", "slow",
         "big", "small", "tree", "house", "river"]


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        r = rng.random()
        if out and r < 0.3:  # a near copy of an earlier text
            words = rng.choice(out).split() or ["cat"]
            words[rng.randrange(len(words))] = rng.choice(VOCAB)
        elif out and r < 0.4:  # a piece of an earlier text: contained in it
            words = rng.choice(out).split()
            words = words[: max(1, len(words) // 2)]
        elif r < 0.43:
            words = ["—", "!!"]  # no ROUGE token at all
        else:
            words = [rng.choice(VOCAB) for _ in range(rng.randint(1, 14))]
        out.append(" ".join(words))
    return out


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 0.9, 1.0])
def test_similar_equals_all_pairs(threshold: float, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cl.NearDuplicates, "LINEAR_MAX", 0)  # always the index
    texts = _texts(300, seed=int(threshold * 10))
    index = cl.NearDuplicates(threshold, cl.element_ranks(texts[::2]))  # ranks for some texts only
    kept: list[str] = []
    hits = 0
    for text in texts:
        expected = any(cl.rouge_similar(text, k, threshold) for k in kept)
        assert index.similar(text) == expected, (text, threshold)
        hits += expected
        if not expected:
            index.add(text)
            kept.append(text)
    assert 0 < hits < len(texts) or threshold in (0.0, 1.0)  # the set exercises both outcomes


def _decisions(result: cl.CleanResult) -> list[tuple[str, str]]:
    return [(c.id, "kept") for c in result.kept] + [(d["id"], d["reason"]) for d in result.dropped]


def test_clean_decisions_equal_all_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = _texts(600, seed=7)
    rng = random.Random(1)
    seeds = {p: Sample(id=p, instruction=" ".join(rng.sample(VOCAB, 8)), response=" ".join(rng.sample(VOCAB, 12)))
             for p in ("p0", "p1", "p2")}
    cands = []
    for i, text in enumerate(texts):
        parent = f"p{i % 3}"
        cands.append(Sample(id=f"c{i}", instruction=text, origin="new" if i % 5 else "degraded",
                            response=texts[(i * 7) % len(texts)] + " one two three four five six seven",
                            parent_id=parent, iteration=1))
        if i % 5 == 0:  # degraded candidates carry the seed's instruction
            cands[-1] = Sample(id=f"c{i}", instruction=seeds[parent].instruction, origin="degraded",
                               response=cands[-1].response, parent_id=parent, iteration=1)
    cfg = CleanConfig(instruction_min_words=1, response_min_words=1)
    fast = cl.clean(seeds, cands, cfg)
    monkeypatch.setattr(cl.NearDuplicates, "LINEAR_MAX", 10**9)
    monkeypatch.setattr(cl, "similar_to", cl.rouge_similar)
    reference = cl.clean(seeds, cands, cfg)
    assert _decisions(fast) == _decisions(reference)
    assert fast.counts["instruction_near_duplicate"] > 50  # the index was exercised on real hits
    assert fast.counts["response_near_duplicate"] + fast.counts["response_similar_to_seed"] > 0


def test_min_overlap_never_excludes_a_similar_pair() -> None:
    # LCS/len just above the threshold must still meet the bound, float rounding included
    for length in range(1, 60):
        for t in (0.0, 0.1, 0.3, 0.5, 0.7, 0.75, 0.9):
            lcs = next(c for c in range(length + 1) if c / length > t)  # the smallest similar LCS
            assert cl._min_overlap(length, t) <= lcs
