"""Judge on the real embedded model (slow, ~20 s): the HF backend's shared-prefix KV cache gives
the same log-probabilities as plain batches; per-token and end-of-turn requests equal what plain
requests give; the main job's review mode (configs/default.yaml) ranks gold answers above
corrupted ones and scores every pair the same alone or batched with others."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lance_llm.backends import hf
from lance_llm.backends.base import ScoreRequest, score_targets
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


def test_end_of_turn_and_per_token_requests_match_plain_ones(backend) -> None:
    msgs = (("user", "Name a primary colour."),)
    r = "Red is a primary colour."
    assert backend.end_of_turn == "<|im_end|>"  # read off SmolLM2's chat template
    whole, with_end = backend.score([ScoreRequest(msgs, "", (r, r + "<|im_end|>"))])[0]
    [mean] = backend.score([ScoreRequest(msgs, "", (r,), per_token=True)])[0]
    [end] = backend.score([ScoreRequest(msgs, r, ("",), end_of_turn=True)])[0]
    [(full, start)] = score_targets(ScoreRequest(msgs, "", (r,)), backend.render(msgs), backend._ids, "")
    assert len(full) - start > 3 and math.isclose(mean * (len(full) - start), whole, abs_tol=1e-3)
    assert math.isclose(end, with_end - whole, abs_tol=1e-3) and -15 < end < 0


ITEMS = [("What is the capital of France?", "The capital of France is Paris, which is also its largest city."),
         ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'."),
         ("How many legs does a spider have?", "A spider has eight legs, while an insect has six.")]


def test_default_mode_ranks_gold_first_the_same_alone_or_batched(backend) -> None:
    # The main job's judge (configs/default.yaml: likelihood) on the real 135M model: each gold
    # answer beats an off-topic passage, another question's answer and a cut-off copy of itself
    # (the three failure kinds the rubric judge fell for); every pair scored on the 0-10 scale,
    # and a pair's score does not depend on which other pairs share its batch and prefix cache.
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "default.yaml")
    assert cfg.review.mode == "likelihood"
    off = "Tomatoes grow best in full sun with regular watering."
    pairs = []
    for i, (q, a) in enumerate(ITEMS):
        pairs.append(JudgePair(f"t{i}/irrelevant", f"t{i}", "test", "irrelevant", q, a, off))
        pairs.append(JudgePair(f"t{i}/other_task", f"t{i}", "test", "other_task", q, a, ITEMS[i - 1][1]))
        pairs.append(JudgePair(f"t{i}/truncated", f"t{i}", "test", "truncated", q, a, " ".join(a.split()[:4])))
    res = judge_reliability(backend, cfg.review, pairs, load("system"))
    assert res["parse_failures"] == 0 and res["pairs"] == 9
    assert res["accuracy"] == 1.0, res["scores"]
    alone = judge_reliability(backend, cfg.review, pairs[:1], load("system"))
    batched = res["scores"][pairs[0].id]
    assert all(0 <= x <= 10 for sc in res["scores"].values() for x in sc)
    assert all(math.isclose(a, b, abs_tol=0.02) for a, b in zip(alone["scores"][pairs[0].id], batched, strict=True))


def test_self_certainty_is_kl_from_uniform_computed_directly(backend) -> None:
    """ScoreRequest(certainty=True): the mean over the response's positions of
    logsumexp(logits) - mean(logits) - log V, as a plain forward pass over the whole text gives it."""
    import torch

    req = ScoreRequest((("system", "Be brief."), ("user", "Name a colour.")), "", ("Blue is a colour.",),
                       certainty=True)
    (got,), = backend.score([req])
    (full, start), = score_targets(req, backend.render(req.messages), backend._ids, "")
    with torch.inference_mode():
        logits = backend.model(input_ids=torch.tensor([full])).logits[0].float()
    kl = torch.logsumexp(logits, -1) - logits.mean(-1) - math.log(logits.shape[-1])
    want = float(kl[start - 1 : len(full) - 1].mean())
    assert math.isfinite(got) and got > 0 and abs(got - want) < 1e-3
    # the log-probability of the same text is another number, and both come from one request batch
    plain = ScoreRequest(req.messages, "", req.continuations, per_token=True)
    both = backend.score([req, plain])
    assert abs(both[0][0] - got) < 1e-3 and both[1][0] < 0
