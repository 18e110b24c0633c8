"""The OpenAI-compatible backend against a real server: llama-cpp-python's, on 127.0.0.1, serving
the embedded GGUF (SmolLM2-135M-Instruct Q4_1), started and stopped through backend.openai.serve_command.

The in-process backend runs the same model dequantised to fp32, so the two differ only in
arithmetic (llama.cpp multiplies Q4_1 weights with 8-bit quantised activations) and in who
renders the chat template for generation (the server, from the GGUF; we, from the checkpoint).
The tests check the stage outputs where they must agree:
- greedy generation through the server is deterministic (two calls, and through the cache);
- greedy completions match the in-process backend's on most prompts (measured rate printed);
- the expected-score judge (review stage, `expected` mode) gives the same scores within a
  tolerance and the same order on clear pairs;
- `n` sampled completions with a seed come back, and the server process is gone after close().
Run: pytest tests/test_openai_server_real.py -s   (prints the measured agreement)
"""

from __future__ import annotations

import importlib.util
import math
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port
from lance_llm import models
from lance_llm.backends import backend_fingerprint, make_backend
from lance_llm.backends.base import GenerateRequest, Sampling, ScoreRequest, common_prefix
from lance_llm.backends.cache import CachedBackend
from lance_llm.config import ReviewConfig, build_config
from lance_llm.records import Sample
from lance_llm.stages.review import SCORE_PREFIX, SCORE_TOKENS, expected_score, review

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("openai") is None,
                       reason="needs the server extra: pip install 'lance-llm[serve]' (make serve)"),
]

SYSTEM = "You are a helpful assistant."
QUESTIONS = ["What is the capital of France?", "Name three primary colours.", "What is 12 times 12?",
             "Give one synonym for 'happy'.", "Translate 'thank you' into Spanish.", "What colour is the sky?"]
# (instruction, a right answer, a clearly wrong one)
PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "Bananas are yellow and grow in bunches."),
    ("What is 12 times 12?", "12 times 12 is 144.", "The weather in London is often rainy."),
    ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'.", "Cats sleep for most of the day."),
    ("Name three primary colours.", "Red, blue and yellow.", "The square root of 81 is 9."),
]
# The judge's tolerance: scores from the two backends differ by the arithmetic noise above.
SCORE_TOL = 0.5


@pytest.fixture(scope="module")
def checkpoint() -> models.ResolvedModel:
    return models.resolve("smollm2-135m")


