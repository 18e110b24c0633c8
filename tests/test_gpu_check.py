"""scripts/gpu_check.py, the GPU check, run on the CPU with a tiny random model: every part (random
checkpoint, generation, one SFT and one DPO run through lance's trainer classes) measures and the
figures land in gpu_check.json. On a GPU the same code runs the 7B shape (scripts/gpu_check.sh)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_gpu_check_runs_every_part_on_a_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import gpu_check

    rc = gpu_check.main(["--shape", "tiny", "--out", str(tmp_path), "--prompts", "3", "--max-new", "8",
                         "--steps", "2", "--batch", "2"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 0, report
    assert report["shape"] == "tiny" and report["finished"]
    assert report["checkpoint"]["params"] > 10_000
    gen = report["generate_hf"]
    assert gen["rows"] == 12 and 0 < gen["new_tokens"] <= 12 * 8 and gen["tokens_per_s"] > 0
    for kind in ("sft", "dpo"):
        assert report[kind]["steps"] == 2 and report[kind]["seconds_per_step"] > 0 and report[kind]["tokens_per_s"]
    assert "generate_vllm" in report  # measured where vLLM imports, else says why not
    sys.modules.pop("gpu_check", None)
