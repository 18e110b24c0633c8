"""In-process transformers backend: batched generation and continuation scoring on CPU or GPU.

    backend = HFBackend("/path/to/checkpoint", fingerprint="...", batch_size=8)
    backend.generate([GenerateRequest(messages=(("user", "Hi"),), sampling=Sampling(n=2))])

Why it is shaped this way:
- Generation is decode.py's loop (batching, seeded per-row sampling, finished rows leaving the
  batch) over transformers' model + KV cache: prompts are left-padded and prefilled once, each
  one's cache copied to its `n` sample rows (measured in bench/gen.py).
- bf16 when the CPU has native bf16 (avx512_bf16/amx) or on CUDA: about 1.6x faster here.
- `score` reads the log-probability of each continuation after the rendered chat + assistant
  prefix. Continuations that share tokens share one forward pass: "0".."9" and "10" after
  "score: " need a single sequence (prefix + "1"), whose last two positions give every digit.
"""

from __future__ import annotations

import copy
import functools
import inspect
import itertools
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from . import BackendSpec, register
from .base import (
    Backend,
    ChatTemplate,
    GenerateRequest,
    ScoreRequest,
    common_prefix,
    reduce_logprobs,
    score_targets,
)
from .decode import DECODE_VERSION, generate_batched

log = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(name: str) -> torch.dtype:
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


