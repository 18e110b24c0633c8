"""Tests for the durable call cache (CachedBackend, request_hash) and the run directory (manifests,
lock, format version), all with fakes and temporary directories: no model is loaded."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import ScriptedBackend
from lance_llm.backends.base import GenerateRequest, Sampling, ScoreRequest, request_hash
from lance_llm.backends.cache import CachedBackend, cache_counts
from lance_llm.rundir import FORMAT_VERSION, RunDir, RunDirError

FP = "fake-model@sha:abc"


def expected_answer(r: GenerateRequest) -> list[str]:
    return [f"{r.messages[-1][1]}|{k}|seed={r.sampling.seed}" for k in range(r.sampling.n)]


def by_length(r: ScoreRequest) -> list[float]:
    return [-float(len(c)) - 0.5 for c in r.continuations]


class Factory:
    """CachedBackend's lazy maker: builds the scripted backend, counting how often it was asked to."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.fail_on_call = fail_on_call
        self.instances: list[ScriptedBackend] = []

    @property
    def built(self) -> int:
        return len(self.instances)

    def __call__(self) -> ScriptedBackend:
        self.instances.append(ScriptedBackend(expected_answer, by_length, FP, self.fail_on_call))
        return self.instances[-1]

    @property
    def requests_seen(self) -> list[GenerateRequest]:
        return [r for inner in self.instances for r in inner.generated_requests]


def greq(text: str, seed: int = 0, n: int = 2, **sampling: float) -> GenerateRequest:
    return GenerateRequest((("system", "sys"), ("user", text)), Sampling(n=n, seed=seed, **sampling))  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "cache.sqlite"


# --------------------------------------------------------------------------------------------
# CachedBackend
# --------------------------------------------------------------------------------------------


def test_second_identical_call_is_a_hit(db: Path) -> None:
    f = Factory()
    cb = CachedBackend(f, FP, db, chunk_size=4, progress=False)
    reqs = [greq(f"q{i}") for i in range(3)]
    first = cb.generate(reqs)
    assert first == [expected_answer(r) for r in reqs]
    assert cb.stats == {"hits": 0, "misses": 3}
    assert f.built == 1 and len(f.instances[0].generate_calls) == 1

    second = cb.generate(reqs)
    assert second == first
    assert cb.stats == {"hits": 3, "misses": 3}
    assert len(f.instances[0].generate_calls) == 1  # no new inner call
    assert cb.count() == 3
    cb.close()


def test_partial_hit_only_asks_for_the_rest_in_order(db: Path) -> None:
    f = Factory()
    cb = CachedBackend(f, FP, db, chunk_size=8, progress=False)
    cb.generate([greq("a"), greq("c")])
    reqs = [greq("a"), greq("b"), greq("c"), greq("d")]
    out = cb.generate(reqs)
    assert out == [expected_answer(r) for r in reqs]  # results in request order
    assert [r.messages[-1][1] for r in f.instances[0].generate_calls[-1]] == ["b", "d"]
    assert cb.stats == {"hits": 2, "misses": 4}
    cb.close()


def test_duplicate_requests_in_one_call_computed_once(db: Path) -> None:
    f = Factory()
    cb = CachedBackend(f, FP, db, progress=False)
    reqs = [greq("x"), greq("y"), greq("x")]
    out = cb.generate(reqs)
    assert out == [expected_answer(r) for r in reqs]
    assert [r.messages[-1][1] for r in f.requests_seen] == ["x", "y"]
    assert cb.stats["misses"] == 2
    cb.close()


def test_results_survive_reopening(db: Path) -> None:
    f1 = Factory()
    cb = CachedBackend(f1, FP, db, progress=False)
    reqs = [greq(f"q{i}", seed=i) for i in range(5)]
    out1 = cb.generate(reqs)
    sreq = ScoreRequest((("user", "judge this"),), "score: ", tuple(str(i) for i in range(11)))
    s1 = cb.score([sreq])
    cb.close()

    f2 = Factory()
    cb2 = CachedBackend(f2, FP, db, progress=False)
    assert cb2.count() == 6
    assert cb2.generate(reqs) == out1
    assert cb2.score([sreq]) == s1 == [[-1.5] * 10 + [-2.5]]
    assert cb2.stats == {"hits": 6, "misses": 0}
    assert f2.built == 0  # the inner backend (the model) is never constructed
    cb2.close()


def test_inner_not_built_until_a_miss(db: Path) -> None:
    f = Factory()
    cb = CachedBackend(f, FP, db, progress=False)
    assert cb.generate([]) == []
    assert f.built == 0
    cb.generate([greq("a")])
    cb.generate([greq("b")])
    assert f.built == 1  # built once, then reused
    cb.close()
    assert f.instances[0].closed


