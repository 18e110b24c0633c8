"""The `lance` command: help text, config printing, the model list. Its errors on bad input are in
test_bad_input.py."""

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


def test_models_list_names_both_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "qwen2.5-coder-0.5b" in out
