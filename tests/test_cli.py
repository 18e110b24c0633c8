"""The `lance` command: help text, config printing, and clear errors that leave no run behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lance_llm.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_subcommand() -> None:
    out = subprocess.run([sys.executable, "-m", "lance_llm.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for word in ("run", "config", "models"):
        assert word in out


def test_config_prints_defaults_overridden_by_file_and_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", str(ROOT / "configs" / "default.yaml"), "--set", "generate.threshold=6.5",
                 "--set", "iterations=3"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["iterations"] == 3
    assert cfg["generate"]["threshold"] == 6.5
    assert cfg["review"]["mode"] == "likelihood"  # from the file
    assert cfg["annotate"]["pair_margin"] == 2.0  # the method's default


def test_unknown_key_is_an_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "review.samplez=3"]) == 2
    assert "review.samplez" in capsys.readouterr().err


def test_malformed_seed_fails_before_the_run_directory_exists(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    seed = tmp_path / "seed.jsonl"
    seed.write_text('{"instruction": "a", "response": "b"}\n{"instruction": "broken"\n')
    run_dir = tmp_path / "run"
    code = main(["run", str(ROOT / "configs" / "tiny.yaml"), "--set", f"data.seed_path={seed}",
                 "--run-dir", str(run_dir)])
    assert code == 2
    assert f"{seed}:2: invalid JSON" in capsys.readouterr().err
    assert not run_dir.exists()


def test_missing_decontamination_file_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--set", "clean.decontaminate_paths=[/no/such/file.jsonl]", "--run-dir",
                 str(tmp_path / "run")])
    assert code == 2
    assert "clean.decontaminate_paths[0]" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_models_list_names_both_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "qwen2.5-coder-0.5b" in out