def test_crash_keeps_finished_chunks(db: Path) -> None:
    reqs = [greq(f"q{i}") for i in range(5)]
    crashing = Factory(fail_on_call=2)
    cb = CachedBackend(crashing, FP, db, chunk_size=2, progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cb.generate(reqs)
    assert cb.count() == 2  # the first chunk was committed
    cb.close()

    retry = Factory()
    cb2 = CachedBackend(retry, FP, db, chunk_size=2, progress=False)
    out = cb2.generate(reqs)
    assert out == [expected_answer(r) for r in reqs]
    assert [r.messages[-1][1] for r in retry.requests_seen] == ["q2", "q3", "q4"]
    assert [len(c) for c in retry.instances[0].generate_calls] == [2, 1]
    assert cb2.stats == {"hits": 2, "misses": 3}
    cb2.close()
    # the chunk lost in flight (q2, q3) is the only thing the model was asked twice
    assert cache_counts(db) == {"calls": 5, "repeated": 2}


def test_wrong_result_count_is_an_error_and_not_cached(db: Path) -> None:
    class Short(ScriptedBackend):
        def generate(self, requests: Sequence[GenerateRequest]) -> list[list[str]]:
            return super().generate(requests)[:-1]

    cb = CachedBackend(lambda: Short(expected_answer), FP, db, progress=False)
    with pytest.raises(RuntimeError, match="1 results for 2 requests"):
        cb.generate([greq("a"), greq("b")])
    assert cb.count() == 0
    cb.close()


def test_other_fingerprint_does_not_hit(db: Path) -> None:
    cb = CachedBackend(Factory(), FP, db, progress=False)
    cb.generate([greq("a")])
    cb.close()
    f = Factory()
    other = CachedBackend(f, "another-model", db, progress=False)
    other.generate([greq("a")])
    assert other.stats == {"hits": 0, "misses": 1}
    assert f.built == 1
    other.close()


def test_request_hash_sensitivity() -> None:
    base = greq("hello", seed=3, n=2)
    h = request_hash(FP, base)
    assert h == request_hash(FP, greq("hello", seed=3, n=2))  # stable
    assert len(h) == 64
    variants = [
        request_hash("other-fp", base),
        request_hash(FP, greq("hello", seed=4, n=2)),
        request_hash(FP, greq("hello", seed=3, n=3)),
        request_hash(FP, replace(base, sampling=replace(base.sampling, temperature=0.71))),
        request_hash(FP, replace(base, sampling=replace(base.sampling, top_p=0.95))),
        request_hash(FP, replace(base, sampling=replace(base.sampling, max_new_tokens=511))),
        request_hash(FP, greq("hello!", seed=3, n=2)),
        request_hash(FP, GenerateRequest((("system", "sys2"), ("user", "hello")), base.sampling)),
        request_hash(FP, GenerateRequest((("user", "hello"),), base.sampling)),
    ]
    assert h not in variants
    assert len(set(variants)) == len(variants)


def test_request_hash_score_requests() -> None:
    s = ScoreRequest((("user", "x"),), "score: ", ("0", "1"))
    h = request_hash(FP, s)
    assert h == request_hash(FP, ScoreRequest((("user", "x"),), "score: ", ("0", "1")))
    others = {
        request_hash("fp2", s),
        request_hash(FP, ScoreRequest((("user", "x"),), "Score: ", ("0", "1"))),
        request_hash(FP, ScoreRequest((("user", "x"),), "score: ", ("1", "0"))),
        request_hash(FP, ScoreRequest((("user", "y"),), "score: ", ("0", "1"))),
    }
    assert h not in others and len(others) == 4


def test_generate_and_score_keys_do_not_collide(db: Path) -> None:
    cb = CachedBackend(Factory(), FP, db, progress=False)
    cb.generate([greq("x")])
    cb.score([ScoreRequest((("system", "sys"), ("user", "x")), "", ())])
    assert cb.stats == {"hits": 0, "misses": 2}
    assert cb.count() == 2
    cb.close()


# --------------------------------------------------------------------------------------------
# RunDir
# --------------------------------------------------------------------------------------------


def listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} | {
        str(p.relative_to(root)) + "/": b"" for p in sorted(root.rglob("*")) if p.is_dir()}


@pytest.fixture
def run(tmp_path: Path):
    rd = RunDir(tmp_path / "run")
    rd.open({"iterations": 1}, {"model": FP})
    yield rd
    rd.close()


def setup_stage(rd: RunDir, tmp_path: Path) -> tuple[dict[str, Path], dict, list[str]]:
    inp = tmp_path / "input.jsonl"
    inp.write_text('{"id": "a"}\n')
    out_dir = rd.iter_dir(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "reviewed.jsonl").write_text('{"id": "a", "score": 7}\n')
    model = out_dir / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"\x00\x01")
    return {"seed": inp}, {"threshold": 7.0, "samples": 3}, ["reviewed.jsonl", "model"]


