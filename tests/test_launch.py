"""Multi-process training through `accelerate launch` (lance_llm.launch): the shipped accelerate
configs parse with accelerate's own loader; 2 CPU processes (gloo) run SFT then DPO on the real
embedded model, rank 0 saves one loadable checkpoint and every parameter moved; a killed launch
leaves no worker running and no checkpoint, and the next attempt completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lance_llm import launch, models
from lance_llm.config import ConfigError, StepConfig, TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"


@pytest.mark.parametrize(("name", "kind"), [("cpu_gloo", "MULTI_GPU"), ("ddp", "MULTI_GPU"), ("fsdp", "FSDP"),
                                            ("zero3", "DEEPSPEED")])
def test_shipped_accelerate_configs_parse(name: str, kind: str) -> None:
    conf = launch.read_accelerate_config(CONFIGS / f"{name}.yaml")
    assert conf["distributed_type"] == kind
    assert conf["num_processes"] == 2
    assert conf["use_cpu"] is (name == "cpu_gloo")
    if kind == "DEEPSPEED":
        # rank 0 can only save one plain checkpoint when ZeRO-3 gathers the 16-bit weights
        assert conf["deepspeed_config"]["zero_stage"] == 3
        assert conf["deepspeed_config"]["zero3_save_16bit_model"] is True
    if kind == "FSDP":
        assert conf["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_bad_accelerate_config_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("distributed_type: MULTI_CPU\nnum_processes: 2\nnot_a_key: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        launch.read_accelerate_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        launch.read_accelerate_config(tmp_path / "missing.yaml")


def test_lora_with_sharding_is_refused_before_launch(tmp_path: Path) -> None:
    cfg = TrainConfig(method="lora", launcher="accelerate", accelerate_config=str(CONFIGS / "zero3.yaml"))
    with pytest.raises(ConfigError, match="lora"):
        launch.train("sft", tmp_path, tmp_path / "x.jsonl", tmp_path / "out", cfg, seed=0)


def test_several_cpu_processes_without_a_config_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # accelerate would silently start one process: no GPU and no config file
    monkeypatch.setattr(launch, "_has_cuda", lambda: False)
    monkeypatch.setattr("accelerate.commands.config.default_config_file", str(tmp_path / "none.yaml"))
    cfg = TrainConfig(launcher="accelerate", num_processes=2)
    with pytest.raises(ConfigError, match="cpu_gloo"):
        launch.train("sft", tmp_path, tmp_path / "x.jsonl", tmp_path / "out", cfg, seed=0)


def test_launcher_keys_in_config() -> None:
    cfg = load_config(None, ["train.launcher=accelerate", "train.num_processes=2",
                             f"train.accelerate_config={CONFIGS / 'cpu_gloo.yaml'}"])
    cmd = launch.accelerate_command(cfg.train, Path("job.json"))
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--config_file") + 1] == str(CONFIGS / "cpu_gloo.yaml")
    assert cmd[cmd.index("--num_processes") + 1] == "2"
    assert cmd[-3:] == ["-m", "lance_llm.launch", "job.json"]
    with pytest.raises(ConfigError, match=r"train\.num_processes"):
        load_config(None, ["train.num_processes=0"])
    with pytest.raises(ConfigError, match=r"train\.launcher"):
        load_config(None, ["train.launcher=torchrun"])


def _cfg() -> TrainConfig:
    # batch 1 per process x 2 processes: each step sees 2 examples, so 2 steps cover the 4 examples
    return TrainConfig(launcher="accelerate", accelerate_config=str(CONFIGS / "cpu_gloo.yaml"), bf16="false",
                       sft=StepConfig(max_steps=2, batch_size=1, learning_rate=1e-4, max_length=64),
                       dpo=StepConfig(max_steps=1, batch_size=1, learning_rate=1e-4, max_length=64))


def _workers(job: Path) -> list[int]:
    """pids whose command line names the job file (the accelerate launcher and its ranks)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if str(job).encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


@pytest.mark.slow
def test_two_cpu_processes_train_sft_then_dpo_and_resume_after_a_kill(tmp_path: Path,
                                                                   train_data: tuple[Path, Path]) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base_path = models.resolve("smollm2-135m").path
    sft, dpo = train_data
    cfg = _cfg()
    out_sft = tmp_path / "model_sft"

    # 1. kill the launching process while its ranks work: they must exit on their own, leaving nothing
    script = (f"from pathlib import Path; from lance_llm import launch;"
              f"from lance_llm.config import TrainConfig, _build;"
              f"import json; cfg = _build(TrainConfig, json.loads({json.dumps(json.dumps(_asdict(cfg)))}));"
              f"launch.train('sft', Path({str(base_path)!r}), {str(sft)!r}, Path({str(out_sft)!r}), cfg, 0)")
    parent = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    job = tmp_path / ".model_sft.job.json"
    deadline = time.time() + 60
    while time.time() < deadline and len(_workers(job)) < 3:  # launcher + 2 ranks
        time.sleep(0.5)
    assert len(_workers(job)) >= 3, "the ranks never started"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 30
    while time.time() < deadline and _workers(job):
        time.sleep(0.5)
    assert _workers(job) == [], "ranks kept running after the launching process was killed"
    assert not out_sft.exists()

    # 2. the next attempt trains with 2 processes, SFT then DPO from the SFT result
    res_sft = launch.train("sft", base_path, sft, out_sft, cfg, seed=0)
    res_dpo = launch.train("dpo", res_sft.path, dpo, tmp_path / "model", cfg, seed=0)
    assert (res_sft.steps, res_dpo.steps) == (2, 1)
    assert res_sft.examples == 4 and res_sft.loss is not None and res_dpo.loss is not None
    log = json.loads((res_sft.path / "train_log.json").read_text())
    assert any("loss" in row for row in log)
    assert not job.exists() and not (tmp_path / ".model_sft.result.json").exists()

    model = AutoModelForCausalLM.from_pretrained(str(res_dpo.path), dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
    base = load_file(str(base_path / "model.safetensors"))
    s = load_file(str(res_sft.path / "model.safetensors"))
    d = load_file(str(res_dpo.path / "model.safetensors"))
    assert set(base) == set(s) == set(d)
    assert all(not torch.equal(base[k], s[k]) for k in base), "a parameter did not move in SFT"
    assert all(not torch.equal(s[k], d[k]) for k in base), "a parameter did not move in DPO"


def _asdict(cfg: TrainConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)
