"""Bad input through the real `lance` entry point, the one place for every config, seed-file and
run-directory error: exit code 2, a message naming the file and line (or the config key), the
same message the loader raises, refused before any model is resolved, and an existing run
directory left exactly as it was, byte for byte and mtime for mtime. Every case starts from a
directory that looks like a previous run."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lance_llm import models, records
from lance_llm.cli import main
from lance_llm.config import ConfigError, DataConfig, build_config, load_config
from lance_llm.records import RecordError
from lance_llm.rundir import RunDir
from lance_llm.seeds import load_seed

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
# seed files: every way a seed file can be wrong, in one table (loader and CLI at once)
# --------------------------------------------------------------------------------------------

def si(instruction: str, *instances: dict) -> str:
    return json.dumps({"id": "t0", "instruction": instruction, "instances": list(instances)})


SEED_CASES: dict[str, tuple[str, list[str | bytes], list[str]]] = {
    # name: (file suffix, lines of the seed file, what the message must contain besides the file name)
    "invalid_json_line_3": (".jsonl", [json.dumps(good_row(1)), "", '{"instruction": "x",'], [":3: invalid JSON"]),
    "not_an_object_line_2": (".jsonl", [json.dumps(good_row(1)), '["not", "an", "object"]'], [":2:"]),
    "missing_field": (".jsonl", [json.dumps(good_row(1)), json.dumps({"instruction": "Only an instruction here."})],
                      [":2:", "missing field 'response'"]),
    "renamed_field": (".jsonl", [json.dumps({"prompt": "Explain gravity.", "response": "Things fall down."})],
                      [":1:", "missing field 'instruction'", "fields present", "'prompt'", "'response'"]),
    "number_as_instruction": (".jsonl", [json.dumps(good_row(1)), json.dumps({"instruction": 17, "response": "x"})],
                              [":2:", "'instruction'"]),
    "blank_response": (".jsonl", [json.dumps({"instruction": "Fine.", "response": "   "})], [":1:", "empty"]),
    "duplicate_id": (".jsonl", [json.dumps({"id": "r0", **good_row(0)}), json.dumps({"id": "r0", **good_row(1)})],
                     [":2:", "duplicate id 'r0'"]),
    "object_as_id": (".jsonl", [json.dumps({"id": {"a": 1}, **good_row(0)})],
                     [":1: field 'id' must be a string or an integer"]),
    "empty_file": (".jsonl", [], ["empty"]),
    "only_blank_lines": (".jsonl", ["", "   ", "\t"], ["empty"]),
    "non_utf8_line_2": (".jsonl", [json.dumps(good_row(1)), b'\xff\xfe{"instruction": "caf\xe9"}'], [":2:", "UTF-8"]),
    "non_utf8_json": (".json", [b'[{"instruction": "caf\xe9", "response": "x"}]'], ["UTF-8"]),
    "json_cut_short": (".json", ['[', '  {"instruction": "a", "response": "b"},', '  {"instruction": ', ']'],
                       ["invalid JSON"]),
    "json_item_missing_field": (".json", [json.dumps([good_row(0), {"instruction": "c"}])], ["[1]", "'response'"]),
    "json_not_a_list": (".json", [json.dumps(good_row(0))], ["list"]),
    "self_instruct_no_output": (".jsonl", [si("Do a thing.", {"input": "x", "output": "y"}),
                                           si("Do another.", {"input": "x"})], [":2", "'output'"]),
    "self_instruct_no_instances": (".jsonl", [si("Do it.")], [":1", "'instances' must be a non-empty list"]),
    "self_instruct_number_input": (".jsonl", [si("Add one.", {"input": 0, "output": "1"})],
                                   [":1 instances[0]: field 'input' must be a string"]),
}


@pytest.mark.parametrize("case", sorted(SEED_CASES))
def test_bad_seed_file(case: str, tmp_path: Path, run_dir: Path, no_model: None,
                       capsys: pytest.CaptureFixture[str]) -> None:
    suffix, lines, expected = SEED_CASES[case]
    seed = write_lines(tmp_path / f"{case}{suffix}", lines)
    with pytest.raises(RecordError) as ei:  # the loader itself says the same
        load_seed(DataConfig(seed_path=str(seed)))
    err = run_lance([TINY, "--run-dir", str(run_dir), "--set", f"data.seed_path={seed}"], capsys)
    assert err == f"lance: error: {ei.value}\n" and str(seed) in err
    for text in expected:
        assert text in err


def test_missing_seed_file_leaves_no_run_directory(tmp_path: Path, no_model: None,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    new = tmp_path / "new-run"
    err = run_lance([TINY, "--run-dir", str(new), "--set", f"data.seed_path={tmp_path / 'nope.jsonl'}"], capsys)
    assert "nope.jsonl: seed file not found" in err and not new.exists()


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


@pytest.mark.parametrize("score", [11, -1, "7", True, None])
def test_review_example_with_a_bad_score(score: object, tmp_path: Path, run_dir: Path, no_model: None,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    ex = {"instruction": "Say hi.", "response": "Hi.", "rationale": "Fine.", "score": 7}
    path = write_lines(tmp_path / "examples.jsonl", [json.dumps(ex), json.dumps({**ex, "score": score})])
    err = run_lance([TINY, "--run-dir", str(run_dir), "--set", f"data.review_examples_path={path}"], capsys)
    assert f"{path}:2:" in err and "'score'" in err and repr(score) in err


# --------------------------------------------------------------------------------------------
# config files and overrides: every way a setting can be wrong, in one table
# --------------------------------------------------------------------------------------------

CONFIG_CASES: dict[str, tuple[str | None, list[str], list[str]]] = {
    # name: (YAML text of the config file (None: the tiny config), --set overrides, what the message must contain)
    "unknown_top_level_key": ("iterations: 1\niteratons: 2\n", [], ["unknown key 'iteratons'"]),
    "unknown_nested_key": ("generate:\n  n_responses: 2\n  thresold: 6\n", [],
                           ["unknown key 'generate.thresold'"]),
    "unknown_key_set": (None, ["review.samplez=3"], ["unknown key 'review.samplez'"]),
    "unknown_deep_key_set": (None, ["review.sampling.temp=0.3"], ["unknown key 'review.sampling.temp'"]),
    "iterations_is_a_word": ('iterations: "two"\n', [], ["iterations: expected an integer", "'two'"]),
    "iterations_set_to_a_word": (None, ["iterations=two"], ["iterations: expected an integer"]),
    "iterations_is_a_float": (None, ["iterations=2.0"], [": iterations: expected an integer"]),
    "samples_is_a_float": (None, ["review.samples=3.5"], [": review.samples: expected an integer"]),
    "threshold_is_a_list": ("generate:\n  threshold: [1]\n", [], ["generate.threshold: expected a number"]),
    "threshold_is_a_bool": (None, ["generate.threshold=true"], [": generate.threshold: expected a number"]),
    "dedup_is_a_number": (None, ["clean.exact_dedup=1"], [": clean.exact_dedup: expected true/false"]),
    "unknown_review_mode": (None, ["review.mode=median"], [": review.mode: must be one of"]),
    "target_modules_not_a_list": (None, ["train.lora.target_modules=q_proj"],
                                  [": train.lora.target_modules: expected a list"]),
    "target_modules_of_numbers": (None, ["train.lora.target_modules=[1, 2]"],
                                  [": train.lora.target_modules[0]: expected a string"]),
    "section_set_to_a_number": (None, ["review=3"], [": review: expected a mapping"]),
    "set_into_a_scalar": ("iterations: 2\n", ["iterations.x=1"], ["'iterations' is not a section"]),
    "zero_iterations": (None, ["iterations=0"], ["iterations: must be > 0"]),
    "zero_samples": (None, ["review.samples=0"], ["review.samples: must be > 0"]),
    "top_p_above_1": (None, ["review.sampling.top_p=1.5"], ["review.sampling.top_p: must be in (0, 1]"]),
    "top_p_zero": (None, ["generate.response_sampling.top_p=0"], ["generate.response_sampling.top_p"]),
    "negative_temperature": (None, ["generate.sampling.temperature=-0.1"], ["generate.sampling.temperature"]),
    "rouge_above_1": (None, ["clean.rouge_threshold=1.2"], ["clean.rouge_threshold: must be in [0, 1]"]),
    "negative_margin": (None, ["annotate.pair_margin=-1"], ["annotate.pair_margin: must be >= 0"]),
    "zero_responses": (None, ["generate.n_responses=0"], ["generate.n_responses: must be > 0"]),
    "zero_limit": ("data:\n  limit: 0\n", [], ["data.limit: must be > 0"]),
    "negative_limit": (None, ["data.limit=-1"], ["data.limit: must be > 0"]),
    "negative_seed": (None, ["seed=-1"], ["seed: must be in"]),
    "max_words_below_min": (None, ["clean.response_max_words=2"],
                            ["clean.response_max_words: must be >= clean.response_min_words"]),
    "lora_dropout_1": (None, ["train.lora.dropout=1"], ["train.lora.dropout"]),
    "nan_threshold": ("generate:\n  threshold: .nan\n", [], ["generate.threshold: expected a finite number"]),
    "nan_threshold_set": (None, ["generate.threshold=.nan"], ["generate.threshold: expected a finite number"]),
    "huge_threshold": (None, ["generate.threshold=" + "1" * 400], ["generate.threshold: number out of range"]),
    "impossible_date": ("seed: 2024-13-45\n", [], ["invalid YAML value"]),
    "impossible_date_set": (None, ["seed=2024-13-45"], ["seed: expected an integer"]),
    "invalid_yaml": ("iterations: 1\nreview:\n  samples: [1, 2\nseed: 0\n", [],
                     [":4: invalid YAML", "flow sequence that starts at line 3"]),
    "a_list_at_top_level": ("- a\n- b\n", [], ["top level must be a mapping"]),
    "a_string_at_top_level": ("just a string\n", [], ["top level must be a mapping"]),
    "a_number_at_top_level": ("42\n", [], ["top level must be a mapping"]),
    "secret_in_config": ("backend:\n  api_key: sk-not-a-real-key\n", [],
                         ["backend.api_key", "environment only", "remove 'backend.api_key'"]),
    "secret_set": (None, ["backend.api_key=sk-not-a-real-key"], ["remove 'backend.api_key'"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config(case: str, tmp_path: Path, run_dir: Path, no_model: None,
                    capsys: pytest.CaptureFixture[str]) -> None:
    text, overrides, expected = CONFIG_CASES[case]
    cfg = Path(TINY)
    if text is not None:
        cfg = tmp_path / f"{case}.yaml"
        cfg.write_text(text)
    with pytest.raises(ConfigError) as ei:  # the loader itself says the same
        load_config(cfg, overrides)
    err = run_lance([str(cfg), "--run-dir", str(run_dir), *(x for o in overrides for x in ("--set", o))], capsys)
    assert err == f"lance: error: {ei.value}\n" and err.startswith(f"lance: error: {cfg}:")
    for part in expected:
        assert part in err
    assert "sk-not-a-real-key" not in err  # a secret's value is never echoed


@pytest.mark.parametrize("name", ["missing.yaml", "latin1.yaml"])
def test_unreadable_config_file(name: str, tmp_path: Path, run_dir: Path, no_model: None,
                                capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / name
    if name == "latin1.yaml":
        cfg.write_bytes("run_dir: caf\xe9\n".encode("latin-1"))
    err = run_lance([str(cfg), "--run-dir", str(run_dir)], capsys)
    assert str(cfg) in err and ("cannot read" in err or "UTF-8" in err)


def test_config_subcommand_refuses_the_same_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "review.samplez=3"]) == 2
    assert "unknown key 'review.samplez'" in capsys.readouterr().err
    assert main(["config", "--set", "run_dir="]) == 2  # `lance run --run-dir` would replace it
    assert "run_dir: must not be empty" in capsys.readouterr().err


def test_missing_decontamination_file_names_the_key(tmp_path: Path, no_model: None,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    err = run_lance([TINY, "--set", "clean.decontaminate_paths=[/no/such/file.jsonl]", "--run-dir",
                     str(tmp_path / "run")], capsys)
    assert "clean.decontaminate_paths[0]" in err and not (tmp_path / "run").exists()


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
