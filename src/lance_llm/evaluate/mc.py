"""lm-eval's multiple-choice scoring through our HF scoring path: an lm-eval model (`LanceLM`) whose
log-likelihoods come from `HFBackend.logprobs_at`, the likelihood judge's path.

    lm = LanceLM(checkpoint, fingerprint, batch_size=8, dtype="auto", progress=print)  # (done, total) contexts
    lm_eval.simple_evaluate(model=lm, tasks=[...])   # what harness.run(engine="lance") does

Everything that defines a benchmark stays lm-eval's: prompts, choices, the context/continuation
split (`TemplateLM._encode_pair`: trailing spaces move to the continuation, the pair is tokenised
whole), truncation, acc and acc_norm. Only the forward pass differs from lm-eval's `hf` model, and
it is cheaper in three ways:
- the choices of one question share its context, which runs once when it is long enough
  (`logprobs_at`'s shared prefix); MMLU's four one-letter choices need one forward in all;
- the LM head runs only on the continuation's positions, not on every position of the context;
- only the continuation tokens' log-probabilities are kept, never whole-vocabulary rows.
Numbers match lm-eval's `hf` model within float rounding (tests/test_eval_real.py checks per item).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import resolve_max_length

from ..backends.hf import ARGMAX, HFBackend, covering_rows

#: contexts (questions; winogrande: two per question) per progress report
PROGRESS_EVERY = 50


class LanceLM(TemplateLM):
    def __init__(self, path: Path, fingerprint: str, batch_size: int = 8, dtype: str = "auto",
                 progress: Callable[[int, int], None] | None = None) -> None:
        super().__init__()
        self.backend = HFBackend(path, fingerprint, batch_size=batch_size, dtype=dtype)
        self.tokenizer = self.backend.tok
        self.progress = progress
        self.max_length = resolve_max_length(self.backend.model.config, self.tokenizer)  # as lm-eval's hf model

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:  # as lm-eval's hf model: BOS where the tokenizer has one
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        if add_special_tokens is None and string.startswith(self.tokenizer.decode(self.prefix_token_id)):
            kw = {"add_special_tokens": False}  # lm-eval's rule: no second BOS
        return self.tokenizer.encode(string, **kw)

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probabilities, whether greedy decoding gives it) per
        request; the requests of one context (one question's choices) are scored together."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (_, ctx, _cont) in enumerate(requests):
            groups.setdefault(tuple(ctx), []).append(i)
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for done, members in enumerate(groups.values(), 1):
            # lm-eval's window: the last max_length + 1 tokens, the final one only predicted
            fulls = [(requests[i][1] + requests[i][2])[-(self.max_length + 1):] for i in members]
            spans = [range(len(f) - len(requests[i][2]), len(f)) for i, f in zip(members, fulls, strict=True)]
            kept, rows = covering_rows([f[:-1] for f in fulls])
            needs: list[dict[int, set[int]]] = [{} for _ in kept]
            for full, r, span in zip(fulls, rows, spans, strict=True):
                for p in span:
                    needs[r].setdefault(p - 1, set()).update((full[p], ARGMAX))
            logps = self.backend.logprobs_at(kept, needs)
            for i, full, r, span in zip(members, fulls, rows, spans, strict=True):
                ll = sum(logps[r][p - 1][full[p]] for p in span)
                out[i] = (ll, all(int(logps[r][p - 1][ARGMAX]) == full[p] for p in span))
            if self.progress and (done % PROGRESS_EVERY == 0 or done == len(groups)):
                self.progress(done, len(groups))
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError("LanceLM scores multiple-choice tasks only (no perplexity tasks)")

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        raise NotImplementedError("LanceLM scores multiple-choice tasks only; GSM8K: evaluate/gsm8k.py")

    def close(self) -> None:
        self.backend.close()
