"""Checkpoints anyone can rebuild: a LoRA run's adapters, in lineage order, beside the base model.

    lineage = export(run_dir, dest)                 # dest/lineage.json + dest/adapters/...
    rebuild(dest / "lineage.json", "M_2", out_dir)  # base + adapters merged in order, fingerprint checked

    python -m lance_llm.lineage export runs/experiment-qwen results/experiment-qwen/checkpoints
    python -m lance_llm.lineage rebuild results/experiment-qwen/checkpoints/lineage.json M_2 --out /tmp/m2

With `train.method: lora` every training step saves its adapter in the checkpoint it writes
(`CHECKPOINT/adapter/`, stages/train.py) besides the merged weights. The checkpoint of iteration t
is the base with these merged in order: M_0's SFT adapter (when `train.m0_sft`), then for each
iteration its SFT adapter and its DPO adapter (none when the iteration had no preference pair).
A step merges in float32, as training saved it. `lineage.json` records the base (source and
fingerprint), each checkpoint's adapters and its fingerprint (models.fingerprint: weights + chat
template). `rebuild` refuses a base or result whose fingerprint differs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from . import models
from .records import atomic_dir, atomic_write_text
from .rundir import RunDir
from .stages.train import ADAPTER

VERSION = 1


class LineageError(RuntimeError):
    pass


def _steps(rd: RunDir, t: int) -> list[Path]:
    """The checkpoint folders whose adapters iteration t trained, in order."""
    if t == 0:
        return [rd.path(0, "model")]
    return [rd.path(t, "model_sft"), rd.path(t, "model")]


def export(run_dir: str | Path, dest: str | Path) -> dict[str, Any]:
    """Copy every finished checkpoint's adapters to DEST/adapters/iter_NN/STEP/ and write
    DEST/lineage.json. Fails on a run trained without LoRA (there are no adapters to keep)."""
    rd, dest = RunDir(run_dir), Path(dest)
    run = json.loads((rd.root / "run.json").read_text(encoding="utf-8"))
    base = run.get("base_model", {})  # ResolvedModel.to_dict()
    checkpoints: dict[str, Any] = {}
    chain: list[str] = []
    for t, ckpt in rd.finished_models():
        for step in _steps(rd, t):
            adapter = step / ADAPTER
            if step.name == "model" and t > 0 and not adapter.exists():
                continue  # no preference pair: M_t is the SFT model, copied
            if not (adapter / "adapter_config.json").exists():
                raise LineageError(f"{step}: no LoRA adapter (train.method must be lora to rebuild from adapters)")
            rel = Path("adapters") / f"iter_{t:02d}" / step.name
            shutil.copytree(adapter, dest / rel, dirs_exist_ok=True)
            chain.append(rel.as_posix())
        checkpoints[f"M_{t}"] = {"fingerprint": models.fingerprint(ckpt), "adapters": list(chain)}
    doc = {"version": VERSION, "run": str(rd.root), "base": {"source": base.get("source"),
           "fingerprint": base.get("fingerprint")}, "checkpoints": checkpoints}
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest / "lineage.json", json.dumps(doc, indent=1) + "\n")
    return doc


def merge_adapters(start: Path, adapters: list[Path]) -> Any:
    """The checkpoint START with each LoRA adapter merged in, in order, in float32 (as training
    merged and saved them: stages/train.py)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(start), dtype=torch.float32, use_safetensors=True)
    for adapter in adapters:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return model


def rebuild(lineage_json: str | Path, label: str, out: str | Path, cache_dir: str | None = None) -> Path:
    """Checkpoint `label` of `lineage_json` rebuilt in `out` (atomically), its fingerprint checked."""
    from transformers import AutoTokenizer

    path = Path(lineage_json)
    doc = json.loads(path.read_text(encoding="utf-8"))
    if label not in doc["checkpoints"]:
        raise LineageError(f"{path}: no checkpoint {label!r}; it has {', '.join(doc['checkpoints'])}")
    entry = doc["checkpoints"][label]
    base = models.resolve(str(doc["base"]["source"]), cache_dir)
    if doc["base"]["fingerprint"] and base.fingerprint != doc["base"]["fingerprint"]:
        raise LineageError(f"base {doc['base']['source']}: fingerprint {base.fingerprint}, the lineage was trained "
                           f"on {doc['base']['fingerprint']}")
    model = merge_adapters(base.path, [path.parent / rel for rel in entry["adapters"]])
    out = Path(out)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(base.path)).save_pretrained(tmp)
        got = models.fingerprint(tmp)
        if got != entry["fingerprint"]:
            raise LineageError(f"{label} rebuilt with fingerprint {got}, recorded {entry['fingerprint']}")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lance_llm.lineage", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="copy a LoRA run's adapters and write lineage.json")
    e.add_argument("run_dir")
    e.add_argument("dest")
    r = sub.add_parser("rebuild", help="base + adapters merged in order; fingerprint checked")
    r.add_argument("lineage_json")
    r.add_argument("label", help="M_0, M_1, ...")
    r.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "export":
            doc = export(args.run_dir, args.dest)
            print(f"{args.dest}/lineage.json: {', '.join(doc['checkpoints'])}")
        else:
            print(rebuild(args.lineage_json, args.label, args.out))
    except (LineageError, models.ModelError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
