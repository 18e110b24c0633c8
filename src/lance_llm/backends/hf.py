"""In-process transformers backend: batched generation and continuation scoring on CPU or GPU.

    backend = HFBackend("/path/to/checkpoint", fingerprint="...", batch_size=8)
    backend.generate([GenerateRequest(messages=(("user", "Hi"),), sampling=Sampling(n=2))])

Why it is shaped this way:
- Generation runs its own short decode loop over transformers' model + KV cache (measured in
  bench/gen.py): requests are sorted by prompt length and packed into batches of up to
  `generate_rows` sample rows (padding stays small; the reference called the engine one item at a
  time); a request's prompt is prefilled once and its cache copied to its `n` rows; a row that
  ends leaves the batch, so short replies stop costing compute; each row samples with its own
  generator seeded from (request seed, sample index), so outputs do not depend on batching.
  Sampling uses transformers' own temperature and top-p warpers.
- bf16 when the CPU has native bf16 (avx512_bf16/amx) or on CUDA: about 1.6x faster here.
- `score` reads the log-probability of each continuation after the rendered chat + assistant
  prefix. Continuations that share tokens share one forward pass: "0".."9" and "10" after
  "score: " need a single sequence (prefix + "1"), whose last two positions give every digit.
"""

from __future__ import annotations

