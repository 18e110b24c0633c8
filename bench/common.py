"""Shared helpers for the benchmarks: machine facts, the embedded model, seed data, results file.

Every benchmark module exposes `run(args) -> dict` returning one or more rows:
    {"metric", "ours", "baseline", "ratio", "goal", "met", "unit", "details", "command"}
`python -m bench.run_all` calls them and writes bench/results.json and the table in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED_TASKS = ROOT.parent / "shared" / "data" / "self_instruct" / "seed_tasks.jsonl"


def machine() -> dict:
    import torch

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in flags.splitlines() if ln.startswith("model name")), "?")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_bf16" in flags,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_avg_at_start": os.getloadavg()[0],
    }


def model_path() -> Path:
    """The embedded model (SmolLM2-135M-Instruct) as a plain checkpoint."""
    from lance_llm import models

    return models.resolve("smollm2-135m").path


def seed_pairs() -> list[dict]:
    """(instruction, response) pairs: the Self-Instruct seed tasks when present, else lance's shipped seed."""
    pairs = []
    if SEED_TASKS.exists():
        for line in SEED_TASKS.read_text().splitlines():
            task = json.loads(line)
            inst = task["instances"][0]
            text = task["instruction"] + (f"\n\n{inst['input']}" if inst.get("input") else "")
            pairs.append({"instruction": text, "response": inst["output"]})
    else:
        from lance_llm.config import DataConfig
        from lance_llm.seeds import load_seed

        pairs = [{"instruction": s.instruction, "response": s.response} for s in load_seed(DataConfig())]
    return pairs


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timer:
    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0


def command(module: str, args: list[str] | None = None) -> str:
    return " ".join(["python -m", module, *(args or sys.argv[1:])])
