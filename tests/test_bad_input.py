"""Bad input through the real `lance` entry point: exit code 2, a message naming the file and line
(or the config key), and an existing run directory left exactly as it was, byte for byte and
mtime for mtime. Every case starts from a directory that looks like a previous run."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lance_llm import models, records
from lance_llm.cli import main
from lance_llm.config import build_config
from lance_llm.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")

Snapshot = dict[str, tuple[int, int, str] | None]  # relative path -> (size, mtime_ns, sha256); None = dir


def snapshot(root: Path) -> Snapshot:
    """Every file and directory under root, hidden ones (the lock file) included."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = Path(dirpath) / f
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    """A run directory as a previous, finished `lance run` leaves it."""
    root = tmp_path / "run"
    rd = RunDir(root)
    rd.open(build_config().to_dict(), {"base_model": {"source": "smollm2-135m"}, "seed": 0})
    rd.close()
    rd.write(1, "seed_reviewed", [{"id": "a"}])
    before = snapshot(root)
    assert {"run.json", "config.yaml", ".lock", "iter_01", "iter_01/seed_reviewed.jsonl"} <= set(before)
    yield root
    assert snapshot(root) == before, "a refused run changed the run directory"


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the run gets as far as resolving the model: these inputs must be refused first."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("bad input was not refused before models.resolve")

    monkeypatch.setattr(models, "resolve", refuse)


