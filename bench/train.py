"""SFT and DPO training throughput: lance's trainer arguments against TRL's defaults, same data.

    python -m bench.train --steps 3 --batch 4

Data: Self-Instruct seed tasks in TRL's conversational prompt-completion format (SFT) and as
preference pairs, chosen = the task's answer, rejected = another task's answer (DPO). Both arms
see the same examples (same seed, steps and batch size; DPO: steps x batch pairs, each once);
TRL's in its shuffled order, lance's DPO in length-grouped batches. Lance's arms are its trainer
classes (stages.train.sft_trainer_class / dpo_trainer_class: the LM head scores only labelled
positions) with its arguments (sft_args / dpo_args).
Each arm is timed from building the trainer to the end of `train()`; model loading is excluded.
Tokens = the non-pad tokens TRL logs (`num_tokens`); lance packs several SFT examples per row, so
its steps hold more. First and last losses are reported to show the two arms train the same thing.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
from pathlib import Path

import torch

from .common import Timer, command, model_path, seed_pairs

GOALS = {"sft": ">= 1.8x", "dpo": ">= 1.5x"}  # issue 4 (SFT) and issue 14 (DPO)


def datasets(n: int, seed: int = 0):
    from datasets import Dataset

    pairs = seed_pairs()
    rng = random.Random(seed)
    rng.shuffle(pairs)
    pairs = pairs[:n]
    user = [[{"role": "user", "content": p["instruction"]}] for p in pairs]
    sft = Dataset.from_list([{"prompt": u, "completion": [{"role": "assistant", "content": p["response"]}]}
                             for u, p in zip(user, pairs, strict=True)])
    dpo = Dataset.from_list([{"prompt": u, "chosen": [{"role": "assistant", "content": p["response"]}],
                              "rejected": [{"role": "assistant", "content": pairs[(i + 1) % n]["response"]}]}
                             for i, (u, p) in enumerate(zip(user, pairs, strict=True))])
    return sft, dpo


def one(kind: str, arm: str, path: Path, ds, steps: int, batch: int, out: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from lance_llm.config import StepConfig, TrainConfig
    from lance_llm.stages import train as lt

    tok = AutoTokenizer.from_pretrained(str(path))
    load = lambda: AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)  # noqa: E731
    model = load()
    ref = load() if kind == "dpo" else None
    common = {"output_dir": str(out), "max_steps": steps, "per_device_train_batch_size": batch, "seed": 0,
              "report_to": "none", "save_strategy": "no", "logging_steps": 1, "use_cpu": not torch.cuda.is_available()}
    if arm == "trl":  # TRL's defaults for everything else
        args = SFTConfig(**common) if kind == "sft" else DPOConfig(**common)
    else:
        step = StepConfig(max_steps=steps, batch_size=batch, learning_rate=2e-5 if kind == "sft" else 1e-6)
        cfg = TrainConfig(sft=step, dpo=step)
        args = lt.sft_args(cfg, out, 0) if kind == "sft" else lt.dpo_args(cfg, out, 0)
        args.learning_rate = SFTConfig.learning_rate if kind == "sft" else DPOConfig.learning_rate
    with Timer() as t:
        if kind == "sft":
            cls = SFTTrainer if arm == "trl" else lt.sft_trainer_class()
            trainer = cls(model=model, args=args, train_dataset=ds, processing_class=tok)
        else:
            cls = DPOTrainer if arm == "trl" else lt.dpo_trainer_class()
            trainer = cls(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    logged = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": t.seconds, "tokens": int(logged[-1]) if logged else None,
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "gradient_checkpointing": args.gradient_checkpointing, "bf16": args.bf16,
            "padding_free": getattr(args, "padding_free", False),
            "precompute_ref_log_probs": getattr(args, "precompute_ref_log_probs", False)}


def run(args: argparse.Namespace) -> list[dict]:
    path = model_path()
    n = args.steps * args.batch
    sft, _ = datasets(3 * n)  # packed rows hold several examples: enough data for `steps` without repeats
    _, dpo = datasets(n)
    tmp = Path(tempfile.mkdtemp(prefix="lance-bench-train-"))
    rows = []
    for kind, ds in (("sft", sft), ("dpo", dpo)):
        res = {arm: one(kind, arm, path, ds, args.steps, args.batch, tmp / f"{kind}-{arm}") for arm in ("trl", "ours")}
        # the real (non-pad) tokens TRL logs; lance's SFT packs more of them into a step
        tokens = {arm: r["tokens"] for arm, r in res.items()}
        tps = {arm: tokens[arm] / r["seconds"] for arm, r in res.items()}
        ratio = tps["ours"] / tps["trl"]
        rows.append({
            "metric": f"{kind.upper()} training tokens/s", "unit": "tokens/s", "ours": round(tps["ours"], 1),
            "baseline": round(tps["trl"], 1), "baseline_name": "TRL defaults, same data, batch and steps",
            "ratio": round(ratio, 2), "goal": GOALS[kind], "met": ratio >= float(GOALS[kind][3:-1]),
            "details": {"tokens": tokens, **{f"{arm}_{k}": (round(v, 4) if isinstance(v, float) else v)
                                                           for arm, r in res.items() for k, v in r.items()}},
            "command": command("bench.train", [f"--steps {args.steps} --batch {args.batch}"]),
        })
    shutil.rmtree(tmp, ignore_errors=True)
    return rows


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)


if __name__ == "__main__":
    import json

    ap = argparse.ArgumentParser(description=__doc__)
    add_args(ap)
    print(json.dumps(run(ap.parse_args()), indent=1))
