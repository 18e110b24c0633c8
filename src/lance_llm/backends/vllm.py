"""vLLM offline-engine backend (optional: pip install 'lance-llm[vllm]'; needs CUDA).

    backend = VLLMBackend("/path/to/checkpoint", fingerprint="...", cfg=VLLMBackendConfig())
    backend.generate([GenerateRequest(messages=(("user", "Hi"),), sampling=Sampling(n=4))])

- vLLM is imported only when the backend is built, so lance-llm and its CPU tests run without it.
- Prompts are rendered with the checkpoint's own chat template and handed over as token ids, so
  generation and scoring see exactly the tokens the in-process backend sees.
- generate: one vLLM request per GenerateRequest with `n` samples (vLLM shares the prompt's KV
  cache between them) and the request's seed; greedy when temperature is 0.
- score: prompt + assistant prefix + continuation as one prompt with `prompt_logprobs=0`, which
  returns the log-probability of every prompt token; the continuation's is the sum from the first
  token that differs from the tokenised prefix (as in backends/hf.py). Prefix caching (on by
  default) makes the 11 judge prompts of one pair cost about one.
- Tensor parallel: `tensor_parallel_size` GPUs per engine (vLLM's own). Data parallel: vLLM's
  offline `LLM` does not reliably support `data_parallel_size` in one process, so with
  `data_parallel_size` = N > 1 we start N engine processes, each seeing its own
  `tensor_parallel_size` GPUs (CUDA_VISIBLE_DEVICES), and split every batch between them.
- close(): frees the GPU before training. With `sleep_mode` the engine first sleeps at level 2
  (weights and KV cache released through vLLM's own allocator, which a plain teardown in-process
  does not always manage), then is torn down; a failing sleep falls back to teardown alone. The
  next iteration builds a new engine on the newly trained checkpoint. sleep()/wake() keep the
  engines for callers that come back to the same weights (level 1: weights parked in CPU memory).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import multiprocessing as mp
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import BackendSpec, register
from .base import Backend, ChatTemplate, GenerateRequest, ScoreRequest, reduce_logprobs, score_targets, tidy

log = logging.getLogger(__name__)

Job = tuple[list[int], dict[str, Any]]  # (prompt token ids, SamplingParams keyword arguments)


class _Engine:
    """One vLLM `LLM` in this process; takes and returns plain data (so it also runs in a replica)."""

    def __init__(self, module: str, engine_kwargs: dict[str, Any]) -> None:
        try:
            self.vllm = importlib.import_module(module)
        except ImportError as e:
            raise RuntimeError("backend.kind=vllm needs vLLM and CUDA: pip install 'lance-llm[vllm]'") from e
        self.llm: Any = self.vllm.LLM(**engine_kwargs)

    def run(self, jobs: list[Job]) -> list[dict[str, Any]]:
        if not jobs:
            return []
        prompts = [{"prompt_token_ids": ids} for ids, _ in jobs]  # vLLM's TokensPrompt is a TypedDict
        params = [self.vllm.SamplingParams(**kw) for _, kw in jobs]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for (ids, kw), out in zip(jobs, outs, strict=True):
            res: dict[str, Any] = {"texts": [c.text for c in out.outputs],
                                   "generated": sum(len(c.token_ids) for c in out.outputs)}
            if kw.get("prompt_logprobs") is not None:
                # row p: {token id: Logprob} at prompt position p, always holding the actual token
                rows = out.prompt_logprobs
                res["prompt_logprobs"] = [None] + [float(rows[p][ids[p]].logprob) for p in range(1, len(ids))]
            results.append(res)
        return results

    def call(self, method: str, arg: Any = None) -> Any:
        if method == "run":
            return self.run(arg)
        if method == "sleep":
            return self.llm.sleep(level=arg)
        if method == "wake":
            return self.llm.wake_up()
        raise ValueError(method)


def _replica_main(conn: Any, gpus: str | None, module: str, engine_kwargs: dict[str, Any]) -> None:
    """A data-parallel replica: its own process, its own GPUs, one engine, requests over a pipe."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    try:
        engine = _Engine(module, engine_kwargs)
        conn.send(("ok", None))
    except Exception as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        method, arg = conn.recv()
        if method == "close":
            conn.send(("ok", None))
            return
        try:
            conn.send(("ok", engine.call(method, arg)))
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {e}"))


class _Replica:
    def __init__(self, ctx: Any, gpus: str | None, module: str, engine_kwargs: dict[str, Any]) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_replica_main, args=(child, gpus, module, engine_kwargs), daemon=True)
        self.proc.start()
        self._check(self.conn.recv())

    def _check(self, reply: tuple[str, Any]) -> Any:
        status, value = reply
        if status != "ok":
            raise RuntimeError(f"vLLM replica: {value}")
        return value

    def send(self, method: str, arg: Any = None) -> None:
        self.conn.send((method, arg))

    def receive(self) -> Any:
        return self._check(self.conn.recv())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.send("close")
            self.receive()
        self.proc.join(timeout=60)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


