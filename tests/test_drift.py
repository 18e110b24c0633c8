"""Diversity and drift per iteration (lance_llm.drift): survival per cleaning rule and the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from lance_llm.drift import drift_markdown, drift_rows, generated_groups, survival
from lance_llm.records import Sample
from lance_llm.rundir import RunDir
from lance_llm.stages.clean import REASONS


def test_survival_is_sequential_over_the_rules_in_their_order() -> None:
    counts = dict.fromkeys(REASONS, 0) | {"input": 10, "kept": 4, "exact_duplicate": 2, "response_length": 4}
    s = survival(counts)
    assert list(s) == list(REASONS)
    assert s["contaminated"] == 1.0
    assert s["exact_duplicate"] == pytest.approx(8 / 10)  # 10 reach it, 2 dropped
    assert s["instruction_length"] == 1.0  # 8 reach it
    assert s["response_length"] == pytest.approx(4 / 8)  # 8 reach it, 4 dropped
    assert s["response_near_duplicate"] == 1.0  # the 4 kept reach it
    assert survival({"input": 0, "kept": 0})["contaminated"] is None


def test_generated_groups_count_each_new_instruction_once() -> None:
    gen = [Sample("a", "Write a poem", "r1", origin="new"), Sample("b", "Write a poem", "r2", origin="new"),
           Sample("c", "Seed task", "worse", origin="degraded")]
    g = generated_groups(gen)
    assert g == {"instructions": ["Write a poem"], "responses": ["r1", "r2", "worse"]}


def _iteration(root: Path, t: int, responses: list[str], counts: dict[str, int]) -> None:
    rd = RunDir(root)
    rd.write(t, "generated", [Sample(f"{t}-{i}", f"instruction number {i} of iteration {t}", r, origin="new",
                                     iteration=t) for i, r in enumerate(responses)])
    rd.write_manifest(t, "clean", {}, {}, [], counts, 0.0)


def test_drift_rows_show_a_collapse(tmp_path: Path) -> None:
    base = dict.fromkeys(REASONS, 0)
    _iteration(tmp_path, 1, ["the cat sat on the mat", "dogs bark at night", "rain falls in spring"],
               base | {"input": 3, "kept": 3})
    _iteration(tmp_path, 2, ["the cat sat on the mat"] * 3, base | {"input": 3, "kept": 1, "exact_duplicate": 2})
    RunDir(tmp_path).iter_dir(0).mkdir()  # iteration 0 has no generated data: no row
    rows = drift_rows(tmp_path)
    assert [r["iter"] for r in rows] == [1, 2]
    r1, r2 = rows
    assert r1["responses"]["distinct-1"] > r2["responses"]["distinct-1"]
    assert r2["responses"]["self-ROUGE-L"] == pytest.approx(1.0)
    assert r1["responses"]["self-ROUGE-L"] < 0.5
    assert r2["survival"]["exact_duplicate"] == pytest.approx(1 / 3) and r2["kept share"] == pytest.approx(1 / 3)
    assert r1["instructions"]["texts"] == 3 and r1["responses"]["mean words"] == pytest.approx((6 + 4 + 4) / 3)
    md = drift_markdown(rows)
    assert "| 2 | 1.000 | 0.333 |" in md  # iteration 2: nothing contaminated, a third survives exact dedup
