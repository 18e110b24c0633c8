"""The short crash-torture run in CI: SIGKILL a real tiny run at random moments, resume it, and
require byte-identical artifacts to an uninterrupted run (same seed: determinism) with at most
one cache chunk of LLM calls asked twice per kill. The long version: scripts/torture.py --trials 10."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path: Path) -> None:
    out = tmp_path / "torture.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "torture.py"), "--trials", "2", "--kills", "1", "--seed", "1",
         "--work", str(tmp_path / "work"), "--timeout", "400", "--out", str(out)],
        capture_output=True, text=True, timeout=1500,
    )
    assert out.exists(), proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["reference_artifacts"] >= 15  # iter_00 + iter_01 JSONL files and two checkpoints
    for r in summary["results"]:
        assert r["exit"] == 0, r
        assert r["artifacts_differing"] == [], r
        assert r["repeated_llm_calls"] <= r["allowed_repeats"], r
    assert summary["kills"] >= 2  # each trial was really killed before it could finish
    assert summary["ok"] and summary["passed"] == 2, proc.stderr[-3000:]
    assert proc.returncode == 0
