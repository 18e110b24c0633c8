"""Fixtures shared by test files."""

from __future__ import annotations

from pathlib import Path

import pytest

from lance_llm.records import assistant, chat_prompt, write_records

SYSTEM = "You are a helpful assistant."


@pytest.fixture
def train_data(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny SFT set and preference set in TRL's formats (4 sums each; the rejected answer is off by 3)."""
    sft, dpo = tmp_path / "sft.jsonl", tmp_path / "dpo.jsonl"
    write_records(sft, [
        {"id": f"s{i}", "prompt": chat_prompt(SYSTEM, f"What is {i} plus {i}?"),
         "completion": assistant(f"{i} plus {i} is {2 * i}."), "source": "seed", "iteration": 0, "score": None}
        for i in range(4)])
    write_records(dpo, [
        {"id": f"p{i}", "prompt": chat_prompt(SYSTEM, f"What is {i} plus {i}?"),
         "chosen": assistant(f"{i} plus {i} is {2 * i}."), "rejected": assistant(f"{i} plus {i} is {2 * i + 3}."),
         "parent_id": "x", "chosen_id": "c", "rejected_id": "r", "score_chosen": 9.0, "score_rejected": 2.0,
         "iteration": 1}
        for i in range(4)])
    return sft, dpo