import copy
import hashlib
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
    tidy,
)

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
        """`n` samples per request, decoded in batches of up to `generate_rows` rows.

        Requests with the same sampling settings are sorted by prompt length and packed into batches;
        each request's prompt is prefilled once and its KV cache copied to its `n` sample rows.
        Every row draws from its own generator, seeded from (request seed, sample index), so a
        sample does not depend on which other requests share its batch (up to float rounding).
        """
        out: list[list[str]] = [[] for _ in requests]
        prompts = [self._ids(self.render(r.messages) + r.prefix) for r in requests]
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            s = req.sampling
            groups.setdefault((s.temperature, s.top_p, s.max_new_tokens), []).append(i)
        for (temperature, top_p, max_new), members in groups.items():
            members.sort(key=lambda i: (len(prompts[i]), i))
            # units of work: (request, first sample, sample count), a request split if n > rows
            units = [(i, j, min(self.generate_rows, requests[i].sampling.n - j))
                     for i in members for j in range(0, requests[i].sampling.n, self.generate_rows)]
            batch: list[tuple[int, int, int]] = []
            for unit in [*units, None]:
                if batch and (unit is None or sum(u[2] for u in batch) + unit[2] > self.generate_rows):
                    texts = self._decode([prompts[i] for i, _, _ in batch], [c for _, _, c in batch],
                                         [(requests[i].sampling.seed, j) for i, j, _ in batch],
                                         temperature, top_p, max_new)
                    for (i, _, _), samples in zip(batch, texts, strict=True):
                        out[i].extend(tidy(x, requests[i]) for x in samples)
                    batch = []
                if unit is not None:
                    batch.append(unit)
        return out

    def _decode(self, prompts: list[list[int]], counts: list[int], seeds: list[tuple[int, int]],
                temperature: float, top_p: float, max_new: int) -> list[list[str]]:
        """Sample `counts[k]` completions of `prompts[k]`; `seeds[k]` = (request seed, first sample)."""
        from transformers import DynamicCache

        ids, mask = self._left_pad(prompts)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, **{self._cache_kw: cache},
                            use_cache=True, logits_to_keep=1).logits[:, -1]
        self.tokens["prompt"] += int(mask.sum())
        # share each prompt's prefill across its sample rows
        rep = torch.tensor([k for k, c in enumerate(counts) for _ in range(c)], device=self.device)
        owner = [(k, seeds[k][1] + j) for k, c in enumerate(counts) for j in range(c)]  # row -> (prompt, sample)
        cache.batch_select_indices(rep)
        logits, mask, last = logits[rep], mask[rep], pos[rep, -1]
        gens = [torch.Generator().manual_seed(_row_seed(seeds[k][0], j)) for k, j in owner]
        warp = _warpers(temperature, top_p)
        alive = list(range(len(owner)))  # row of the batch -> row of `owner`
        new: list[list[int]] = [[] for _ in owner]
        for step in range(max_new):
            tok = self._pick(logits, warp, [gens[r] for r in alive])
            done = []
            for b, r in enumerate(alive):
                new[r].append(int(tok[b]))
                done.append(new[r][-1] in self.eos_ids)
            if step == max_new - 1 or all(done):
                break
            if any(done):  # finished rows leave the batch: no compute is spent on them afterwards
                keep = torch.tensor([b for b, d in enumerate(done) if not d], device=self.device)
                cache.batch_select_indices(keep)
                tok, mask, last = tok[keep], mask[keep], last[keep]
                alive = [r for r, d in zip(alive, done, strict=True) if not d]
            mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
            last = last + 1
            logits = self.model(input_ids=tok[:, None], attention_mask=mask, position_ids=last[:, None],
                                **{self._cache_kw: cache}, use_cache=True).logits[:, -1]
        self.tokens["generated"] += sum(len(t) for t in new)  # up to and including end-of-sequence
        texts = [self.tok.decode(t, skip_special_tokens=True) for t in new]
        grouped: list[list[str]] = [[] for _ in prompts]
        for (k, _), text in zip(owner, texts, strict=True):
            grouped[k].append(text)
        return grouped

    @staticmethod
    def _pick(logits: torch.Tensor, warp, gens: list[torch.Generator]) -> torch.Tensor:
        """Next token per row: greedy when `warp` is None, else sampled with each row's generator."""
        if warp is None:
            return logits.argmax(dim=-1)
        scores = logits.float()
        for w in warp:
            scores = w(None, scores)
        probs = torch.softmax(scores, dim=-1)
        return torch.cat([torch.multinomial(probs[b], 1, generator=g) for b, g in enumerate(gens)])

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
        # an input that is a prefix of another input is covered by the longer one's logits
        unique = sorted({tuple(x) for x in inputs}, key=len, reverse=True)
        kept: list[tuple[int, ...]] = []
        for u in unique:
            if not any(k[: len(u)] == u for k in kept):
                kept.append(u)
        # which kept row serves each continuation, and the tokens each row must give at each position
        needs: list[dict[int, set[int]]] = [{} for _ in kept]
        plan: list[list[tuple[int, list[int], int]]] = []
        for req, conts in zip(requests, targets, strict=True):
            rows = []
            for full, start in conts:
                need = tuple(full[:-1])
                row = next(i for i, k in enumerate(kept) if k[: len(need)] == need)
                for p in range(start, len(full)):
                    needs[row].setdefault(p - 1, set()).add(CERTAINTY if req.certainty else full[p])
                rows.append((row, full, start))
            plan.append(rows)
        logps = self._logprobs_at([list(k) for k in kept], needs)
        return [
            [reduce_logprobs([logps[row][p - 1][CERTAINTY if req.certainty else full[p]]
                              for p in range(start, len(full))], req.per_token or req.certainty)
             for row, full, start in rows]
            for req, rows in zip(requests, plan, strict=True)
        ]

    def _logprobs_at(self, seqs: list[list[int]], needs: list[dict[int, set[int]]]
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
                    # a token's log-probability, or (CERTAINTY) KL(uniform || p) = lse - mean logit - log V
                    out[i][p] = {t: float(logits[b, at, t].float() - norm[b, at]) if t != CERTAINTY
                                 else float(norm[b, at] - logits[b, at].float().mean() - log_v) for t in toks}

    def close(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# a shared prefix shorter than this is not worth a separate forward pass and cache copies
SHARED_MIN = 32
CERTAINTY = -1  # in a position's needed "tokens": its self-certainty instead of a log-probability


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
def _row_seed(seed: int, sample: int) -> int:
    """A generator seed for sample `sample` of a request seeded `seed` (stable across processes)."""
    digest = hashlib.sha256(f"{seed}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _warpers(temperature: float, top_p: float) -> list | None:
    """transformers' own temperature and top-p warpers (as `generate(top_k=0)` applies them)."""
    if temperature <= 0:
        return None
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    warp: list = [TemperatureLogitsWarper(temperature)]
    if top_p < 1.0:
        warp.append(TopPLogitsWarper(top_p))
    return warp




def _build(cfg, path: Path, fingerprint: str) -> HFBackend:
    return HFBackend(path, fingerprint, batch_size=cfg.backend.batch_size, dtype=cfg.model.dtype,
                     threads=cfg.backend.hf.threads, trust_remote_code=cfg.model.trust_remote_code)


def _numerics(cfg) -> dict[str, str]:
    # the dtype as resolved here ("auto" is bf16 on a CPU with native bf16, fp32 elsewhere); batch
    # size is left out: every row samples from its own seeded generator (see generate)
    return {"dtype": str(pick_dtype(cfg.model.dtype)).removeprefix("torch."),
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


register(BackendSpec("hf", build=_build, numerics=_numerics))
