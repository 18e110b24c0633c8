"""vLLM offline-engine backend (optional: pip install 'lance-llm[vllm]'; needs CUDA).

    backend = VLLMBackend("/path/to/checkpoint", fingerprint="...", cfg=VLLMBackendConfig())
    backend.generate([GenerateRequest(messages=(("user", "Hi"),), sampling=Sampling(n=4))])

- vLLM is imported inside the class, so lance-llm imports and its CPU tests run without it.
- Prompts are rendered with the checkpoint's own chat template and handed over as token ids, so
  generation and scoring see exactly the tokens the in-process backend sees.
- generate: one vLLM request per GenerateRequest with `n` samples (vLLM shares the prompt's KV
  cache between them) and the request's seed; greedy when temperature is 0.
- score: prompt + assistant prefix + continuation as one prompt with `prompt_logprobs=0`, which
  returns the log-probability of every prompt token; the continuation's is the sum from the first
  token that differs from the tokenised prefix (as in backends/hf.py). Prefix caching (on by
  default) makes the 11 judge prompts of one pair cost about one.
- close(): frees the GPU before training. With `sleep_mode` the engine first sleeps at level 2
  (weights and KV cache released through vLLM's own allocator, which a plain teardown in-process
  does not always manage), then is torn down; a failing sleep falls back to teardown alone. The
  next iteration builds a new engine on the newly trained checkpoint. sleep()/wake() keep one
  engine for callers that come back to the same weights (level 1: weights parked in CPU memory).
- Tensor parallel (`tensor_parallel_size`) splits each model over GPUs; data parallel
  (`data_parallel_size`) runs that many engine replicas and spreads the requests over them.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import Backend, GenerateRequest, Message, ScoreRequest

log = logging.getLogger(__name__)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class VLLMBackend(Backend):
    def __init__(self, path: str | Path, fingerprint: str, cfg: Any, dtype: str = "auto",
                 trust_remote_code: bool = False) -> None:
        try:
            import vllm
        except ImportError as e:
            raise RuntimeError("backend.kind=vllm needs vLLM and CUDA: pip install 'lance-llm[vllm]'") from e
        self.vllm = vllm
        self.cfg = cfg
        self.fingerprint = fingerprint
        self.tokens = {"prompt": 0, "generated": 0}
        kwargs: dict[str, Any] = dict(
            model=str(path), tokenizer=str(path), dtype=dtype, trust_remote_code=trust_remote_code,
            tensor_parallel_size=cfg.tensor_parallel_size, gpu_memory_utilization=cfg.gpu_memory_utilization,
            enable_prefix_caching=cfg.enable_prefix_caching, enable_sleep_mode=cfg.sleep_mode,
        )
        if cfg.data_parallel_size > 1:
            kwargs["data_parallel_size"] = cfg.data_parallel_size
        if cfg.max_model_len:
            kwargs["max_model_len"] = cfg.max_model_len
        self.llm: Any = vllm.LLM(**kwargs)
        self.tok = self.llm.get_tokenizer()
        log.info("vLLM engine on %s (tp=%d, dp=%d)", path, cfg.tensor_parallel_size, cfg.data_parallel_size)

    def render(self, messages: Sequence[Message]) -> str:
        chat = [{"role": r, "content": c} for r, c in messages]
        return self.tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def _prompt(self, ids: list[int]) -> dict[str, Any]:
        return {"prompt_token_ids": ids}  # vLLM's TokensPrompt is a TypedDict: a plain dict is one

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[str]]:
        if not requests:
            return []
        prompts, params = [], []
        for req in requests:
            s = req.sampling
            greedy = s.temperature <= 0
            prompts.append(self._prompt(self._ids(self.render(req.messages))))
            params.append(self.vllm.SamplingParams(
                n=s.n, temperature=0.0 if greedy else s.temperature, top_p=1.0 if greedy else s.top_p,
                max_tokens=s.max_new_tokens, seed=s.seed))
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        result = []
        for req, out in zip(requests, outs, strict=True):
            texts = [c.text.strip() for c in out.outputs]
            if len(texts) != req.sampling.n:
                raise RuntimeError(f"vLLM returned {len(texts)} samples, expected {req.sampling.n}")
            self.tokens["prompt"] += len(out.prompt_token_ids or [])
            self.tokens["generated"] += sum(len(c.token_ids) for c in out.outputs)
            result.append(texts)
        return result

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        jobs: list[tuple[list[int], int]] = []  # (full ids, first continuation position)
        for req in requests:
            base_text = self.render(req.messages) + req.prefix
            base = self._ids(base_text)
            for c in req.continuations:
                full = self._ids(base_text + c)
                start = _common_prefix(base, full)
                if start == 0 or start >= len(full):
                    raise ValueError(f"continuation {c!r} adds no token after the prefix")
                jobs.append((full, start))
        if not jobs:
            return [[] for _ in requests]
        params = self.vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outs = self.llm.generate([self._prompt(full) for full, _ in jobs], params, use_tqdm=False)
        flat = []
        for (full, start), out in zip(jobs, outs, strict=True):
            self.tokens["prompt"] += len(full)
            # prompt_logprobs[p]: {token id: Logprob} at position p, always holding the actual token
            rows = out.prompt_logprobs
            flat.append(sum(float(rows[p][full[p]].logprob) for p in range(start, len(full))))
        result, i = [], 0
        for req in requests:
            result.append(flat[i : i + len(req.continuations)])
            i += len(req.continuations)
        return result

    def sleep(self) -> None:
        """Park the weights in CPU memory and drop the KV cache (needs sleep_mode)."""
        self.llm.sleep(level=1)

    def wake(self) -> None:
        self.llm.wake_up()

    def close(self) -> None:
        if getattr(self, "llm", None) is None:
            return
        if self.cfg.sleep_mode:
            try:
                self.llm.sleep(level=2)  # frees weights and KV cache at once, before the teardown
            except Exception as e:  # an engine that cannot sleep is torn down all the same
                log.warning("vLLM sleep failed (%s); tearing the engine down", e)
        self.llm = None
        gc.collect()
        with contextlib.suppress(Exception):  # absent in some vLLM versions; teardown is best effort
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        with contextlib.suppress(Exception):
            import torch

            torch.cuda.empty_cache()
