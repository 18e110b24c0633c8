"""The vLLM backend: request translation on CPU with a fake `vllm` module, and a GPU test that
runs the real engine on the embedded model (skipped cleanly without CUDA or vLLM).

The fake only checks what we hand vLLM (token ids, SamplingParams, engine settings) and how we read
its outputs (samples, prompt_logprobs); vLLM's own behaviour is the GPU test's job.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest

from lance_llm.backends.base import GenerateRequest, Sampling, ScoreRequest
from lance_llm.config import ConfigError, VLLMBackendConfig, build_config


class FakeTokenizer:
    """Characters are tokens (ids = code points); the chat template is a fixed wrapper."""

    def apply_chat_template(self, chat: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool = False
                            ) -> str:
        text = "".join(f"[{m['role']}]{m['content']}" + ("<end>" if m["role"] == "assistant" else "") for m in chat)
        return text + ("[assistant]" if add_generation_prompt else "")

    def __call__(self, text: str, add_special_tokens: bool) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


class FakeParams:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


class FakeLLM:
    instances: ClassVar[list[FakeLLM]] = []

    def __init__(self, **kw: Any) -> None:
        self.kwargs = kw
        self.calls: list[tuple[list[dict[str, Any]], Any]] = []
        self.slept: list[int] = []
        self.shutdowns = 0
        self.llm_engine = types.SimpleNamespace(engine_core=types.SimpleNamespace(shutdown=self._shutdown))
        FakeLLM.instances.append(self)

    def _shutdown(self) -> None:
        self.shutdowns += 1

    def get_tokenizer(self) -> FakeTokenizer:
        return FakeTokenizer()

    def generate(self, prompts: list[dict[str, Any]], params: Any, use_tqdm: bool) -> list[Any]:
        self.calls.append((prompts, params))
        outs = []
        for i, p in enumerate(prompts):
            ids = p["prompt_token_ids"]
            sp = params[i] if isinstance(params, list) else params
            if getattr(sp, "prompt_logprobs", None) is not None:
                # log P(token at p) = -(code point % 5 + 1) / 10; position 0 has none, as in vLLM
                rows = [None] + [{t: types.SimpleNamespace(logprob=-((t % 5) + 1) / 10)} for t in ids[1:]]
                outs.append(types.SimpleNamespace(prompt_logprobs=rows, prompt_token_ids=ids, outputs=[]))
            else:
                samples = [types.SimpleNamespace(text=f" s{k} seed={sp.seed} ", token_ids=[1, 2, 3])
                           for k in range(sp.n)]
                outs.append(types.SimpleNamespace(outputs=samples, prompt_token_ids=ids, prompt_logprobs=None))
        return outs

    def sleep(self, level: int) -> None:
        self.slept.append(level)

    def wake_up(self) -> None:
        self.slept.append(0)


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    mod = types.ModuleType("vllm")
    mod.LLM = FakeLLM  # type: ignore[attr-defined]
    mod.SamplingParams = FakeParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", mod)
    FakeLLM.instances.clear()
    return mod


def make(fake_vllm: types.ModuleType, device: str = "cuda", **cfg: Any) -> Any:
    from lance_llm.backends.vllm import VLLMBackend

    return VLLMBackend("/ckpt", "fp", VLLMBackendConfig(**cfg), dtype="bfloat16", tokenizer=FakeTokenizer(),
                       device=device)


def test_engine_settings(fake_vllm: types.ModuleType) -> None:
    make(fake_vllm, tensor_parallel_size=2, max_model_len=2048)
    kw = FakeLLM.instances[-1].kwargs
    assert kw["model"] == "/ckpt" and kw["tokenizer"] == "/ckpt" and kw["dtype"] == "bfloat16"
    assert (kw["tensor_parallel_size"], kw["max_model_len"]) == (2, 2048)
    assert kw["enable_prefix_caching"] is True and kw["enable_sleep_mode"] is True
    assert "data_parallel_size" not in kw  # replicas are our processes, not an engine argument
    assert "kv_cache_memory_bytes" not in kw and kw["enforce_eager"] is False  # vLLM's own sizing on a GPU
    make(fake_vllm, kv_cache_gib=1.5, enforce_eager=True)
    kw = FakeLLM.instances[-1].kwargs
    assert kw["kv_cache_memory_bytes"] == int(1.5 * 2**30) and kw["enforce_eager"] is True


def test_cpu_engine_settings_leave_out_gpu_only_ones(fake_vllm: types.ModuleType) -> None:
    b = make(fake_vllm, device="cpu")
    llm = FakeLLM.instances[-1]
    assert llm.kwargs["kv_cache_memory_bytes"] == 4 * 2**30  # not vLLM's ~90% of RAM
    assert "gpu_memory_utilization" not in llm.kwargs and "enable_sleep_mode" not in llm.kwargs
    with pytest.raises(RuntimeError, match="sleep_mode on a GPU"):
        b.sleep()
    b.close()
    assert llm.slept == [] and llm.shutdowns == 1
    with pytest.raises(RuntimeError, match="without CUDA use 1"):
        make(fake_vllm, device="cpu", data_parallel_size=2)


def test_vllm_numerics_name_device_and_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    from lance_llm.backends import spec, vllm

    monkeypatch.setattr(vllm, "cuda_available", lambda: False)
    cfg = build_config({"backend": {"kind": "vllm", "vllm": {"enforce_eager": True}}})
    assert spec("vllm").numerics(cfg) == {"dtype": cfg.model.dtype, "tensor_parallel": 1, "device": "cpu",
                                          "eager": True}
    monkeypatch.setattr(vllm, "cuda_available", lambda: True)
    assert spec("vllm").numerics(build_config({"backend": {"kind": "vllm"}}))["device"] == "cuda"


# A fake vllm module for data-parallel replicas, which run in spawned processes (where a module
# injected into this process's sys.modules does not exist): it answers with the GPUs it was given.
FAKE_MODULE = """
import os, types

class SamplingParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)

class LLM:
    def __init__(self, **kw):
        self.kw = kw

    def generate(self, prompts, params, use_tqdm):
        gpus, tp = os.environ.get("CUDA_VISIBLE_DEVICES"), self.kw["tensor_parallel_size"]
        texts = [f"gpus={gpus} tp={tp} len={len(p['prompt_token_ids'])}" for p in prompts]
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=t, token_ids=[1])] * sp.n,
                                      prompt_logprobs=None) for t, sp in zip(texts, params)]

    def sleep(self, level):
        pass
"""


def test_data_parallel_replicas_own_their_gpus_and_share_the_work(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from lance_llm.backends.vllm import VLLMBackend

    (tmp_path / "fake_vllm_dp.py").write_text(FAKE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned children inherit sys.path
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    b = VLLMBackend("/ckpt", "fp", VLLMBackendConfig(tensor_parallel_size=2, data_parallel_size=2),
                    module="fake_vllm_dp", tokenizer=FakeTokenizer(), device="cuda")
    try:
        reqs = [GenerateRequest((("user", "x" * i),), Sampling(n=2)) for i in range(1, 6)]
        out = b.generate(reqs)
        assert [len(o) for o in out] == [2] * 5
        # contiguous shards, order kept: the first 3 requests on GPUs 4,5, the other 2 on 6,7
        assert [o[0].split(" len=")[0] for o in out] == ["gpus=4,5 tp=2"] * 3 + ["gpus=6,7 tp=2"] * 2
        prompt_len = len("[user][assistant]")
        assert [int(o[0].split("len=")[1]) for o in out] == [prompt_len + i for i in range(1, 6)]
    finally:
        b.close()
    assert all(not r.proc.is_alive() for r in b.replicas) and b.replicas == []


def test_data_parallel_needs_enough_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from lance_llm.backends.vllm import VLLMBackend

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(RuntimeError, match="need 4 GPUs"):
        VLLMBackend("/ckpt", "fp", VLLMBackendConfig(tensor_parallel_size=2, data_parallel_size=2),
                    module="fake_vllm_dp", tokenizer=FakeTokenizer(), device="cuda")


def test_generate_translates_n_seed_and_greedy(fake_vllm: types.ModuleType) -> None:
    b = make(fake_vllm)
    reqs = [GenerateRequest((("user", "hi"),), Sampling(0.7, 0.9, 64, n=3, seed=5)),
            GenerateRequest((("system", "s"), ("user", "yo")), Sampling(0.0, 0.9, 8, n=1, seed=9))]
    assert b.generate(reqs) == [["s0 seed=5", "s1 seed=5", "s2 seed=5"], ["s0 seed=9"]]
    prompts, params = FakeLLM.instances[-1].calls[-1]
    assert prompts[0]["prompt_token_ids"] == [ord(c) for c in "[user]hi[assistant]"]
    assert (params[0].n, params[0].temperature, params[0].top_p, params[0].max_tokens) == (3, 0.7, 0.9, 64)
    assert (params[1].temperature, params[1].top_p, params[1].seed) == (0.0, 1.0, 9)  # greedy
    assert b.tokens["generated"] == 4 * 3


def test_score_sums_prompt_logprobs_of_the_continuation(fake_vllm: types.ModuleType) -> None:
    b = make(fake_vllm)
    [[seven, ten]] = b.score([ScoreRequest((("user", "x"),), "score: ", ("7", "10"))])

    def lp(c: str) -> float:
        return -((ord(c) % 5) + 1) / 10

    assert seven == pytest.approx(lp("7"))
    assert ten == pytest.approx(lp("1") + lp("0"))
    prompts, params = FakeLLM.instances[-1].calls[-1]
    assert all(p.prompt_logprobs == 0 and p.max_tokens == 1 for p in params)
    assert [bytes(p["prompt_token_ids"][-2:]).decode() for p in prompts] == [" 7", "10"]


def test_score_per_token_mean_and_end_of_turn(fake_vllm: types.ModuleType) -> None:
    b = make(fake_vllm)

    def lp(c: str) -> float:
        return -((ord(c) % 5) + 1) / 10

    [[mean]] = b.score([ScoreRequest((("user", "x"),), "", ("abc",), per_token=True)])
    assert mean == pytest.approx(sum(map(lp, "abc")) / 3)
    [[end]] = b.score([ScoreRequest((("user", "x"),), "abc", ("",), end_of_turn=True)])
    assert b.end_of_turn == "<end>" and end == pytest.approx(sum(map(lp, "<end>")))  # read off the template


def test_close_sleeps_then_tears_down_and_sleep_wake(fake_vllm: types.ModuleType) -> None:
    b = make(fake_vllm)
    llm = FakeLLM.instances[-1]
    b.sleep()
    b.wake()
    b.close()
    assert llm.slept == [1, 0, 2] and b.engine is None and llm.shutdowns == 1  # the engine's processes stopped
    b.close()  # idempotent
    make(fake_vllm, sleep_mode=False).close()
    assert FakeLLM.instances[-1].slept == []


def test_missing_vllm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails as if not installed
    from lance_llm.backends.vllm import VLLMBackend

    with pytest.raises(RuntimeError, match=r"lance-llm\[vllm\]"):
        VLLMBackend("/ckpt", "fp", VLLMBackendConfig(), tokenizer=FakeTokenizer())


def test_vllm_config_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"backend\.vllm\.gpu_memory_utilization"):
        build_config({"backend": {"kind": "vllm", "vllm": {"gpu_memory_utilization": 1.5}}})
    with pytest.raises(ConfigError, match=r"backend\.vllm\.tensor_parallel_size"):
        build_config({"backend": {"vllm": {"tensor_parallel_size": 0}}})
    with pytest.raises(ConfigError, match=r"backend\.vllm\.kv_cache_gib"):
        build_config({"backend": {"vllm": {"kv_cache_gib": 0}}})


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None or not _cuda(), reason="needs vLLM and a CUDA GPU")
def test_vllm_matches_in_process_backend_on_gpu() -> None:
    """Greedy completions and judge log-probs from vLLM agree with the in-process backend."""
    from lance_llm import models
    from lance_llm.backends.hf import HFBackend
    from lance_llm.backends.vllm import VLLMBackend
    from lance_llm.stages.review import SCORE_PREFIX, SCORE_TOKENS

    m = models.resolve("smollm2-135m")
    prompts = [(("user", q),) for q in ("Name three primary colours.", "What is 12 times 12?")]
    greedy = [GenerateRequest(p, Sampling(0.0, 1.0, 24, n=1)) for p in prompts]
    score = [ScoreRequest(p, SCORE_PREFIX, SCORE_TOKENS) for p in prompts]
    v = VLLMBackend(Path(m.path), m.fingerprint, VLLMBackendConfig(gpu_memory_utilization=0.3), dtype="float32")
    v_text, v_lp = v.generate(greedy), v.score(score)
    sampled = v.generate([GenerateRequest(prompts[0], Sampling(0.8, 0.95, 16, n=4, seed=1))])[0]
    v.close()
    h = HFBackend(m.path, m.fingerprint, dtype="float32")
    h_text, h_lp = h.generate(greedy), h.score(score)
    assert len(sampled) == 4 and len(set(sampled)) > 1
    assert sum(a == b for a, b in zip(v_text, h_text, strict=True)) >= 1
    for a, b in zip(v_lp, h_lp, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 0.05


def test_exit_process_skips_the_teardown_only_after_a_cpu_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a CPU engine, the process ends by os._exit (output flushed, code kept); otherwise sys.exit."""
    import subprocess

    from lance_llm.backends import vllm as v

    monkeypatch.setattr(v, "_CPU_ENGINE_STARTED", False)  # the fake engines of other tests set it in this process
    with pytest.raises(SystemExit) as e:
        v.exit_process(3)
    assert e.value.code == 3
    code = ("import atexit, lance_llm.backends.vllm as v; atexit.register(print, 'teardown ran'); "
            "v._CPU_ENGINE_STARTED = True; print('result written', end=''); v.exit_process(5)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (5, "result written")
