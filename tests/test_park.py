"""lance_llm.park, fast: a scripted two-iteration run (fake trainer) parked without its weights and
restored elsewhere resumes with nothing run again; weights it could not rebuild, or that rebuild
differently, are refused by name. The real merge (LoRA on the embedded model) is exercised by the
experiment's toy run (tests/test_experiment.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sqlite3
from pathlib import Path

import pytest

from conftest import FakeTrainer, ScriptedFactory, lance_script
from lance_llm import models, park
from lance_llm.loop import run
from lance_llm.stages.train import ADAPTER
from test_loop import config


class AdapterTrainer(FakeTrainer):
    """The fake trainer, with an `adapter/` beside the weights as LoRA training writes it; here the
    adapter's file holds the merged weights themselves, so that `fake_rebuild` can restore them."""

    def __call__(self, kind, model_path, data, out, cfg, seed, trust_remote_code=False):
        res = super().__call__(kind, model_path, data, out, cfg, seed, trust_remote_code)
        (Path(out) / ADAPTER).mkdir()
        (Path(out) / ADAPTER / "adapter_config.json").write_text("{}")
        shutil.copy(Path(out) / "model.safetensors", Path(out) / ADAPTER / "adapter_model.safetensors")
        return res


def fake_rebuild(ckpt: Path, parent: Path, how: str) -> None:
    src = parent / "model.safetensors" if how == "copy" else ckpt / ADAPTER / "adapter_model.safetensors"
    shutil.copy(src, ckpt / "model.safetensors")


def test_a_parked_run_resumes_elsewhere_with_nothing_run_again(tmp_path, seed_file, fake_base, monkeypatch):
    monkeypatch.setenv("LANCE_CACHE", str(tmp_path / "cache"))  # the evaluation cache: this test's own
    cfg = config(tmp_path, seed_file, fake_base)
    run(cfg, echo=lambda _: None, backends=ScriptedFactory(lance_script), trainer=AdapterTrainer())
    cached = models.cache_root() / "eval" / "results" / models.fingerprint(Path(cfg.run_dir) / "iter_02" / "model")
    cached.mkdir(parents=True)
    (cached / "ifeval-x.json").write_text('{"items": []}')

    judge = models.judge_cache_path()  # one per machine: this run's models and a model of some other run
    judge.parent.mkdir(parents=True)
    ours = models.fingerprint(Path(cfg.run_dir) / "iter_01" / "model")
    with contextlib.closing(sqlite3.connect(judge)) as db, db:
        db.execute("CREATE TABLE calls (key TEXT PRIMARY KEY, kind TEXT, model TEXT, request TEXT, result TEXT)")
        db.executemany("INSERT INTO calls VALUES (?, 'score', ?, '{}', '[]')",
                       [("a", f"{ours}|hf:dtype=float32"), ("b", "0123456789abcdef|hf:dtype=float32")])

    state = tmp_path / "state"
    doc = park.save(cfg.run_dir, state)
    with contextlib.closing(sqlite3.connect(state / park.JUDGE_CACHE)) as db:
        assert db.execute("SELECT key FROM calls").fetchall() == [("a",)]
    assert [e["checkpoint"] for e in doc["checkpoints"]] == [
        "iter_00/model", "iter_01/model_sft", "iter_01/model", "iter_02/model_sft", "iter_02/model"]
    assert doc["checkpoints"][1]["parent"] == "iter_00/model" and doc["checkpoints"][0]["parent"] is None
    assert not list((state / "run").rglob("model.safetensors"))  # merged weights stay behind
    assert (state / "run" / "iter_02" / "model" / ADAPTER / "adapter_model.safetensors").exists()
    assert (state / "run" / "iter_01" / "sft.jsonl").exists() and (state / "eval_cache" / cached.name).is_dir()
    shutil.rmtree(cached)

    monkeypatch.setattr(park, "_rebuild", fake_rebuild)
    moved = dataclasses.replace(cfg, run_dir=str(tmp_path / "elsewhere"))
    rebuilt = park.restore(state, moved.run_dir, echo=lambda _: None)
    assert len(rebuilt) == 5 and (cached / "ifeval-x.json").exists()
    with contextlib.closing(sqlite3.connect(judge)) as db:  # merged into the machine's cache, nothing lost
        assert sorted(db.execute("SELECT key FROM calls").fetchall()) == [("a",), ("b",)]
    factory, trainer, lines = ScriptedFactory(lance_script), AdapterTrainer(), []
    run(moved, echo=lines.append, backends=factory, trainer=trainer)
    assert trainer.calls == [] and factory.built == []  # no model was even loaded
    assert not [ln for ln in lines if "not run yet" in ln or "changed" in ln]