def test_open_writes_run_json_and_config(run: RunDir) -> None:
    meta = json.loads((run.root / "run.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["model"] == FP
    assert "python" in meta["libraries"]
    assert (run.root / "config.yaml").read_text().strip() == "iterations: 1"
    assert (run.root / ".lock").read_text().strip() == str(os.getpid())


def test_completed_lifecycle(run: RunDir, tmp_path: Path) -> None:
    inputs, params, outputs = setup_stage(run, tmp_path)
    assert run.completed(1, "review", inputs, params) is None  # before write_manifest
    written = run.write_manifest(1, "review", inputs, params, outputs, {"pairs": 1}, 1.234)
    got = run.completed(1, "review", inputs, params)
    assert got == written
    assert got is not None
    assert got["stats"] == {"pairs": 1} and got["seconds"] == 1.23
    assert set(got["outputs"]) == {"reviewed.jsonl", "model"}
    assert run.manifest_path(1, "review").exists()
    # another stage or iteration is not complete
    assert run.completed(1, "generate", inputs, params) is None
    assert run.completed(2, "review", inputs, params) is None
    # same params in another key order: still complete
    assert run.completed(1, "review", inputs, dict(reversed(list(params.items())))) is not None


def test_completed_none_after_output_modified(run: RunDir, tmp_path: Path) -> None:
    inputs, params, outputs = setup_stage(run, tmp_path)
    run.write_manifest(1, "review", inputs, params, outputs, {}, 0.0)
    out = run.path(1, "reviewed")
    original = out.read_text()
    out.write_text('{"id": "a", "score": 9}\n')
    assert run.completed(1, "review", inputs, params) is None
    out.write_text(original)  # restored byte for byte: complete again
    assert run.completed(1, "review", inputs, params) is not None


def test_completed_none_after_output_deleted(run: RunDir, tmp_path: Path) -> None:
    inputs, params, outputs = setup_stage(run, tmp_path)
    run.write_manifest(1, "review", inputs, params, outputs, {}, 0.0)
    run.path(1, "reviewed").unlink()
    assert run.completed(1, "review", inputs, params) is None


def test_completed_none_after_file_inside_output_dir_changes(run: RunDir, tmp_path: Path) -> None:
    inputs, params, outputs = setup_stage(run, tmp_path)
    run.write_manifest(1, "review", inputs, params, outputs, {}, 0.0)
    (run.path(1, "model") / "weights.bin").write_bytes(b"\x00\x02")
    assert run.completed(1, "review", inputs, params) is None


def test_completed_none_after_input_or_params_change(run: RunDir, tmp_path: Path) -> None:
    inputs, params, outputs = setup_stage(run, tmp_path)
    run.write_manifest(1, "review", inputs, params, outputs, {}, 0.0)
    assert run.completed(1, "review", inputs, params) is not None
    assert run.completed(1, "review", inputs, {**params, "threshold": 6.0}) is None
    assert run.completed(1, "review", inputs, {**params, "extra": 1}) is None
    other = tmp_path / "other.jsonl"
    other.write_text('{"id": "a"}\n')  # same content, another input name
    assert run.completed(1, "review", {"seed2": other}, params) is None
    inputs["seed"].write_text('{"id": "b"}\n')
    assert run.completed(1, "review", inputs, params) is None
    inputs["seed"].write_text('{"id": "a"}\n')
    assert run.completed(1, "review", inputs, params) is not None
    inputs["seed"].unlink()
    assert run.completed(1, "review", inputs, params) is None


def test_corrupt_manifest_is_not_complete(run: RunDir, tmp_path: Path) -> None:
    inputs, params, outputs = setup_stage(run, tmp_path)
    run.write_manifest(1, "review", inputs, params, outputs, {}, 0.0)
    run.manifest_path(1, "review").write_text("{not json")
    assert run.completed(1, "review", inputs, params) is None


def test_second_lock_raises(run: RunDir) -> None:
    other = RunDir(run.root)
    with pytest.raises(RunDirError) as ei:
        other.lock()
    assert str(os.getpid()) in str(ei.value)
    with pytest.raises(RunDirError):
        RunDir(run.root).open({"iterations": 1}, {})
    run.close()
    other.lock()  # free once the holder closes
    other.close()


def test_reopen_after_close(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    rd.open({"a": 1}, {})
    rd.close()
    rd2 = RunDir(tmp_path / "run")
    rd2.open({"a": 2}, {})
    assert (tmp_path / "run" / "config.yaml").read_text().strip() == "a: 2"
    rd2.close()


def test_open_refuses_other_format_version(tmp_path: Path) -> None:
    root = tmp_path / "old"
    root.mkdir()
    (root / "run.json").write_text(json.dumps({"format_version": FORMAT_VERSION + 1}))
    (root / "config.yaml").write_text("iterations: 9\n")
    (root / "iter_01").mkdir()
    (root / "iter_01" / "sft.jsonl").write_text("{}\n")
    before = listing(root)
    with pytest.raises(RunDirError) as ei:
        RunDir(root).open({"iterations": 1}, {})
    assert "format version" in str(ei.value)
    assert str(root / "run.json") in str(ei.value)
    assert listing(root) == before  # nothing written, no lock file created


def test_open_refuses_missing_format_version_and_unreadable_run_json(tmp_path: Path) -> None:
    for content in ("{}", "not json at all"):
        root = tmp_path / f"r{len(content)}"
        root.mkdir()
        (root / "run.json").write_text(content)
        before = listing(root)
        with pytest.raises(RunDirError):
            RunDir(root).open({}, {})
        assert listing(root) == before


def test_open_refuses_non_empty_non_run_dir(tmp_path: Path) -> None:
    root = tmp_path / "home"
    root.mkdir()
    (root / "notes.txt").write_text("my important notes\n")
    (root / "sub").mkdir()
    before = listing(root)
    with pytest.raises(RunDirError) as ei:
        RunDir(root).open({"iterations": 1}, {})
    assert "not empty" in str(ei.value)
    assert listing(root) == before


def test_open_accepts_empty_existing_dir(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    rd = RunDir(root)
    rd.open({}, {})
    assert json.loads((root / "run.json").read_text())["format_version"] == FORMAT_VERSION
    rd.close()


def test_training_stages_hash_their_own_steps_and_the_launcher_only_when_it_is_not_this_process() -> None:
    from lance_llm.config import build_config
    from lance_llm.stages.train import TRAIN, TRAIN_M0

    cfg = build_config()
    assert TRAIN.config_keys(cfg) == ("seed", "train.method", "train.bf16", "train.sft", "train.dpo")
    assert TRAIN_M0.config_keys(cfg) == ("seed", "train.method", "train.bf16", "train.sft")  # M_0 runs no DPO
    launched = build_config({"train": {"launcher": "accelerate", "num_processes": 2, "method": "lora"}})
    assert TRAIN.config_keys(launched)[-4:] == ("train.lora", "train.launcher", "train.accelerate_config",
                                                "train.num_processes")
    assert not any("m0_sft" in k for k in TRAIN.config_keys(launched))  # whether M_0 exists is not training's


def test_review_stages_hash_the_settings_and_templates_of_their_mode_only() -> None:
    from lance_llm.config import build_config
    from lance_llm.stage import config_value
    from lance_llm.stages.review import REVIEW_GENERATED, REVIEW_SEED

    lik = build_config({"review": {"mode": "likelihood"}})
    assert REVIEW_SEED.config_keys(lik) == ("review.mode", "review.scale", "review.rejudge", "review.likelihood")
    assert config_value(lik, "review.likelihood")["fluency"] == 1.0
    assert REVIEW_SEED.template_names(lik) == ("system", "neutral_instruction")  # no rubric
    sampled = build_config({"review": {"mode": "sampled"}})
    assert REVIEW_GENERATED.config_keys(sampled) == ("review.mode", "review.scale", "review.rejudge",
                                                     "review.samples", "review.sampling", "seed")
    assert REVIEW_GENERATED.template_names(sampled) == ("system", "review")
    assert "criteria" in REVIEW_SEED.template_names(build_config({"review": {"mode": "combined"}}))


def test_every_template_file_is_declared_by_a_stage() -> None:
    from lance_llm.config import REVIEW_MODES, build_config
    from lance_llm.prompts import HERE
    from lance_llm.stages import ITERATION, PREPARE

    declared = {name for mode in REVIEW_MODES for s in (*PREPARE, *ITERATION)
                for name in s.template_names(build_config({"review": {"mode": mode}}))}
    assert {p.stem for p in HERE.glob("*.txt")} == declared  # a template no stage declares is never hashed


def test_stale_says_why_a_stage_must_run(run: RunDir, tmp_path: Path) -> None:
    inputs, params, outputs = setup_stage(run, tmp_path)
    assert run.stale(1, "review", inputs, params) == "not run yet"
    run.write_manifest(1, "review", inputs, params, outputs, {}, 0.0)
    assert run.stale(1, "review", inputs, params) is None
    assert run.stale(1, "review", inputs, {**params, "threshold": 6.0}) == "threshold changed"
    inputs["seed"].write_text('{"id": "b"}\n')
    assert run.stale(1, "review", inputs, params) == "input seed changed"
    run.path(1, "reviewed").write_text("{}\n")
    assert run.stale(1, "review", inputs, params) == "output reviewed.jsonl changed"
    assert run.manifest(1, "review")["params"] == params  # readable: what it depended on
