"""Run an SFT or DPO training in this process, or in several through `accelerate launch`.

    res = launch.train("sft", model_path, "iter_01/sft.jsonl", out, cfg.train, seed=0)

`train.launcher: inprocess` (the default) calls lance_llm.stages.train directly. With
`train.launcher: accelerate` the job is written to a JSON file beside the output and this module
is started as the worker in every process:

    accelerate launch --config_file configs/accelerate/ddp.yaml [--num_processes N] \\
        -m lance_llm.launch iter_01/.model_sft.job.json

Accelerate (the launcher TRL documents) sets up the process group; the TRL trainers then run DDP,
FSDP or DeepSpeed as the config file says. Rank 0 saves the checkpoint (stages.train._save) and
writes the result beside the job; this process reads it back as a TrainResult.

Resume works as in-process: the checkpoint appears atomically and only when complete, the job and
result files are hidden (`.NAME.*`) so the loop clears them with a killed attempt's leftovers, and
workers exit when the launching process dies (they watch its pid), so a killed run leaves no
trainer running that could write into the directory a resumed run is using.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .config import ConfigError, TrainConfig, _build

KINDS = ("sft", "dpo")
SHARDED = ("FSDP", "DEEPSPEED")  # accelerate's distributed_type values that shard the weights


def train(kind: str, model_path: Path, data: str | Path, out: Path, cfg: TrainConfig, seed: int,
          trust_remote_code: bool = False):
    """Train `kind` ("sft" or "dpo") as `cfg.launcher` says; returns stages.train.TrainResult."""
    if kind not in KINDS:
        raise ValueError(f"unknown training kind {kind!r}")
    if cfg.launcher == "accelerate":
        return _launch(kind, model_path, data, out, cfg, seed, trust_remote_code)
    from .stages import train as stage

    fn = stage.train_sft if kind == "sft" else stage.train_dpo
    return fn(model_path, data, out, cfg, seed, trust_remote_code)


def accelerate_command(cfg: TrainConfig, job: Path) -> list[str]:
    """The launch command line (the same `python` as this process, so the same environment)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if cfg.accelerate_config:
        cmd += ["--config_file", cfg.accelerate_config]
    if cfg.num_processes is not None:
        cmd += ["--num_processes", str(cfg.num_processes)]
    return [*cmd, "-m", "lance_llm.launch", str(job)]


def read_accelerate_config(path: str | Path) -> dict[str, Any]:
    """Parse an accelerate config file with accelerate's own loader (so a bad key fails here)."""
    from accelerate.commands.config.config_args import load_config_from_file

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"train.accelerate_config: file not found: {p}")
    try:
        loaded = load_config_from_file(str(p))
    except Exception as e:  # accelerate raises TypeError/ValueError/YAMLError for bad files
        raise ConfigError(f"train.accelerate_config: {p}: not a valid accelerate config: {e}") from e
    return loaded.to_dict()


def _check(cfg: TrainConfig) -> dict[str, Any]:
    from accelerate.commands.config import default_config_file

    path = cfg.accelerate_config or (default_config_file if Path(default_config_file).is_file() else None)
    conf = read_accelerate_config(path) if path else {}
    if not path and (cfg.num_processes or 1) > 1 and not _has_cuda():
        # without a config, accelerate launch starts several processes only for several GPUs
        raise ConfigError("train.launcher=accelerate with several processes on a machine without GPUs needs "
                          "train.accelerate_config (e.g. configs/accelerate/cpu_gloo.yaml)")
    kind = str(conf.get("distributed_type", "NO")).upper().rsplit(".", 1)[-1]
    if cfg.method == "lora" and kind in SHARDED:
        # merging adapters needs the whole base on one process; LoRA states are small, DDP suffices
        raise ConfigError(f"train.method=lora with {kind} ({cfg.accelerate_config}) is not supported: "
                          "use a DDP config (configs/accelerate/ddp.yaml) for LoRA")
    return conf


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _threads(cfg: TrainConfig, conf: dict[str, Any]) -> int:
    n = cfg.num_processes or int(conf.get("num_processes") or 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, n))


def _launch(kind: str, model_path: Path, data: str | Path, out: Path, cfg: TrainConfig, seed: int,
            trust_remote_code: bool):
    from .records import atomic_write_text
    from .stages.train import TrainResult

    conf = _check(cfg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    job = out.parent / f".{out.name}.job.json"
    result = out.parent / f".{out.name}.result.json"
    result.unlink(missing_ok=True)
    spec = {"kind": kind, "model_path": str(model_path), "data": str(data), "out": str(out),
            "train": dataclasses.asdict(cfg), "seed": seed, "trust_remote_code": trust_remote_code,
            "result": str(result)}
    atomic_write_text(job, json.dumps(spec, indent=1))
    env = dict(os.environ, LANCE_PARENT_PID=str(os.getpid()))
    # CPU: one process per core share, or N processes x all cores fight over the same cores
    env.setdefault("OMP_NUM_THREADS", str(_threads(cfg, conf)))
    cmd = accelerate_command(cfg, job)
    # its own process group: an interrupt here stops every rank, not just the launcher
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        rc = proc.wait()
    except BaseException:
        stop_group(proc)
        raise
    if rc != 0 or not result.exists():
        raise RuntimeError(f"{kind} training under accelerate failed (exit code {rc}); command: {' '.join(cmd)}")
    res = json.loads(result.read_text())
    job.unlink(missing_ok=True)
    result.unlink(missing_ok=True)
    return TrainResult(Path(res["path"]), res["steps"], res["examples"], res["loss"], res["seconds"],
                       res.get("too_long", 0), res.get("bf16"))


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the process group `proc` leads (started with start_new_session=True), SIGKILL
    after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _watch_parent(pid: int) -> None:
    """Exit when the launching `lance` process is gone (killed with SIGKILL, it cannot stop us)."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # alive, owned by someone else
            pass


def worker(job_path: str | Path) -> None:
    """One rank: read the job, run the TRL trainer (accelerate set up the process group), and on
    rank 0 write the result file the launcher reads."""
    spec = json.loads(Path(job_path).read_text())
    if parent := os.environ.get("LANCE_PARENT_PID"):
        threading.Thread(target=_watch_parent, args=(int(parent),), daemon=True).start()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .stages import train as stage

    cfg = _build(TrainConfig, spec["train"], "train.")
    fn = stage.train_sft if spec["kind"] == "sft" else stage.train_dpo
    res = fn(Path(spec["model_path"]), spec["data"], Path(spec["out"]), cfg, spec["seed"], spec["trust_remote_code"])
    if int(os.environ.get("RANK", "0")) == 0:
        from .records import atomic_write_text

        atomic_write_text(Path(spec["result"]), json.dumps({**res.to_dict(), "seconds": res.seconds}))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: accelerate launch [...] -m lance_llm.launch JOB.json", file=sys.stderr)
        return 2
    worker(args[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