def run_lance(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["run", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("lance: error: "), err
    assert "Traceback" not in err
    return err


def good_row(i: int) -> dict[str, str]:
    return {"instruction": f"Explain topic number {i} in a sentence.", "response": f"Topic {i} is explained here."}


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


# --------------------------------------------------------------------------------------------
# seed files
# --------------------------------------------------------------------------------------------

SEED_CASES: dict[str, tuple[list[str | bytes], list[str]]] = {
    # name: (lines of the seed file, what the message must contain besides the file name)
    "invalid_json_line_3": ([json.dumps(good_row(1)), json.dumps(good_row(2)), '{"instruction": "x",'],
                            [":3: invalid JSON"]),
    "missing_field": ([json.dumps(good_row(1)), json.dumps({"instruction": "Only an instruction here."})],
                      [":2:", "missing field 'response'"]),
    "renamed_field": ([json.dumps({"prompt": "Explain gravity.", "response": "Things fall down."})],
                      [":1:", "missing field 'instruction'", "fields present", "'prompt'", "'response'"]),
    "empty_file": ([], ["empty"]),
    "only_blank_lines": (["", "   ", "\t"], ["empty"]),
    "non_utf8_line_2": ([json.dumps(good_row(1)), b'\xff\xfe{"instruction": "caf\xe9"}'], [":2:", "UTF-8"]),
}


@pytest.mark.parametrize("case", sorted(SEED_CASES))
def test_bad_seed_file(case: str, tmp_path: Path, run_dir: Path, no_model: None,
                       capsys: pytest.CaptureFixture[str]) -> None:
    lines, expected = SEED_CASES[case]
    seed = write_lines(tmp_path / f"{case}.jsonl", lines)
    err = run_lance([TINY, "--run-dir", str(run_dir), "--set", f"data.seed_path={seed}"], capsys)
    assert str(seed) in err
    for text in expected:
        assert text in err


def test_enormous_line_is_refused_with_its_size(tmp_path: Path, run_dir: Path, no_model: None,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # the real limit is 64 MiB; the CLI reads it from the module, so a small one stands in for it
    monkeypatch.setattr(records, "MAX_LINE_BYTES", 1000)
    big = json.dumps({"instruction": "Repeat this.", "response": "x" * 5000})
    seed = write_lines(tmp_path / "big.jsonl", [json.dumps(good_row(1)), big])
    err = run_lance([TINY, "--run-dir", str(run_dir), "--set", f"data.seed_path={seed}"], capsys)
    assert f"{seed}:2: line is {len(big):,} bytes, over the limit of 1,000 bytes" in err


# --------------------------------------------------------------------------------------------
# review examples
# --------------------------------------------------------------------------------------------

def test_missing_review_examples_file(tmp_path: Path, run_dir: Path, no_model: None,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_examples.jsonl"
    err = run_lance([TINY, "--run-dir", str(run_dir), "--set", f"data.review_examples_path={missing}"], capsys)
    assert str(missing) in err and "cannot open" in err


def test_review_example_with_score_11(tmp_path: Path, run_dir: Path, no_model: None,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    ex = {"instruction": "Say hi.", "response": "Hi.", "rationale": "Fine.", "score": 7}
    path = write_lines(tmp_path / "examples.jsonl", [json.dumps(ex), json.dumps({**ex, "score": 11})])
    err = run_lance([TINY, "--run-dir", str(run_dir), "--set", f"data.review_examples_path={path}"], capsys)
    assert f"{path}:2:" in err and "'score'" in err and "11" in err


# --------------------------------------------------------------------------------------------
# config files
# --------------------------------------------------------------------------------------------

CONFIG_CASES: dict[str, tuple[str, list[str]]] = {
    # name: (YAML text, what the message must contain besides the file name)
    "unknown_top_level_key": ("iterations: 1\niteratons: 2\n", ["unknown key 'iteratons'"]),
    "unknown_nested_key": ("generate:\n  n_responses: 2\n  thresold: 6\n", ["unknown key 'generate.thresold'"]),
    "iterations_is_a_word": ('iterations: "two"\n', ["iterations: expected an integer", "'two'"]),
    "threshold_is_a_list": ("generate:\n  threshold: [1]\n", ["generate.threshold: expected a number"]),
    "invalid_yaml": ("iterations: 1\nreview:\n  samples: [1, 2\nseed: 0\n",
                     [":4: invalid YAML", "flow sequence that starts at line 3"]),
    "impossible_date": ("seed: 2024-13-45\n", ["invalid YAML value"]),
    "nan_threshold": ("generate:\n  threshold: .nan\n", ["generate.threshold: expected a finite number"]),
    "zero_limit": ("data:\n  limit: 0\n", ["data.limit: must be > 0"]),
    "secret_in_config": ("backend:\n  api_key: sk-not-a-real-key\n",
                         ["backend.api_key", "environment only", "remove 'backend.api_key'"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_file(case: str, tmp_path: Path, run_dir: Path, no_model: None,
                         capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = CONFIG_CASES[case]
    cfg = tmp_path / f"{case}.yaml"
    cfg.write_text(text)
    err = run_lance([str(cfg), "--run-dir", str(run_dir)], capsys)
    assert str(cfg) in err
    for part in expected:
        assert part in err
    assert "sk-not-a-real-key" not in err  # the secret's value is never echoed


@pytest.mark.parametrize(("override", "expected"), [
    ("generate.thresold=6", "unknown key 'generate.thresold'"),
    ("iterations=two", "iterations: expected an integer"),
    ("generate.threshold=[1]", "generate.threshold: expected a number"),
    ("backend.api_key=sk-not-a-real-key", "remove 'backend.api_key'"),
])
def test_bad_override(override: str, expected: str, run_dir: Path, no_model: None,
                      capsys: pytest.CaptureFixture[str]) -> None:
    err = run_lance([TINY, "--run-dir", str(run_dir), "--set", override], capsys)
    assert expected in err
    assert "sk-not-a-real-key" not in err


# --------------------------------------------------------------------------------------------
# run directories: refused before the model is resolved (which converts it on a new machine)
# --------------------------------------------------------------------------------------------

def test_run_dir_of_an_incompatible_format_version(tmp_path: Path, no_model: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "old"
    rd = RunDir(root)
    rd.open(build_config().to_dict(), {})
    rd.close()
    meta = json.loads((root / "run.json").read_text())
    meta["format_version"] = 999
    (root / "run.json").write_text(json.dumps(meta))
    before = snapshot(root)
    err = run_lance([TINY, "--run-dir", str(root)], capsys)
    assert str(root / "run.json") in err and "format version 999" in err
    assert snapshot(root) == before


def test_non_run_non_empty_directory(tmp_path: Path, no_model: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("my own files\n")
    before = snapshot(root)
    err = run_lance([TINY, "--run-dir", str(root)], capsys)
    assert str(root) in err and "not a lance run directory" in err
    assert snapshot(root) == before


def test_run_dir_that_is_a_file(tmp_path: Path, no_model: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "file"
    path.write_text("not a directory\n")
    err = run_lance([TINY, "--run-dir", str(path)], capsys)
    assert str(path) in err and "not a directory" in err
    assert path.read_text() == "not a directory\n"


def test_second_run_on_a_locked_directory(tmp_path: Path, no_model: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "run"
    rd = RunDir(root)
    rd.open(build_config().to_dict(), {})
    rd.close()
    rd.write(1, "dummy", [{}])
    holder = RunDir(root)
    holder.lock()  # as a running `lance run` holds it
    try:
        before = snapshot(root)
        err = run_lance([TINY, "--run-dir", str(root)], capsys)
        assert str(root) in err and f"pid {os.getpid()}" in err
        assert snapshot(root) == before
    finally:
        holder.close()