class VLLMBackend(ChatTemplate, Backend):
    def __init__(self, path: str | Path, fingerprint: str, cfg: Any, dtype: str = "auto",
                 trust_remote_code: bool = False, module: str = "vllm", tokenizer: Any = None) -> None:
        self.cfg = cfg
        self.fingerprint = fingerprint
        self.tokens = {"prompt": 0, "generated": 0}
        if tokenizer is None:
            from transformers import AutoTokenizer  # the same tokenizer vLLM loads from the checkpoint

            tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        self.tok = tokenizer
        kwargs: dict[str, Any] = dict(
            model=str(path), tokenizer=str(path), dtype=dtype, trust_remote_code=trust_remote_code,
            tensor_parallel_size=cfg.tensor_parallel_size, gpu_memory_utilization=cfg.gpu_memory_utilization,
            enable_prefix_caching=cfg.enable_prefix_caching, enable_sleep_mode=cfg.sleep_mode,
        )
        if cfg.max_model_len:
            kwargs["max_model_len"] = cfg.max_model_len
        self.engine: _Engine | None = None
        self.replicas: list[_Replica] = []
        if cfg.data_parallel_size > 1:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            devices = visible.split(",") if visible else [str(i) for i in range(cfg.data_parallel_size
                                                                                   * cfg.tensor_parallel_size)]
            tp = cfg.tensor_parallel_size
            if len(devices) < cfg.data_parallel_size * tp:
                raise RuntimeError(f"backend.vllm: {cfg.data_parallel_size} replicas x {tp} GPUs need "
                                   f"{cfg.data_parallel_size * tp} GPUs, CUDA_VISIBLE_DEVICES has {len(devices)}")
            ctx = mp.get_context("spawn")  # CUDA cannot be re-initialised in a forked child
            try:
                for r in range(cfg.data_parallel_size):
                    self.replicas.append(_Replica(ctx, ",".join(devices[r * tp : (r + 1) * tp]), module, kwargs))
            except BaseException:
                self.close()
                raise
        else:
            self.engine = _Engine(module, kwargs)
        log.info("vLLM on %s (tp=%d, dp=%d)", path, cfg.tensor_parallel_size, cfg.data_parallel_size)

    # -- plumbing --------------------------------------------------------------------------
    def _run(self, jobs: list[Job]) -> list[dict[str, Any]]:
        if self.engine is not None:
            return self.engine.run(jobs)
        if not self.replicas:
            raise RuntimeError("the vLLM backend is closed")
        # contiguous shards keep neighbouring (prefix-sharing) prompts on one replica's cache
        size = -(-len(jobs) // len(self.replicas))
        shards = [jobs[i * size : (i + 1) * size] for i in range(len(self.replicas))]
        for rep, shard in zip(self.replicas, shards, strict=True):
            rep.send("run", shard)
        return [res for rep in self.replicas for res in rep.receive()]

    def _broadcast(self, method: str, arg: Any = None) -> None:
        if self.engine is not None:
            self.engine.call(method, arg)
        for rep in self.replicas:
            rep.send(method, arg)
        for rep in self.replicas:
            rep.receive()

    # -- the interface ---------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[str]]:
        jobs: list[Job] = []
        for req in requests:
            s = req.sampling
            greedy = s.temperature <= 0
            jobs.append((self._ids(self.render(req.messages) + req.prefix),
                         dict(n=s.n, temperature=0.0 if greedy else s.temperature, top_p=1.0 if greedy else s.top_p,
                              max_tokens=s.max_new_tokens, seed=s.seed)))
        result = []
        for req, (ids, _), res in zip(requests, jobs, self._run(jobs), strict=True):
            if len(res["texts"]) != req.sampling.n:
                raise RuntimeError(f"vLLM returned {len(res['texts'])} samples, expected {req.sampling.n}")
            self.tokens["prompt"] += len(ids)
            self.tokens["generated"] += res["generated"]
            result.append([tidy(t, req) for t in res["texts"]])
        return result

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        if any(r.certainty for r in requests):
            raise NotImplementedError("self-certainty needs the whole next-token distribution: use backend.kind=hf")
        jobs: list[Job] = []
        starts: list[int] = []
        per_token: list[bool] = []
        for req in requests:
            for full, start in score_targets(req, self.render(req.messages) + req.prefix, self._ids,
                                             self.end_of_turn if req.end_of_turn else ""):
                jobs.append((full, dict(max_tokens=1, temperature=0.0, prompt_logprobs=0)))
                starts.append(start)
                per_token.append(req.per_token)
        flat = []
        for (full, _), start, mean, res in zip(jobs, starts, per_token, self._run(jobs), strict=True):
            self.tokens["prompt"] += len(full)
            flat.append(reduce_logprobs([res["prompt_logprobs"][p] for p in range(start, len(full))], mean))
        result, i = [], 0
        for req in requests:
            result.append(flat[i : i + len(req.continuations)])
            i += len(req.continuations)
        return result

    def sleep(self) -> None:
        """Park the weights in CPU memory and drop the KV cache (needs sleep_mode)."""
        self._broadcast("sleep", 1)

    def wake(self) -> None:
        self._broadcast("wake")

    def close(self) -> None:
        if self.cfg.sleep_mode and (self.engine is not None or self.replicas):
            try:
                self._broadcast("sleep", 2)  # frees weights and KV cache at once, before the teardown
            except Exception as e:  # an engine that cannot sleep is torn down all the same
                log.warning("vLLM sleep failed (%s); tearing the engine down", e)
        for rep in self.replicas:
            rep.stop()
        self.replicas = []
        if self.engine is None:
            return
        self.engine = None
        gc.collect()
        with contextlib.suppress(Exception):  # absent in some vLLM versions; teardown is best effort
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        with contextlib.suppress(Exception):
            import torch

            torch.cuda.empty_cache()


def _build(cfg: Any, path: Path, fingerprint: str) -> VLLMBackend:
    return VLLMBackend(path, fingerprint, cfg.backend.vllm, dtype=cfg.model.dtype,
                       trust_remote_code=cfg.model.trust_remote_code)


register(BackendSpec("vllm", build=_build, numerics=lambda cfg: {
    "dtype": cfg.model.dtype, "tensor_parallel": cfg.backend.vllm.tensor_parallel_size}))