def test_park_refuses_what_it_could_not_rebuild_and_restore_refuses_what_differs(
        tmp_path, seed_file, fake_base, monkeypatch):
    monkeypatch.setenv("LANCE_CACHE", str(tmp_path / "cache"))
    cfg = config(tmp_path, seed_file, fake_base)
    run(cfg, echo=lambda _: None, backends=ScriptedFactory(lance_script), trainer=FakeTrainer())
    with pytest.raises(park.ParkError, match=r"iter_00/model: no LoRA adapter"):
        park.save(cfg.run_dir, tmp_path / "state")  # full fine-tuning: only the weights hold the model
    assert not (tmp_path / "state").exists()

    lora = dataclasses.replace(cfg, run_dir=str(tmp_path / "lora"))
    run(lora, echo=lambda _: None, backends=ScriptedFactory(lance_script), trainer=AdapterTrainer())
    park.save(lora.run_dir, tmp_path / "state")
    adapter = tmp_path / "state" / "run" / "iter_01" / "model" / ADAPTER / "adapter_model.safetensors"
    adapter.write_bytes(b"not what was trained")
    monkeypatch.setattr(park, "_rebuild", fake_rebuild)
    with pytest.raises(park.ParkError, match=r"iter_01/model: rebuilt with fingerprint"):
        park.restore(tmp_path / "state", tmp_path / "elsewhere", echo=lambda _: None)
    # nothing half-restored is left for `lance run` to mistake for a run and retrain from scratch
    assert not (tmp_path / "elsewhere").exists() and not list(tmp_path.glob(".elsewhere*"))
    adapter.write_bytes((tmp_path / "lora" / "iter_01" / "model" / "model.safetensors").read_bytes())
    assert len(park.restore(tmp_path / "state", tmp_path / "elsewhere", echo=lambda _: None)) == 5
    with pytest.raises(park.ParkError, match="exists and is not empty"):
        park.restore(tmp_path / "state", tmp_path / "elsewhere", echo=lambda _: None)


def test_park_leaves_out_checkpoints_that_are_unfinished_or_no_longer_current(
        tmp_path, seed_file, fake_base, monkeypatch):
    monkeypatch.setenv("LANCE_CACHE", str(tmp_path / "cache"))
    cfg = config(tmp_path, seed_file, fake_base)
    run(cfg, echo=lambda _: None, backends=ScriptedFactory(lance_script), trainer=AdapterTrainer())
    root = Path(cfg.run_dir)
    # iteration 2's train stage rerunning when the machine went: a new SFT model, no manifest for it yet
    (root / "iter_02" / "model_sft" / "model.safetensors").write_bytes(b"a newer SFT model")
    shutil.copytree(root / "iter_02" / "model_sft", root / "iter_03" / "model_sft")  # unfinished: no manifest
    doc = park.save(root, tmp_path / "state")
    assert [e["checkpoint"] for e in doc["checkpoints"]] == ["iter_00/model", "iter_01/model_sft", "iter_01/model"]
    assert set(doc["left_out"]) == {"iter_02/model_sft", "iter_02/model", "iter_03/model_sft"}
    assert not (tmp_path / "state" / "run" / "iter_02" / "model").exists()
    assert not list((tmp_path / "state" / "run").rglob("*.safetensors*")) or all(
        p.parent.name == ADAPTER for p in (tmp_path / "state" / "run").rglob("*.safetensors"))
    monkeypatch.setattr(park, "_rebuild", fake_rebuild)
    park.restore(tmp_path / "state", tmp_path / "elsewhere", echo=lambda _: None)
    lines: list[str] = []
    run(dataclasses.replace(cfg, run_dir=str(tmp_path / "elsewhere")), echo=lines.append,
        backends=ScriptedFactory(lance_script), trainer=(trainer := AdapterTrainer()))
    assert [c[0] for c in trainer.calls] == ["sft", "dpo"] and all("iter_02" in str(c[3]) for c in trainer.calls)
