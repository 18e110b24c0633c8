"""The generation parser on real replies of both models (tests/fixtures/yield_replies.jsonl, recorded
by `python -m bench.parse_yield --record`): 3 parsed and up to 3 failed replies per model, format
("fill": sections prefilled, "free": one reply) and prompt kind, with what the parser made of them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lance_llm.stages.generate import parse_final_answer

FIXTURES = Path(__file__).parent / "fixtures" / "yield_replies.jsonl"
ROWS = [json.loads(line) for line in FIXTURES.read_text(encoding="utf-8").splitlines()]
LABELS = re.compile(r"^\s*(thought process|final answer|original (instruction|answer|response))\s*:", re.I | re.M)


def test_fixtures_cover_both_models_formats_and_kinds_with_failures() -> None:
    groups = {(r["model"], r["format"], r["kind"]) for r in ROWS}
    assert {m for m, _, _ in groups} == {"smollm2-135m", "qwen2.5-coder-0.5b"}
    assert {f for _, f, _ in groups} == {"fill", "free"} and {k for _, _, k in groups} == {
        "new_instruction", "degrade_response"}
    assert any(r["parsed"] is None for r in ROWS) and any(r["parsed"] for r in ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['model']}-{r['format']}-{r['kind']}-{i}" for i, r in enumerate(ROWS)])
def test_parser_on_a_recorded_reply(row: dict) -> None:
    got = parse_final_answer(row["reply"])
    assert got == row["parsed"]
    if got is not None:  # an answer never carries a template section with it
        assert got.strip() and not LABELS.search(got), got
    else:  # a failure: no Final Answer, or nothing after it but a section label
        tail = re.split(r"final\s*answer\s*\**\s*:", row["reply"], flags=re.I)[-1] if re.search(
            r"final\s*answer", row["reply"], re.I) else ""
        assert not tail.strip() or LABELS.match(tail.strip()) or tail.strip().startswith(("Example", "**"))
    if row["format"] == "fill":  # the prefilled structure, as the stage assembles it
        assert row["reply"].startswith("Thought Process:") and "\nFinal Answer:" in row["reply"]