@pytest.fixture(scope="module")
def server(checkpoint: models.ResolvedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    gguf = models.builtin_gguf(models.BUILTINS["smollm2-135m"])
    port = free_port()
    command = shlex.join([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2",
                          "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2",
                          "--verbose", "False"])
    cfg = build_config({"backend": {"kind": "openai", "openai": {
        "base_url": f"http://127.0.0.1:{port}/v1", "serve_command": command, "serve_wait_s": 120, "concurrency": 2}}})
    backend = make_backend(cfg, checkpoint.path, backend_fingerprint(cfg, checkpoint.path))
    backend.fingerprint_for_test = backend_fingerprint(cfg, checkpoint.path)
    yield backend
    proc, restarts = backend.server.proc, backend.server.restarts
    if restarts:  # the backend started the server again after it died: show why (its output is kept)
        print(f"\nthe server was restarted {restarts} times; its output: {backend.server.log_path.read_text()[-4000:]}")
    backend.close()
    assert proc.poll() is not None, "the server process outlived close()"


@pytest.fixture(scope="module")
def in_process(checkpoint: models.ResolvedModel) -> Any:
    from lance_llm.backends.hf import HFBackend

    return HFBackend(checkpoint.path, checkpoint.fingerprint, dtype="float32")


def greedy(q: str, tokens: int = 32) -> GenerateRequest:
    return GenerateRequest((("system", SYSTEM), ("user", q)), Sampling(0.0, 1.0, tokens, n=1, seed=0))


def test_served_model_and_fingerprint(server: Any, checkpoint: models.ResolvedModel) -> None:
    assert server.model == "smollm2"  # found through GET /models
    # served from this run's checkpoint (serve_command): the cache key follows its weights
    assert server.fingerprint_for_test.startswith(f"served:{checkpoint.fingerprint}|openai:")


def test_greedy_generation_is_deterministic_and_cached(server: Any, in_process: Any, tmp_path: Path) -> None:
    reqs = [greedy(q) for q in QUESTIONS]
    first = server.generate(reqs)
    assert server.generate(reqs) == first
    assert all(len(r) == 1 and r[0] for r in first)
    cached = CachedBackend(lambda: server, "served:test", tmp_path / "cache.sqlite", progress=False)
    assert cached.generate(reqs) == first and cached.generate(reqs) == first
    assert cached.stats == {"hits": len(reqs), "misses": len(reqs)}
    local = in_process.generate(reqs)
    same = sum(a == b for a, b in zip(first, local, strict=True))
    prefix = [common_prefix(a[0], b[0]) / max(len(b[0]), 1) for a, b in zip(first, local, strict=True)]
    print(f"\ngreedy exact match server vs in-process: {same}/{len(reqs)}; "
          f"shared leading characters: {[round(p, 2) for p in prefix]}")
    for a, b in zip(first, local, strict=True):
        print(f"  server: {a[0][:70]!r}\n  local:  {b[0][:70]!r}")
    # Where the two greedy paths part, they part at near-ties: every token the server chose is
    # (nearly) the in-process model's own first choice given the same text so far. A server
    # rendering another template, or serving another model, fails this.
    gaps = [g for (q, text) in zip(QUESTIONS, first, strict=True) for g in _greedy_gaps(in_process, q, text[0])]
    top1 = sum(g == 0.0 for g in gaps) / len(gaps)
    print(f"server tokens that are the in-process argmax: {top1:.3f} of {len(gaps)}; "
          f"largest gap to the argmax: {max(gaps):.3f} nats")
    assert top1 >= 0.9 and max(gaps) < 2.0  # measured: 0.973 of 111 tokens, largest gap 1.32 nats


def test_judge_scores_agree_with_in_process(server: Any, in_process: Any) -> None:
    samples = [Sample(id=f"{i}{kind}", instruction=q, response=r, origin="seed")
               for i, (q, good, bad) in enumerate(PAIRS) for kind, r in (("g", good), ("b", bad))]
    cfg = ReviewConfig(mode="expected")
    remote, rstats = review(samples, server, cfg, SYSTEM, seed=0)
    local, lstats = review(samples, in_process, cfg, SYSTEM, seed=0)
    assert rstats.scored == lstats.scored == len(samples)
    diffs = [abs(a.score - b.score) for a, b in zip(remote, local, strict=True)]
    print(f"\nexpected score server vs in-process: max |diff| {max(diffs):.3f}, mean {sum(diffs) / len(diffs):.3f}")
    print("  server:", [round(s.score, 3) for s in remote])
    print("  local: ", [round(s.score, 3) for s in local])
    assert max(diffs) < SCORE_TOL
    # the order of good vs bad answer agrees wherever the in-process judge separates them clearly
    for i in range(0, len(samples), 2):
        gap = local[i].score - local[i + 1].score
        if abs(gap) > 2 * SCORE_TOL:
            assert (remote[i].score - remote[i + 1].score) * gap > 0


def test_score_logprobs_are_close_including_two_token_ten(server: Any, in_process: Any) -> None:
    req = ScoreRequest((("system", SYSTEM), ("user", "Rate this answer from 0 to 10: 'Paris'.")), SCORE_PREFIX,
                       SCORE_TOKENS)
    [remote] = server.score([req])
    [local] = in_process.score([req])
    assert server._method == "top_logprobs"  # auto's first choice; all 11 digits are in the top 20
    # the exact method agrees: P("1") * P("0" | "score: 1") from the echoed prompt log-probabilities
    base = server.render(req.messages) + SCORE_PREFIX
    assert server._echo_logprob(base, "10") == pytest.approx(remote[10], abs=1e-3)
    worst = max(abs(a - b) for a, b in zip(remote, local, strict=True))
    print(f"\nlog P(score token) server vs in-process: max |diff| {worst:.3f} nats; "
          f"'10': {remote[10]:.3f} vs {local[10]:.3f}")
    assert all(math.isfinite(x) for x in remote)
    assert worst < 0.5  # an off-by-one token alignment or another template costs several nats
    assert abs(expected_score(remote) - expected_score(local)) < SCORE_TOL


def test_sampling_returns_n_seeded_completions(server: Any) -> None:
    req = GenerateRequest((("user", "Write a short greeting."),), Sampling(0.9, 0.95, 16, n=3, seed=7))
    # llama.cpp reuses the KV cache of the previous request's prompt: a prompt prefilled fresh and
    # one read from that cache differ in the last bits, enough to change a sampled token. Warm the
    # cache with this prompt first; from then on the seed makes sampling repeatable. (Inside lance
    # a repeat is answered by the SQLite cache anyway.)
    server.generate([req])
    [samples] = server.generate([req])
    assert len(samples) == 3 and len(set(samples)) > 1
    assert server.generate([req]) == [samples]


def _greedy_gaps(hf: Any, question: str, completion: str) -> list[float]:
    """Per token of `completion`: log P(in-process argmax) - log P(that token), teacher-forced."""
    import torch

    prompt = hf.render((("system", SYSTEM), ("user", question)))
    ids, start = hf._ids(prompt + completion), len(hf._ids(prompt))
    with torch.inference_mode():
        logp = torch.log_softmax(hf.model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    return [float(logp[p - 1].max() - logp[p - 1, ids[p]]) for p in range(start, len(ids))]




def test_likelihood_judge_over_echo_agrees_with_in_process(server: Any, in_process: Any) -> None:
    # The main job's judge through a server (score_method auto): whole responses go through echo
    # (the top-20 walk would cost a call per token), per-token means by the local tokenizer's
    # count, and the end-of-turn marker sent as text, which llama.cpp must read as the special
    # token (it echoes as empty text); read as plain text ("<", "|", "im", ...) its
    # log-probability would be tens of nats off. Measured: parts within 0.29 nats on all 4 pairs.
    # two pairs: llama-cpp-python spends ~2 s per echoed prompt building its log-probabilities
    samples = [Sample(id=f"{i}{kind}", instruction=q, response=r, origin="seed")
               for i, (q, good, bad) in enumerate(PAIRS[:2]) for kind, r in (("g", good), ("b", bad))]
    cfg = ReviewConfig(mode="likelihood")
    remote, rstats = review(samples, server, cfg, SYSTEM, seed=0)
    local, _ = review(samples, in_process, cfg, SYSTEM, seed=0)
    assert rstats.scored == len(samples)
    parts = [abs(a - b) for r, lo in zip(remote, local, strict=True)
             for a, b in zip(r.review.samples, lo.review.samples, strict=True)]
    print(f"\nlikelihood parts server vs in-process: max |diff| {max(parts):.3f} nats")
    print("  server:", [r.review.samples for r in remote[:2]])
    print("  local: ", [r.review.samples for r in local[:2]])
    assert max(parts) < 0.5
    assert all(remote[i].score > remote[i + 1].score for i in range(0, len(samples), 2))  # gold first