@functools.cache
def _decode_kernels() -> None:
    """Register the `lance_decode` attention: transformers' sdpa, except for one query token (a
    decode step), where the query heads sharing a key head become the rows of two plain matrix
    products. Measured on SmolLM2, 32 rows, 150 decode steps, interleaved runs in one process:
    50.8 against 56.7 ms per step (median of 5); sdpa's CPU kernel is built for long queries."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        b, heads, q_len, dim = query.shape
        if q_len != 1 or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, **kwargs)
        kv_heads = key.shape[1]
        # the query heads that share a key head become rows of one matrix product (GQA packed)
        scores = torch.matmul(query.reshape(b, kv_heads, heads // kv_heads, dim), key.transpose(-1, -2))
        scores = scores.float() * (dim**-0.5 if scaling is None else scaling)
        if attention_mask is not None:  # (b, 1, 1, keys): bool = may attend, else additive
            scores = (scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool
                      else scores + attention_mask.float())
        out = torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), value)
        return out.reshape(b, heads, 1, dim).transpose(1, 2), None

    AttentionInterface.register("lance_decode", attention)
    AttentionMaskInterface.register("lance_decode", sdpa_mask)


class _Rows:
    """A batch of sample rows over a transformers KV cache (decode.Rows)."""

    def __init__(self, backend: HFBackend, cache, mask: torch.Tensor, last: torch.Tensor) -> None:
        self.b, self.cache, self.mask, self.last = backend, cache, mask, last

    def advance(self, tokens: list[int], keep: list[int] | None) -> torch.Tensor:
        dev = self.b.device
        if keep is not None:  # finished rows leave the batch: no compute is spent on them afterwards
            idx = torch.tensor(keep, device=dev)
            self.cache.batch_select_indices(idx)
            self.mask, self.last = self.mask[idx], self.last[idx]
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)
        self.last = self.last + 1
        return self.b._step(input_ids=torch.tensor(tokens, device=dev)[:, None], attention_mask=self.mask,
                            position_ids=self.last[:, None], **{self.b._cache_kw: self.cache},
                            use_cache=True).logits[:, -1]

    def close(self) -> None:
        self.cache = None


class HFBackend(ChatTemplate, Backend):
    def __init__(
        self,
        path: str | Path,
        fingerprint: str,
        batch_size: int = 8,
        generate_rows: int | None = None,
        dtype: str = "auto",
        threads: int | None = None,
        trust_remote_code: bool = False,
        compile: bool = False,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.fingerprint = fingerprint
        self.tokens = {"prompt": 0, "generated": 0}
        self.batch_size = batch_size
        # decode steps cost little more at 32 rows than at 8 on a CPU: the weights are read once per step
        self.generate_rows = generate_rows or 4 * batch_size
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = pick_dtype(dtype)
        self.tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=self.dtype, trust_remote_code=trust_remote_code, use_safetensors=True
        ).to(self.device)
        self.model.eval()
        if self.model.config._attn_implementation == "sdpa":  # the default; eager/flash stay as asked
            _decode_kernels()
            self.model.set_attn_implementation("lance_decode")
        # the decode step (one token per row) as a compiled graph, with dynamic batch and length so
        # that rows leaving the batch and a growing cache do not recompile; prefill stays eager
        self._step = torch.compile(self.model, dynamic=True) if compile else self.model
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.eos_ids.add(self.tok.eos_token_id)
        # the KV cache argument (and output field) is `cache` in recent transformers 5.x, which
        # warns on `past_key_values` and drops it in 5.40 (inside our range); older 5.x only know that
        self._cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        log.info("loaded %s (%s, %s)", path, self.dtype, self.device)

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        pad = self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
        return ids, mask

    # -- generation ------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[str]]:
        """`n` samples per request, decoded in batches of up to `generate_rows` rows (decode.py)."""
        prompts = [self._ids(self.render(r.messages) + r.prefix) for r in requests]
        return generate_batched(requests, prompts, self.generate_rows, self.eos_ids, self._open_rows,
                                lambda t: self.tok.decode(t, skip_special_tokens=True), self.tokens)

    def _open_rows(self, prompts: list[list[int]], counts: list[int]) -> tuple[_Rows, torch.Tensor]:
        """Prefill the left-padded prompts once, then copy each one's KV cache to its `counts[k]` rows."""
        from transformers import DynamicCache

        ids, mask = self._left_pad(prompts)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, **{self._cache_kw: cache},
                            use_cache=True, logits_to_keep=1).logits[:, -1]
        rep = torch.tensor([k for k, c in enumerate(counts) for _ in range(c)], device=self.device)
        cache.batch_select_indices(rep)
        return _Rows(self, cache, mask[rep], pos[rep, -1]), logits[rep]

    # -- scoring ---------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        # For each continuation: its full token sequence and where its own tokens start.
        targets: list[list[tuple[list[int], int]]] = []
        inputs: list[list[int]] = []  # distinct forward inputs, longest first after pruning
        for req in requests:
            conts = score_targets(req, self.render(req.messages) + req.prefix, self._ids,
                                  self.end_of_turn if req.end_of_turn else "")
            inputs.extend(full[:-1] for full, _ in conts)
            targets.append(conts)
        kept, serving = covering_rows(inputs)
        # the tokens each kept row must give at each position
        needs: list[dict[int, set[int]]] = [{} for _ in kept]
        plan: list[list[tuple[int, list[int], int]]] = []
        rows_of = iter(serving)
        for req, conts in zip(requests, targets, strict=True):
            rows = []
            for full, start in conts:
                row = next(rows_of)
                for p in range(start, len(full)):
                    needs[row].setdefault(p - 1, set()).add(CERTAINTY if req.certainty else full[p])
                rows.append((row, full, start))
            plan.append(rows)
        logps = self.logprobs_at(kept, needs)
        return [
            [reduce_logprobs([logps[row][p - 1][CERTAINTY if req.certainty else full[p]]
                              for p in range(start, len(full))], req.per_token or req.certainty)
             for row, full, start in rows]
            for req, rows in zip(requests, plan, strict=True)
        ]

    @torch.inference_mode()
    def logprobs_at(self, seqs: list[list[int]], needs: list[dict[int, set[int]]]
                     ) -> list[dict[int, dict[int, float]]]:
        """For each sequence, {position: {token: log P(token | the sequence up to position)}} for
        the (position, token) pairs in `needs`.

        Only the final positions are needed (the continuation), so logits are computed for those
        alone, and only the needed tokens' log-probabilities are kept: whole-vocabulary rows
        would cost GBs for long continuations (the likelihood judge scores whole responses).
        A token prefix shared by all sequences (chat template + system prompt + rubric) is run
        once and its KV cache reused; sequences sharing a longer prefix among themselves (the
        per-criterion questions about one response) reuse that one too. See `_prefix_plan`.
        """
        out: list[dict[int, dict[int, float]]] = [{} for _ in seqs]
        earliest = [min(n) for n in needs]
        shared, clusters = _prefix_plan(seqs, earliest, SHARED_MIN)
        if shared == 0:
            self._run(None, 0, list(range(len(seqs))), seqs, needs, out)
            return out
        base = self._extend(None, seqs[0][:shared])
        singles: list[int] = []
        for plen, members in clusters:
            if plen == shared:
                singles.extend(members)
            else:
                self._run(self._extend(base, seqs[members[0]][shared:plen]), plen, members, seqs, needs, out)
        self._run(base, shared, singles, seqs, needs, out)
        return out

    def _extend(self, cache, ids: list[int]):
        """The KV cache after `ids` (batch 1), starting from `cache` (not modified)."""
        past = 0 if cache is None else cache.get_seq_length()
        x = torch.tensor([ids], device=self.device)
        pos = torch.arange(past, past + len(ids), device=self.device)[None]
        mask = torch.ones(1, past + len(ids), dtype=torch.long, device=self.device)
        self.tokens["prompt"] += len(ids)
        res = self.model(input_ids=x, attention_mask=mask, position_ids=pos,
                         **{self._cache_kw: copy.deepcopy(cache)}, use_cache=True, logits_to_keep=1)
        return res[self._cache_kw]

    def _run(self, cache, plen: int, members: list[int], seqs: list[list[int]], needs: list[dict[int, set[int]]],
             out: list[dict[int, dict[int, float]]]) -> None:
        """Forward the suffixes `seqs[i][plen:]` after the shared KV `cache` (None: no prefix) in
        length-sorted batches; left padding sits between the prefix and each suffix, masked."""
        order = sorted(members, key=lambda i: len(seqs[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            ids, smask = self._left_pad([seqs[i][plen:] for i in batch])
            self.tokens["prompt"] += int(smask.sum())
            keep = max(len(seqs[i]) - min(needs[i]) for i in batch)
            pos = plen + (smask.cumsum(-1) - 1).clamp(min=0)
            kwargs: dict = {}
            if cache is not None:
                kv = copy.deepcopy(cache)
                if len(batch) > 1:
                    kv.batch_repeat_interleave(len(batch))
                ones = torch.ones(len(batch), plen, dtype=smask.dtype, device=self.device)
                smask = torch.cat([ones, smask], dim=1)
                kwargs = {self._cache_kw: kv, "use_cache": True}
            logits = self.model(input_ids=ids, attention_mask=smask, position_ids=pos, logits_to_keep=keep,
                                **kwargs).logits
            norm = torch.logsumexp(logits.float(), dim=-1)  # (batch, keep)
            log_v = math.log(logits.shape[-1])
            for b, i in enumerate(batch):
                n = len(seqs[i])
                for p, toks in needs[i].items():
                    at = keep - (n - p)
                    out[i][p] = {t: _needed(logits[b, at], norm[b, at], t, log_v) for t in toks}

    def close(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# a shared prefix shorter than this is not worth a separate forward pass and cache copies
SHARED_MIN = 32
CERTAINTY = -1  # in a position's needed "tokens": its self-certainty instead of a log-probability
ARGMAX = -2  # ... or the most likely token's id (lm-eval's is_greedy)


def covering_rows(inputs: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[int]]:
    """The forward inputs that cover `inputs`, and which one serves each input: an input that is
    a prefix of another (or equal to it) is served by the longer one's logits."""
    kept: list[tuple[int, ...]] = []
    for u in sorted({tuple(x) for x in inputs}, key=len, reverse=True):
        if not any(k[: len(u)] == u for k in kept):
            kept.append(u)
    serving = [next(i for i, k in enumerate(kept) if k[: len(x)] == tuple(x)) for x in inputs]
    return [list(k) for k in kept], serving


def _needed(row: torch.Tensor, lse: torch.Tensor, token: int, log_v: float) -> float:
    """One needed value at one position from its logits `row` (log-sum-exp `lse`): a token's
    log-probability, CERTAINTY's KL(uniform || p) = lse - mean logit - log V, or ARGMAX's token id."""
    if token == CERTAINTY:
        return float(lse - row.float().mean() - log_v)
    if token == ARGMAX:
        return float(row.argmax())
    return float(row[token].float() - lse)


def _prefix_plan(seqs: list[list[int]], earliest: list[int], min_len: int) -> tuple[int, list[tuple[int, list[int]]]]:
    """(length of the prefix all sequences share, clusters): sequences adjacent in sorted order
    that share at least `min_len` more tokens form a cluster [(its shared length, members)];
    the rest are clusters at the global length. A prefix never reaches a position whose logits
    are needed (`earliest`), so each sequence keeps at least its scored tokens as suffix."""
    if len(seqs) < 2:
        return 0, []
    cap = min(earliest)
    shared = min(cap, min(common_prefix(seqs[0], s) for s in seqs[1:]))
    if shared < min_len:
        return 0, []
    order = sorted(range(len(seqs)), key=lambda i: seqs[i])
    clusters: list[tuple[int, list[int]]] = []
    members, plen = [order[0]], len(seqs[order[0]])
    for prev, cur in itertools.pairwise(order):
        common = min(common_prefix(seqs[prev], seqs[cur]), earliest[prev], earliest[cur], plen)
        if common - shared >= min_len:
            members.append(cur)
            plen = common
        else:
            clusters.append((plen if len(members) > 1 else shared, members))
            members, plen = [cur], len(seqs[cur])
    clusters.append((plen if len(members) > 1 else shared, members))
    return shared, clusters

def _build(cfg, path: Path, fingerprint: str) -> HFBackend:
    return HFBackend(path, fingerprint, batch_size=cfg.backend.batch_size, dtype=cfg.model.dtype,
                     threads=cfg.backend.hf.threads, trust_remote_code=cfg.model.trust_remote_code,
                     compile=cfg.backend.hf.compile)


def _numerics(cfg) -> dict[str, object]:
    # the dtype as resolved here ("auto" is bf16 on a CPU with native bf16, fp32 elsewhere) and the
    # decode loop's version (sampler, decode attention); batch size is left out: every row samples
    # from its own seeded generator (decode.py)
    return {"dtype": str(pick_dtype(cfg.model.dtype)).removeprefix("torch."),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "decode": DECODE_VERSION,
            # compiled kernels round differently; only named when on, so default keys stay put
            **({"compile": True} if cfg.backend.hf.compile else {})}


register(BackendSpec("hf", build=_build, numerics=_numerics))
