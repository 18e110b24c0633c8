"""The decode loop of the in-process transformers backend, apart from the model (hf.py runs it).

    texts = generate_batched(requests, prompts, max_rows, eos_ids, open_rows, detokenize, tokens)

The engine only runs the model: `open_rows(prompts, counts)` prefills each prompt once, gives it
`counts[k]` sample rows and returns the next-token logits of every row; `rows.advance(tokens,
keep)` feeds each kept row its next token. Everything else lives here:
- batching: requests with the same sampling settings are sorted by prompt length and packed into
  batches of up to `max_rows` sample rows; a row that ends leaves the batch (no compute after);
- stop strings: a row whose newest tokens spell one of its request's `stop` strings leaves the
  batch like one that reached eos (only the last few tokens are detokenized per step);
- sampling: temperature and top-p (transformers' TopPLogitsWarper rule: a token is kept while the
  probability of the tokens ranked above it is below `top_p`), drawn by inverse CDF from one
  uniform number per row, each row with its own generator seeded from (request seed, sample
  index), so a sample does not depend on which other requests share its batch. Only the top
  `TOP_K` logits of a row are sorted unless its kept set reaches beyond them (then the whole row
  is): exact, and ~8x cheaper than transformers' warpers, which sort the whole vocabulary of every
  row at every step (profiled on SmolLM2, 32 rows: 110 ms a step, longer than the forward pass).

DECODE_VERSION is part of the backend's numerics (so of every cache key): bump it whenever a
change here or in the decode attention (hf.py) changes which samples a seed gives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from .base import GenerateRequest, cut_at_stop, tidy

TOP_K = 256  # candidates sorted per row before falling back to the whole vocabulary
DECODE_VERSION = "2"  # 1: transformers' warpers + multinomial (before issue 14)


class Rows(Protocol):
    """One batch of sample rows inside an engine."""

    def advance(self, tokens: list[int], keep: list[int] | None) -> torch.Tensor:
        """Rows `keep` (indices into the current batch; None = all) stay, in that order, and each
        is fed its token from `tokens`; returns their next-token logits (rows, vocab)."""
        ...

    def close(self) -> None:
        """Free the batch's KV cache."""
        ...


#: (prompts, counts) -> (the batch, the first logits of its rows (sum(counts), vocab))
OpenRows = Callable[[list[list[int]], list[int]], tuple[Rows, torch.Tensor]]


def row_seed(seed: int, sample: int) -> int:
    """A generator seed for sample `sample` of a request seeded `seed` (stable across processes)."""
    digest = hashlib.sha256(f"{seed}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def sample_rows(logits: torch.Tensor, temperature: float, top_p: float, gens: Sequence[torch.Generator],
                top_k: int = TOP_K) -> list[int]:
    """The next token of each row: argmax when `temperature` <= 0, else temperature + top-p
    sampling with row b's uniform number drawn from `gens[b]`."""
    if temperature <= 0:
        return logits.argmax(dim=-1).tolist()
    scores = logits.float() / temperature
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    u = torch.cat([torch.rand(1, generator=g) for g in gens])[:, None]
    vals, idx = scores.topk(min(top_k, scores.shape[-1]), dim=-1)  # sorted, descending
    beyond = (vals - lse).exp().sum(-1) < top_p  # the kept set may reach past the top k
    out = torch.empty(len(gens), dtype=torch.long)
    for part, top in ((~beyond, (vals, idx)), (beyond, None)):
        rows = part.nonzero().flatten()
        if len(rows) == 0:
            continue
        v, ix = scores[rows].sort(dim=-1, descending=True) if top is None else (top[0][rows], top[1][rows])
        p = (v - lse[rows]).exp()
        cum = p.cumsum(-1)
        kept = ((cum - p) < top_p).sum(-1, keepdim=True).clamp(min=1)  # mass ranked above < top_p
        j = torch.searchsorted(cum, u[rows] * cum.gather(1, kept - 1), right=True)
        out[rows] = ix.gather(1, torch.minimum(j, kept - 1)).flatten()
    return out.tolist()


