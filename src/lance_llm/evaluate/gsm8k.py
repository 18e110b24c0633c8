"""GSM8K for `lance eval`: lm-eval's zero-shot gsm8k task, its generation run by our batched backend.

    from lance_llm.evaluate import gsm8k
    docs = gsm8k.load(200, seed=0)                # the seeded subset lm-eval would read
    items = gsm8k.run(checkpoint, fingerprint, docs)  # [{"idx": 12, "correct": 1.0, "response": ...}]

Why not lm-eval's own `hf` model: it generates a few rows at a time with transformers' `generate`
(5.5 s per item on Qwen 0.5B here), while `HFBackend` batches 32 rows and drops finished ones. What
stays lm-eval's: the prompt ("Question: ...\nAnswer:", raw, no chat template), the stop strings,
greedy decoding with at most 256 new tokens, the "flexible-extract" filter (the last number in the
reply) and `exact_match` with the task's ignore rules, all read from harness.py's task definition.
tests/test_eval_real.py checks, in float32, that replies and verdicts equal lm-eval's own run;
tests/test_eval_gsm8k.py checks the scoring rules on made-up replies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import harness
from .data import subset_file


def load(limit: int | None, seed: int, cache_dir: str | None = None) -> list[dict[str, Any]]:
    """The seeded GSM8K subset (rows with question, answer and `_idx`), as harness.run reads it."""
    path, _ = subset_file("gsm8k", limit, seed, cache_dir)
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def correct(response: str, answer: str) -> float:
    """1.0 when the reply's last number equals the reference's, as lm-eval scores gsm8k."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    pred = RegexFilter(regex_pattern=harness.GSM8K_EXTRACT, group_select=-1).apply([[response]], [{}])[0][0]
    res = exact_match_hf_evaluate(predictions=[pred], references=[answer], regexes_to_ignore=list(harness.GSM8K_IGNORE),
                                  ignore_case=True, ignore_punctuation=False)
    return float(res["exact_match"])


def run(model_path: Path, fingerprint: str, docs: list[dict[str, Any]], batch_size: int = 32, dtype: str = "auto",
        progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Greedy replies to every doc and their verdicts, in the order of `docs`."""
    from ..backends.base import GenerateRequest, Sampling
    from . import greedy

    sampling = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=harness.GSM8K_MAX_TOKENS, n=1, seed=0)
    reqs = [GenerateRequest(messages=(), prefix=harness.gsm8k_prompt(d["question"]), sampling=sampling,
                            stop=harness.GSM8K_UNTIL) for d in docs]
    replies = greedy.replies(model_path, fingerprint, reqs, batch_size, dtype, progress)
    return [{"idx": d["_idx"], "correct": correct(r, d["answer"]), "response": r}
            for d, r in zip(docs, replies, strict=True)]
