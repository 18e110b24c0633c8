"""llama.cpp beside lance (lance_llm.llamacpp): the pinned source, GGUF conversion, `{gguf}` and
`{llama-server}` in backend.openai.serve_command, and the served engine in the cache identity.

The slow test converts the embedded checkpoint to a bf16 GGUF with the converter of the pinned
llama.cpp source (fetched by `make serve`), serves it through serve_command with llama-cpp-python's
server and checks that the likelihood judge's per-token log-probabilities through the server match
the in-process model's within a stated tolerance.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

from conftest import free_port
from lance_llm import llamacpp, models
from lance_llm.backends import backend_fingerprint
from lance_llm.backends.openai_compat import serve_argv
from lance_llm.config import build_config

ROOT = Path(__file__).resolve().parents[1]


def test_pinned_version_is_the_one_make_serve_compiles() -> None:
    pin = re.search(r"^llama-cpp-python==(\S+)$", (ROOT / "requirements" / "constraints.txt").read_text(), re.M)
    assert pin and pin.group(1) == llamacpp.VERSION


def test_serve_argv_expands_model_gguf_and_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    converted: list[tuple[Path, str]] = []

    def fake_gguf(path, outtype="bf16", cache_dir=None):
        converted.append((Path(path), outtype))
        return tmp_path / "my model.gguf"

    monkeypatch.setattr(llamacpp, "gguf", fake_gguf)
    monkeypatch.setattr(llamacpp, "server_binary", lambda cache_dir=None: tmp_path / "bin" / "llama-server")
    ckpt = tmp_path / "iter 01" / "model"
    argv = serve_argv("{llama-server} -m {gguf} --alias x --port 8080 -np 8", ckpt)
    assert argv == [str(tmp_path / "bin" / "llama-server"), "-m", str(tmp_path / "my model.gguf"), "--alias", "x",
                    "--port", "8080", "-np", "8"]
    assert converted == [(ckpt, "bf16")]
    assert serve_argv("vllm serve {model} --port 8000", ckpt) == ["vllm", "serve", str(ckpt), "--port", "8000"]
    assert len(converted) == 1  # no conversion where no {gguf} is asked for


def test_the_served_engine_is_part_of_the_cache_identity(tmp_path: Path) -> None:
    ckpt = models.resolve("smollm2-135m").path

    def fp(command: str | None) -> str:
        return backend_fingerprint(build_config({"backend": {"kind": "openai", "openai": {"serve_command": command}}}),
                                   ckpt)

    llama, vllm = fp("{llama-server} -m {gguf} --port 8080"), fp("vllm serve {model} --port 8080")
    assert llama != vllm and llama.startswith("served:") and vllm.startswith("served:")
    assert fp("{llama-server} -m {gguf} --port 8080") == llama  # stable


def test_unknown_outtype_is_refused() -> None:
    with pytest.raises(ValueError, match="outtype 'q2'"):
        llamacpp.gguf("/nonexistent", "q2")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("openai") is None,
                    reason="needs the server extra: pip install 'lance-llm[serve]' (make serve)")
def test_served_bf16_gguf_scores_like_the_in_process_model() -> None:
    from lance_llm.backends import make_backend
    from lance_llm.backends.hf import HFBackend
    from lance_llm.stages.review import likelihood_requests

    ckpt = models.resolve("smollm2-135m").path
    gguf = llamacpp.gguf(ckpt)  # converted once, cached by the weights' fingerprint
    assert gguf.stat().st_size > 250e6 and llamacpp.gguf(ckpt) == gguf  # bf16: 2 bytes a weight
    port = free_port()
    command = shlex.join([sys.executable, "-m", "llama_cpp.server", "--host", "127.0.0.1", "--port", str(port),
                          "--n_ctx", "2048", "--n_threads", "2", "--verbose", "False"]) + " --model {gguf}"
    cfg = build_config({"backend": {"kind": "openai", "openai": {
        "base_url": f"http://127.0.0.1:{port}/v1", "serve_command": command, "serve_wait_s": 120}}})
    served = make_backend(cfg, ckpt, backend_fingerprint(cfg, ckpt))
    reqs = [r for q, a in [("What is the capital of France?", "The capital of France is Paris."),
                           ("Name three primary colours.", "Red, blue and yellow are the primary colours.")]
            for r in likelihood_requests(q, a, "You are a helpful assistant.")]
    try:
        remote = served.score(reqs)
    finally:
        served.close()

    def in_process(dtype: str) -> list[list[float]]:
        local = HFBackend(ckpt, "local", dtype=dtype)
        try:
            return local.score(reqs)
        finally:
            local.close()

    reference, mine = in_process("float32"), in_process("bfloat16")  # the checkpoint is float32

    def max_diff(xs: list[list[float]], ys: list[list[float]]) -> float:
        return max(abs(a - b) for rx, ry in zip(xs, ys, strict=True) for a, b in zip(rx, ry, strict=True))

    served_err, own_err = max_diff(remote, reference), max_diff(mine, reference)
    print(f"\nper-token log-probability vs in-process float32: served bf16 GGUF max |diff| {served_err:.4f} nats, "
          f"in-process bf16 {own_err:.4f}")
    # Both engines round the weights (and llama.cpp its activations) to bf16, by amounts that depend
    # on the CPU's kernels: measured 0.043 (served) and 0.037 (ours; 0.044 with torch held to AVX2
    # kernels) on a 2-core EPYC with avx512_bf16, and 0.12 between the two on a CI runner. So the
    # exact float32 model is the reference, and the server must be within 0.15 nats of it, or no
    # worse than 3x our own bf16 path where that is worse.
    assert served_err < max(0.15, 3 * own_err)
