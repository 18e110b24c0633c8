"""HFBackend.generate (own decode loop: shared prefill, shrinking batch, per-row generators) on the
real embedded model, in fp32: greedy output (with lance's decode attention) equals transformers'
`generate` (with its sdpa attention), a seeded sample does not depend on which other requests
share its batch, and sampling keeps exactly the tokens transformers' top-p rule keeps.
Slow (loads the model once, ~20 s).
"""

from __future__ import annotations

import pytest
import torch

from lance_llm import models
from lance_llm.backends.base import GenerateRequest, Sampling

pytestmark = pytest.mark.slow

QUESTIONS = ["What is 2 + 2?", "Name three colours of the rainbow, then explain why the sky is blue in detail.",
             "Say hello."]


@pytest.fixture(scope="module")
def backend():
    from lance_llm.backends.hf import HFBackend

    b = HFBackend(models.resolve("smollm2-135m").path, "test", batch_size=8, dtype="float32")
    yield b
    b.close()


def _req(q: str, n: int = 1, seed: int = 0, temperature: float = 0.7, max_new: int = 24) -> GenerateRequest:
    return GenerateRequest((("user", q),), Sampling(temperature, 0.9, max_new, n, seed))


def test_greedy_equals_transformers_generate(backend) -> None:
    ours = backend.generate([_req(q, temperature=0.0) for q in QUESTIONS])
    prompts = [backend._ids(backend.render((("user", q),))) for q in QUESTIONS]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # the backend's batch order
    ids, mask = backend._left_pad([prompts[i] for i in order])
    assert backend.model.config._attn_implementation == "lance_decode"
    backend.model.set_attn_implementation("sdpa")  # the reference: transformers' own attention
    with torch.inference_mode():
        gen = backend.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=24,
                                     pad_token_id=backend.tok.pad_token_id, temperature=None, top_p=None, top_k=None)
    backend.model.set_attn_implementation("lance_decode")
    theirs = backend.tok.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
    expected = {i: [theirs[k].strip()] for k, i in enumerate(order)}
    assert ours == [expected[i] for i in range(len(QUESTIONS))]
    assert any(len(o[0].split()) > 3 for o in ours)  # real text, not empty strings


def test_seeded_samples_do_not_depend_on_the_batch(backend) -> None:
    alone = backend.generate([_req(QUESTIONS[1], n=3, seed=11)])[0]
    mixed = backend.generate([_req(QUESTIONS[0], n=2, seed=5), _req(QUESTIONS[1], n=3, seed=11),
                              _req(QUESTIONS[2], n=1, seed=3)])
    assert mixed[1] == alone
    assert [len(m) for m in mixed] == [2, 3, 1]
    assert len(set(alone)) > 1  # the three samples of one request differ
    assert backend.generate([_req(QUESTIONS[1], n=3, seed=12)])[0] != alone  # the seed matters


def test_sampling_follows_the_top_p_rule() -> None:
    """sample_rows draws from the tokens TopPLogitsWarper keeps, in their renormalised proportions,
    whether the kept set fits in the sorted top k or reaches past it (the whole-row fallback)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    from lance_llm.backends.decode import sample_rows

    logits = torch.tensor([[4.0, 3.5, 3.0, 1.0, 0.5] + [-2.0] * 60])
    scores = TopPLogitsWarper(0.9)(None, TemperatureLogitsWarper(0.7)(None, logits.clone()))
    expected = torch.softmax(scores, dim=-1)[0]
    for top_k in (2, 50):  # 2: the kept set (3 tokens) reaches past the top k
        gens = [torch.Generator().manual_seed(7)]
        counts = torch.zeros(logits.shape[1])
        for _ in range(6000):
            counts[sample_rows(logits, 0.7, 0.9, gens, top_k=top_k)[0]] += 1
        freq = counts / counts.sum()
        assert set(freq.nonzero().flatten().tolist()) == set(expected.nonzero().flatten().tolist())
        assert torch.allclose(freq, expected, atol=0.02)


def test_compiled_decode_step_gives_the_eager_tokens(tmp_path) -> None:
    """backend.hf.compile: the decode step as a torch.compile graph (dynamic shapes) samples the same
    tokens as eager, also after rows leave the batch (a mid-reply token made an end token)."""
    import sys
    from pathlib import Path

    from lance_llm.backends.hf import HFBackend

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from bench_backends import random_checkpoint

    path = random_checkpoint(tmp_path / "tiny", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2)
    reqs = [_req(q, n=2, seed=i, temperature=0.0 if i == 0 else 0.7, max_new=12) for i, q in enumerate(QUESTIONS)]
    eager = HFBackend(path, "tiny", dtype="float32")
    compiled = HFBackend(path, "tiny", dtype="float32", compile=True)
    stops = set(range(0, 256, 4))  # a quarter of the byte tokens end a reply: rows leave the batch at random steps
    eager.eos_ids |= stops
    compiled.eos_ids |= stops
    want, got = eager.generate(reqs), compiled.generate(reqs)
    assert got == want
    assert eager.tokens["generated"] < 12 * 6 and len({len(x) for r in want for x in r}) > 2  # rows ended early


def test_stop_strings_end_a_row_early_and_cut_its_text(backend) -> None:
    """A row stops once its text holds a stop string (fewer tokens generated); the text is cut before
    it; a request without stops in the same batch gives what it gives alone."""
    greedy = Sampling(0.0, 1.0, 48, n=1)
    plain = [GenerateRequest((("user", q),), greedy) for q in QUESTIONS[1:]]
    [full, other] = [t[0] for t in backend.generate(plain)]
    words = full.split()
    stop = " " + words[4]  # the fifth word, with the space before it: inside the text, not at its start
    assert stop in full
    before = backend.tokens["generated"]
    [[cut], [other_again]] = backend.generate([GenerateRequest((("user", QUESTIONS[1]),), greedy, stop=(stop, "@@")),
                                              plain[1]])
    assert cut == full[: full.index(stop)].strip() and other_again == other
    assert backend.tokens["generated"] - before < len(backend.tok(full)["input_ids"]) + len(
        backend.tok(other)["input_ids"]) + 2  # the stopped row left the batch early
