"""Secrets and code execution: credentials come from the environment only and never reach the run
directory, the config snapshot or the logs; no model code runs unless asked.

Safetensors only: a checkpoint directory with only pytorch_model.bin is refused by
`models.resolve`, tested in tests/test_models.py::test_directory_without_safetensors_is_refused.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lance_llm.config import ConfigError, build_config, is_secret_key, load_config

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "lance_llm"


# --------------------------------------------------------------------------------------------
# (a) no secret in a config
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["api_key", "apikey", "API_KEY", "apiKey", "openai_api_key", "token", "hf_token",
                                 "HF_TOKEN", "hfToken", "access-token", "secret", "client_secret", "password",
                                 "Password", "db_passwd"])
def test_secret_like_names(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["max_new_tokens", "tokenizer", "source", "n_instructions", "decontaminate_field",
                                 "keys", "response_max_words"])
def test_ordinary_names_are_not_secrets(key: str) -> None:
    assert not is_secret_key(key)


def test_no_key_of_the_schema_looks_like_a_secret() -> None:
    def walk(d: dict, prefix: str = "") -> None:
        for k, v in d.items():
            assert not is_secret_key(k), prefix + k
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    walk(build_config().to_dict())


@pytest.mark.parametrize(("yaml_text", "key"), [
    ("api_key: sk-value-123\n", "api_key"),
    ("backend:\n  api_key: sk-value-123\n", "backend.api_key"),
    ("model:\n  HF_TOKEN: sk-value-123\n", "model.HF_TOKEN"),
    ("train:\n  lora:\n    password: sk-value-123\n", "train.lora.password"),
    ("providers:\n  openai: {apiKey: sk-value-123}\n", "providers.openai.apiKey"),  # even under an unknown key
    ("clean:\n  decontaminate_paths: [{token: sk-value-123}]\n", "clean.decontaminate_paths[0].token"),
])
def test_secret_in_a_yaml_file_is_refused_without_echoing_it(tmp_path: Path, yaml_text: str, key: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: {key}: secrets are read from the environment only (e.g. OPENAI_API_KEY)")
    assert msg.endswith(f"remove '{key}' from the config")
    assert "sk-value-123" not in msg


@pytest.mark.parametrize(("override", "key"), [
    ("backend.api_key=sk-value-123", "backend.api_key"),
    ("secret=sk-value-123", "secret"),
    ("model.Token=sk-value-123", "model.Token"),
    ("backend={api_key: sk-value-123}", "backend.api_key"),
])
def test_secret_in_a_set_override_is_refused(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        build_config(overrides=[override])
    assert f"remove '{key}' from the config" in str(ei.value)
    assert "sk-value-123" not in str(ei.value)


# --------------------------------------------------------------------------------------------
# (b) a real run with credentials in the environment leaves no trace of them
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_environment_secrets_never_reach_the_run_directory_or_the_output(tmp_path: Path) -> None:
    marker = f"lance-test-secret-{uuid.uuid4().hex}"
    env = {**os.environ, "OPENAI_API_KEY": marker, "HF_TOKEN": marker, "ANTHROPIC_API_KEY": marker}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "lance_llm.cli", "run", "configs/tiny.yaml", "--run-dir", str(run_dir),
         "--set", "train.sft.max_steps=1"],
        cwd=ROOT, env=env, capture_output=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    # the run wrote what a run writes, so the scan below covers the real files
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    names = {str(p.relative_to(run_dir)) for p in files}
    assert {"run.json", "config.yaml", "cache.sqlite", "funnel.md"} <= names
    assert any(n.startswith("iter_01/model/") and n.endswith(".json") for n in names)
    needles = (marker.encode(), marker.split("-")[-1].encode(), marker.encode("utf-16-le"))
    for p in files:
        data = p.read_bytes()
        for needle in needles:
            assert needle not in data, f"the secret leaked into {p}"
    for stream in (proc.stdout, proc.stderr):
        for needle in needles:
            assert needle not in stream


# --------------------------------------------------------------------------------------------
# (c) remote code is off unless configured
# --------------------------------------------------------------------------------------------

def test_trust_remote_code_is_off_by_default() -> None:
    assert build_config().model.trust_remote_code is False
    assert load_config(ROOT / "configs" / "default.yaml").model.trust_remote_code is False
    assert load_config(ROOT / "configs" / "tiny.yaml").model.trust_remote_code is False
    from lance_llm.backends.hf import HFBackend

    assert inspect.signature(HFBackend.__init__).parameters["trust_remote_code"].default is False


def test_no_source_file_turns_remote_code_on() -> None:
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sorted(SRC.rglob("*.py"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1)
            if re.search(r"trust_remote_code\s*=\s*True", line)]
    assert hits == []
    # the setting reaches the models only from the config: each backend's builder, and the trainer
    # through the training stages (default False), so inference and training agree
    for name in ("backends/hf.py", "backends/vllm.py"):
        assert "trust_remote_code=cfg.model.trust_remote_code" in (SRC / name).read_text(encoding="utf-8")
    stages = (SRC / "stages" / "train.py").read_text(encoding="utf-8")
    assert stages.count(" cfg.model.trust_remote_code)") == 3  # M_0's SFT, SFT, DPO
    import inspect

    from lance_llm.stages import train

    for fn in (train.train_sft, train.train_dpo):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False