def decode(open_rows: OpenRows, prompts: list[list[int]], counts: list[int], seeds: list[tuple[int, int]],
           temperature: float, top_p: float, max_new: int, eos_ids: set[int],
           stops: Sequence[Sequence[str]] | None = None, detokenize: Callable[[list[int]], str] | None = None
           ) -> list[list[list[int]]]:
    """`counts[k]` sampled token lists (ending at an eos id, kept) for each of `prompts`;
    `seeds[k]` = (request seed, index of its first sample in this batch). A row also ends once its
    text (`detokenize`) holds one of `stops[k]` (the caller cuts the text there)."""
    rows, logits = open_rows(prompts, counts)
    owner = [(k, seeds[k][1] + j) for k, c in enumerate(counts) for j in range(c)]  # row -> (prompt, sample)
    gens = [torch.Generator().manual_seed(row_seed(seeds[k][0], j)) for k, j in owner]
    alive = list(range(len(owner)))  # row of the batch -> row of `owner`
    new: list[list[int]] = [[] for _ in owner]
    stops = stops or [()] * len(prompts)
    # a stop string is at most this many tokens long (a token spells at least one character); +2
    # covers a stop that starts inside an earlier token
    window = [max((len(x) for x in stops[k]), default=0) + 2 for k, _ in owner]

    def stopped(r: int) -> bool:
        stop = stops[owner[r][0]]
        return bool(stop) and detokenize is not None and cut_at_stop(detokenize(new[r][-window[r]:]), stop)[1]

    try:
        for step in range(max_new):
            toks = sample_rows(logits, temperature, top_p, [gens[r] for r in alive])
            for r, t in zip(alive, toks, strict=True):
                new[r].append(t)
            keep = [b for b, t in enumerate(toks) if t not in eos_ids and not stopped(alive[b])]
            if step == max_new - 1 or not keep:
                break
            alive = [alive[b] for b in keep]
            logits = rows.advance([toks[b] for b in keep], None if len(keep) == len(toks) else keep)
    finally:
        rows.close()
    grouped: list[list[list[int]]] = [[] for _ in prompts]
    for (k, _), toks in zip(owner, new, strict=True):
        grouped[k].append(toks)
    return grouped


def generate_batched(requests: Sequence[GenerateRequest], prompts: list[list[int]], max_rows: int,
                     eos_ids: set[int], open_rows: OpenRows, detokenize: Callable[[list[int]], str],
                     tokens: dict[str, int]) -> list[list[str]]:
    """`n` samples per request (prompts already tokenized), decoded in batches of up to
    `max_rows` rows; counts prompt and generated tokens (up to and including eos) into `tokens`."""
    out: list[list[str]] = [[] for _ in requests]
    groups: dict[tuple, list[int]] = {}
    for i, req in enumerate(requests):
        s = req.sampling
        groups.setdefault((s.temperature, s.top_p, s.max_new_tokens), []).append(i)
    for (temperature, top_p, max_new), members in groups.items():
        members.sort(key=lambda i: (len(prompts[i]), i))
        # units of work: (request, first sample, sample count), a request split if n > rows
        units = [(i, j, min(max_rows, requests[i].sampling.n - j))
                 for i in members for j in range(0, requests[i].sampling.n, max_rows)]
        batch: list[tuple[int, int, int]] = []
        for unit in [*units, None]:
            if batch and (unit is None or sum(u[2] for u in batch) + unit[2] > max_rows):
                samples = decode(open_rows, [prompts[i] for i, _, _ in batch], [c for _, _, c in batch],
                                 [(requests[i].sampling.seed, j) for i, j, _ in batch],
                                 temperature, top_p, max_new, eos_ids, [requests[i].stop for i, _, _ in batch],
                                 detokenize)
                tokens["prompt"] += sum(len(prompts[i]) for i, _, _ in batch)
                for (i, _, _), toks in zip(batch, samples, strict=True):
                    tokens["generated"] += sum(len(t) for t in toks)
                    out[i].extend(tidy(detokenize(t), requests[i]) for t in toks)
                batch = []
            if unit is not None:
                batch.append(unit)
    return out
