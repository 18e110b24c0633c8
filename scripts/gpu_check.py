"""GPU check: lance's generation and one SFT and one DPO step on CUDA, with a random-weight model.

    bash scripts/gpu_check.sh [OUT_DIR]                              # a CUDA machine, < 10 min
    python scripts/gpu_check.py --shape tiny --out /tmp/gpu-check    # same code on a CPU, seconds

No weight file travels: the model is built from a config with random weights (`--shape 7b`: the
Llama-2-7B body, 32 layers x 4096, 11008 MLP, 32 heads; a byte-level tokenizer of 259 tokens, so
6.5 B parameters) and saved as a checkpoint once. Then, each part timed on its own and written to
OUT/gpu_check.json as soon as it is done (a timeout keeps the parts before it):
- generation through HFBackend.generate (the loop's response stage shape: `--prompts` chats x
  n=4, T=0.7, top-p 0.9, `--max-new` tokens) and, where vLLM imports, through VLLMBackend;
- one SFT and one DPO run of `--steps` steps with lance's own trainer arguments
  (stages.train.sft_args / dpo_args, LoRA r=16 on all linear layers: how a 7B model is trained
  on one GPU), seconds per step after the first, trained tokens per second, peak GPU memory.
The text is noise (random weights): this measures speed and memory, not quality.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
}


def peak_gb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def chats(k: int) -> list[str]:
    rng = random.Random(0)
    words = ["model", "data", "answer", "question", "write", "explain", "list", "short", "story", "code", "plan"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(8, 60))) for _ in range(k)]


def generation(kind: str, path: Path, prompts: int, max_new: int) -> dict:
    from lance_llm.backends.base import GenerateRequest, Sampling

    if kind == "hf":
        from lance_llm.backends.hf import HFBackend

        backend = HFBackend(path, "random", batch_size=32)
    else:
        from lance_llm.backends.vllm import VLLMBackend
        from lance_llm.config import VLLMBackendConfig

        backend = VLLMBackend(path, "random", VLLMBackendConfig(sleep_mode=False))
    reqs = [GenerateRequest((("user", q),), Sampling(0.7, 0.9, max_new, 4, i)) for i, q in enumerate(chats(prompts))]
    backend.generate(reqs[:2])  # warm-up (kernels, graphs)
    reset_peak()
    before = backend.tokens["generated"]
    t0 = time.perf_counter()
    backend.generate(reqs)
    seconds = time.perf_counter() - t0
    tokens = backend.tokens["generated"] - before
    backend.close()
    return {"rows": 4 * prompts, "max_new_tokens": max_new, "new_tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), "peak_gpu_gb": peak_gb()}


def training(kind: str, path: Path, steps: int, batch: int, work: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from lance_llm.config import LoraConfig, StepConfig, TrainConfig
    from lance_llm.stages import train as lt

    texts = chats(4 * steps * batch)
    user = [[{"role": "user", "content": t}] for t in texts]
    if kind == "sft":
        ds = Dataset.from_list([{"prompt": u, "completion": [{"role": "assistant", "content": texts[-i - 1]}]}
                                for i, u in enumerate(user)])
    else:
        ds = Dataset.from_list([{"prompt": u, "chosen": [{"role": "assistant", "content": texts[-i - 1]}],
                                 "rejected": [{"role": "assistant", "content": texts[i - 2]}]}
                                for i, u in enumerate(user)])
    step = StepConfig(max_steps=steps, batch_size=batch, max_length=512, learning_rate=1e-5)
    cfg = TrainConfig(method="lora", sft=step, dpo=step, lora=LoraConfig())
    args = (lt.sft_args if kind == "sft" else lt.dpo_args)(cfg, work / kind, 0)
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            times.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            times[-1] = time.perf_counter() - times[-1]

    reset_peak()
    trainer_cls = lt.sft_trainer_class() if kind == "sft" else lt.dpo_trainer_class()
    trainer = trainer_cls(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lt._peft(cfg),
                          callbacks=[Clock()])
    trainer.train()
    logged = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    after_first = times[1:] or times
    per_step = sum(after_first) / len(after_first)
    tokens_per_step = (logged[-1] / len(times)) if logged else None
    return {"steps": len(times), "batch": batch, "lora_r": cfg.lora.r, "bf16": args.bf16,
            "seconds_per_step": round(per_step, 3), "first_step_seconds": round(times[0], 3),
            "tokens_per_s": round(tokens_per_step / per_step, 1) if tokens_per_step else None,
            "peak_gpu_gb": peak_gb()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--out", required=True, help="folder for gpu_check.json")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"shape": args.shape, "cuda": torch.cuda.is_available(), "torch": torch.__version__,
                    "python": platform.python_version(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report["device"] = {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                            "capability": f"{props.major}.{props.minor}"}

    def save() -> None:
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")

    def part(name: str, fn) -> None:
        t0 = time.perf_counter()
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        try:
            report[name] = fn()
        except Exception as e:  # record it and go on: the other parts still measure
            report[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
        report[name]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(f"[gpu_check] {name}: {json.dumps(report[name])[:300]}", file=sys.stderr, flush=True)
        save()

    from bench_backends import random_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random"
        part("checkpoint", lambda: {"path": str(random_checkpoint(path, device="cuda" if report["cuda"] else "cpu",
                                                                  **SHAPES[args.shape])),
                                    "params": _params(path)})
        part("generate_hf", lambda: generation("hf", path, args.prompts, args.max_new))
        try:
            import vllm  # noqa: F401

            part("generate_vllm", lambda: generation("vllm", path, args.prompts, args.max_new))
        except ImportError:
            report["generate_vllm"] = {"skipped": "vllm is not installed"}
        part("sft", lambda: training("sft", path, args.steps, args.batch, Path(tmp)))
        part("dpo", lambda: training("dpo", path, args.steps, args.batch, Path(tmp)))
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save()
    failed = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    print(f"[gpu_check] wrote {out / 'gpu_check.json'}" + (f"; failed: {', '.join(failed)}" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0


def _params(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in path.glob("*.safetensors"):
        with safe_open(str(f), "pt") as sf:
            total += sum(math.prod(sf.get_slice(k).get_shape()) for k in sf.keys())  # noqa: SIM118 - not iterable
    return total


if __name__ == "__main__":
    sys.exit(main())
