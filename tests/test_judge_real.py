"""Judge on the real embedded model (slow, ~20 s): the HF backend's shared-prefix KV cache gives
the same log-probabilities as plain batches, and the main job's review mode (configs/default.yaml)
scores every pair, the same alone or batched with others."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lance_llm.backends import hf
from lance_llm.backends.base import ScoreRequest
from lance_llm.config import load_config
from lance_llm.judge.pairs import JudgePair
from lance_llm.judge.reliability import judge_reliability
from lance_llm.prompts import load
from lance_llm.stages.review import CRITERION_ANSWERS, SCORE_PREFIX, SCORE_TOKENS, criteria_prompts, review_prompt

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backend():
    from lance_llm import models

    m = models.resolve("smollm2-135m")
    b = hf.HFBackend(m.path, m.fingerprint, batch_size=4, dtype="float32")
    yield b
    b.close()


def test_prefix_cache_matches_plain_batches(backend, monkeypatch) -> None:
    system = load("system")
    reqs = [ScoreRequest((("system", system), ("user", review_prompt(q, a))), SCORE_PREFIX, SCORE_TOKENS)
            for q, a in [("Name a primary colour.", "Red."), ("What is 2 + 2?", "2 + 2 = 4."),
                         ("Say hello in French.", "Bonjour! It means hello.")]]
    reqs += [ScoreRequest((("system", system), ("user", u)), "", CRITERION_ANSWERS)
             for u in criteria_prompts("What is 2 + 2?", "2 + 2 = 4.")[3:7]]
    cached = backend.score(reqs)
    monkeypatch.setattr(hf, "SHARED_MIN", 10**9)  # no shared prefix: every row runs whole
    plain = backend.score(reqs)
    for a, b in zip(cached, plain, strict=True):
        assert all(math.isclose(x, y, abs_tol=2e-3) for x, y in zip(a, b, strict=True)), (a, b)


def test_default_mode_scores_every_pair_the_same_alone_or_batched(backend) -> None:
    # SmolLM2's expected-score judge is at chance on off-topic answers (BENCHMARKS.md, "Judge
    # (issue 7)": 0.43 on test), so "gold beats off-topic" is not asserted for it; what must hold
    # is that the main job's judge scores every pair, on the 0-10 scale, and that a pair's score
    # does not depend on which other pairs share its batch and prefix cache.
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "default.yaml")  # the main job's judge
    items = [("What is the capital of France?", "The capital of France is Paris."),
             ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'."),
             ("How many legs does a spider have?", "A spider has eight legs.")]
    off = "Tomatoes grow best in full sun with regular watering."
    pairs = [JudgePair(f"t{i}/irrelevant", f"t{i}", "test", "irrelevant", q, a, off)
             for i, (q, a) in enumerate(items)]
    res = judge_reliability(backend, cfg.review, pairs, load("system"))
    assert res["parse_failures"] == 0 and res["pairs"] == 3
    alone = judge_reliability(backend, cfg.review, pairs[:1], load("system"))
    batched = res["scores"][pairs[0].id]
    assert all(0 <= x <= 10 for sc in res["scores"].values() for x in sc)
    assert all(math.isclose(a, b, abs_tol=0.02) for a, b in zip(alone["scores"][pairs[0].id], batched, strict=True))
