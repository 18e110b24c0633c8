"""The run report: one self-contained HTML page that shows what a LANCE run did to its data.

    lance report runs/default                  # writes runs/default/report.html
    python -m lance_llm.report runs/default    # the same, without the CLI

The page holds the run's header (base model, libraries, config highlights), the data funnel of
every iteration, clean drops by rule, a curve over iterations and, per iteration: judge-score
histograms (seed vs generated), preference-pair margins, parse failures, diversity of the
generated text, time and LLM calls per stage, and a few sampled SFT examples and pairs. When
`eval/results.json` exists, an evaluation table and curve are added.

Plots are PNGs inlined as base64 (no external resource, no JavaScript). Everything read from the
run is model output and is HTML-escaped. A run that stopped part-way is reported as far as it
got; what is missing is marked "not reached". The report never writes anything but its own file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, build_config
from .drift import DIVERSITY_METRICS, MAX_ROUGE_TEXTS, diversity, drift_rows, generated_groups
from .funnel import columns
from .judge.reliability import degraded_check, judge_signals, raw_score
from .records import atomic_write_text
from .rundir import RunDir, RunDirError
from .stage import Stage
from .stages import ITERATION, PREPARE, producer

N_EXAMPLES = 3
MAX_CHARS = 1500  # per shown text; a runaway generation should not bury the page
NA = '<p class="na">not reached</p>'

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1200px;
color:#1d1d1f;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;margin:6px 0 10px}td,th{border:1px solid #d0d0d0;padding:3px 7px}
th{background:#f2f4f7;font-weight:600}td{text-align:right}td.l,th.l{text-align:left}
.na{color:#888;font-style:italic}.err{color:#b00020}.muted{color:#666}
.plots{display:flex;flex-wrap:wrap;gap:12px}.pair>div{width:560px}img.plot{max-width:100%;border:1px solid #eee}
.ex{border:1px solid #e2e2e2;border-radius:4px;padding:6px 10px;margin:6px 0;background:#fafafa}
.ex pre{white-space:pre-wrap;word-break:break-word;margin:2px 0 6px;font:13px/1.4 ui-monospace,monospace}
"""


# -- small pure helpers ----------------------------------------------------------------------
def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return esc(value)


def _table(header: list[str], rows: list[list[str]], attrs: str = "", left: int = 1) -> str:
    """An HTML table; cells are already HTML. The first `left` columns are left-aligned labels."""
    cls = [' class="l"' if i < left else "" for i in range(len(header))]
    head = "".join(f"<th{c}>{h}</th>" for c, h in zip(cls, header, strict=True))
    body = "".join("<tr>" + "".join(f"<td{c}>{v}</td>" for c, v in zip(cls, r, strict=True)) + "</tr>" for r in rows)
    return f"<table{attrs}><tr>{head}</tr>{body}</table>"


def _png(draw: Callable[[Any], None], alt: str, size: tuple[float, float] = (6.0, 3.0)) -> str:
    """Render one plot to an inline <img>. matplotlib is imported here, with the Agg canvas and
    no pyplot, so importing lance_llm.loop stays light and no global backend state is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=90)
    FigureCanvasAgg(fig)
    draw(fig.add_subplot())
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="plot" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def _guard(fn: Callable[..., str], *args: Any) -> str:
    """One part of the page. The report is read most when a run went wrong, so one unreadable
    file shows as an error in its own part instead of losing the whole page."""
    try:
        return fn(*args)
    except Exception as e:
        return f'<p class="err">could not render this part: {esc(type(e).__name__)}: {esc(e)}</p>'


# -- reading the run directory ---------------------------------------------------------------
class Run:
    """A run directory as the report reads it: tolerant of missing and unreadable parts."""

    def __init__(self, root: Path) -> None:
        self.root, self.rd = root, RunDir(root)
        self.meta = self.json(self.rd.run_json) or {}
        try:
            cfg = yaml.safe_load(self.rd.config_yaml.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            cfg = None
        self.cfg: dict[str, Any] = cfg if isinstance(cfg, dict) else {}
        planned = self.cfg.get("iterations") if isinstance(self.cfg.get("iterations"), int) else 0
        self.iterations = list(range(1, max([planned, *self.rd.iterations()]) + 1))

    @staticmethod
    def json(path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def conf(self, dotted: str) -> Any:
        node: Any = self.cfg
        for key in dotted.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        return node

    def enabled(self, stages: tuple[Stage, ...]) -> list[str]:
        """Names of the stages this run's config runs (all of them if the config does not load)."""
        try:
            cfg = build_config(self.cfg)
        except ConfigError:
            return [s.name for s in stages]
        return [s.name for s in stages if s.when(cfg)]

    def manifest(self, t: int, stage: str) -> dict[str, Any] | None:
        return self.rd.manifest(t, stage)

    def stats(self, t: int, stage: str) -> dict[str, Any] | None:
        return self.rd.stats(t, stage)

    def records(self, t: int, name: str) -> list | None:
        """The records of set `name` in iteration t, or None when it was never written (not reached)."""
        return self.rd.read(t, name) if self.rd.path(t, name).is_file() else None

    def funnel(self, t: int) -> dict[str, Any] | None:
        row = self.json(self.rd.funnel_json(t))
        return row if isinstance(row, dict) else None


# -- the parts of the page -------------------------------------------------------------------
def header(run: Run) -> str:
    base = run.meta.get("base_model") or {}
    libs = run.meta.get("libraries") or {}
    fields = [k for k in ("source", "fingerprint", "chat_template_hash", "source_sha256") if k in base]
    model = (_table(["field", "value"], [[esc(k), f"<code>{esc(base[k])}</code>"] for k in fields], left=2)
             if fields else '<p class="na">run.json has no base model</p>')
    keys = ["iterations", "seed", "model.source", "data.limit", "review.mode", "review.scale", "review.samples",
            "generate.threshold", "annotate.sft_threshold", "annotate.pair_margin", "clean.rouge_threshold",
            "annotate.next_seed", "train.method"]
    cells = [[esc(k), "–" if (v := run.conf(k)) is None else esc(v)] for k in keys]
    cells += [["", ""]] * (len(cells) % 2)
    half = len(cells) // 2  # two (setting, value) column pairs: half the height
    rows = [left + right for left, right in zip(cells[:half], cells[half:], strict=True)]
    config = (_table(["setting", "value"] * 2, rows, left=4) if run.cfg
              else '<p class="na">config.yaml missing or unreadable</p>')
    lib_line = " · ".join(f"{esc(k)} {esc(v)}" for k, v in libs.items()) or "unknown"
    return (f"<h1>LANCE run report: {esc(run.root.name)}</h1>"
            f'<p class="muted">{esc(run.root.resolve())} · run.json updated {esc(run.meta.get("updated", "?"))}'
            f' · base checkpoint <code>{esc(base.get("path", "?"))}</code></p>'
            f'<div class="plots"><div><h3>Base model</h3>{model}</div>'
            f"<div><h3>Config highlights</h3>{config}</div></div>"
            f'<p class="muted">Libraries: {lib_line}</p>')


def funnel_table(run: Run) -> str:
    cols = [c for c in columns(ITERATION) if c.style == "cell"]
    names = [c.name for c in cols]
    head = "".join(f'<th title="{esc(c.description)}">{esc(c.name)}</th>' for c in cols)
    rows = []
    for t in run.iterations:
        row = run.funnel(t)
        cells = ("".join(f"<td>{esc(row.get(n, ''))}</td>" for n in names) if row else
                 f'<td>{t}</td><td class="l na" colspan="{len(names) - 1}">not reached</td>')
        rows.append(f"<tr>{cells}</tr>")
    legend = "".join(f"<li><b>{esc(c.name)}</b>: {esc(c.description)}</li>" for c in cols)
    notes = []
    for c in (c for c in columns(ITERATION) if c.style == "line"):
        per = [(t, row.get(c.name)) for t in run.iterations if (row := run.funnel(t)) and row.get(c.name)]
        if per:
            notes.append(f"<li><b>{esc(c.description)}</b>: " + "; ".join(
                f"iter {t}: " + ", ".join(f"{esc(k)} {esc(v)}" for k, v in value.items()) for t, value in per)
                + "</li>")
    return (f'<table id="funnel"><tr>{head}</tr>{"".join(rows)}</table>'
            + (f'<ul class="muted">{"".join(notes)}</ul>' if notes else "")
            + f"<details><summary>What the columns count</summary><ul>{legend}</ul></details>")


def clean_drops(run: Run) -> str:
    per_iter = {t: run.stats(t, producer("cleaned")) for t in run.iterations}
    rules = sorted({k for st in per_iter.values() if st for k, v in st.items() if k not in ("input", "kept") and v})
    rows = []
    for t, st in per_iter.items():
        if st is None:
            rows.append([str(t), '<span class="na">not reached</span>'] + [""] * len(rules))
        else:
            rows.append([str(t), fmt(st.get("input"))] + [fmt(st.get(r, 0)) for r in rules])
    note = "" if rules else '<p class="muted">No candidate was dropped by any rule.</p>'
    return _table(["iter", "generated", *map(esc, rules)], rows) + note


def curve(run: Run) -> str:
    rows = [r for r in map(run.funnel, run.iterations) if r]
    if not rows:
        return NA
    series = ["SFT kept", "pairs", "cleaned", "parse fail"]

    def draw(ax: Any) -> None:
        xs = [r["iter"] for r in rows]
        for name in series:
            ax.plot(xs, [r.get(name, 0) for r in rows], marker="o", label=name)
        ax.set_xticks(xs)
        ax.set(xlabel="iteration", ylabel="count", title="Per iteration")
        ax.legend(fontsize=8)

    return _png(draw, "SFT kept, pairs, cleaned and parse failures per iteration", (7.0, 3.2))


def stage_table(run: Run, t: int, stages: list[str]) -> str:
    rows, total = [], 0.0
    for stage in stages:
        m = run.manifest(t, stage)
        if m is None:
            rows.append([esc(stage), '<span class="na">not reached</span>', "", "", "", ""])
            continue
        total += float(m.get("seconds") or 0)
        calls = (m.get("stats") or {}).get("llm_calls")
        new, cached = (fmt(calls.get("misses")), fmt(calls.get("hits"))) if calls else ("–", "–")
        tokens = (m.get("stats") or {}).get("tokens")
        prompt, generated = (fmt(tokens.get("prompt")), fmt(tokens.get("generated"))) if tokens else ("–", "–")
        rows.append([esc(stage), f"{float(m.get('seconds') or 0):.1f}", new, cached, prompt, generated])
    rows.append(["<b>total</b>", f"<b>{total:.1f}</b>", "", "", "", ""])
    return _table(["stage", "seconds", "LLM calls (new)", "LLM calls (cached)", "prompt tokens",
                   "generated tokens"], rows)


def parse_failures(run: Run, t: int) -> str:
    spec = [(label, stage.name, failed, of) for stage in ITERATION for label, failed, of in stage.parse]
    rows = []
    for label, stage, failed, of in spec:
        st = run.stats(t, stage)
        rows.append([esc(label), fmt(st.get(failed)), fmt(st.get(of))] if st is not None
                    else [esc(label), '<span class="na">not reached</span>', ""])
    return _table(["replies", "did not parse", "of"], rows)


def score_histogram(run: Run, t: int) -> str:
    seed = run.records(t, "seed_reviewed")
    gen = run.records(t, "reviewed")
    if seed is None and gen is None:
        return NA
    groups = {"seed": seed or [], "generated": gen or []}
    raw = any(s.review is not None and s.review.raw_score is not None for g in groups.values() for s in g)
    scale = ("the judge's raw score (before rank scaling)" if raw
             else f"the judge's score (review.scale={run.conf('review.scale') or 'raw'})")
    values = {k: [x for x in map(raw_score, g) if x is not None] for k, g in groups.items()}
    note = (f'<p class="muted">Scale: {esc(scale)}, review.mode={esc(run.conf("review.mode"))}. '
            f"Scored: {len(values['seed'])} seed, {len(values['generated'])} generated"
            + ("; generated candidates: not reached" if gen is None else "") + ".</p>")
    if not any(values.values()):
        return note + '<p class="na">no scores</p>'
    lo, hi = min(min(v) for v in values.values() if v), max(max(v) for v in values.values() if v)
    bins = [lo + (hi - lo or 1.0) * i / 20 for i in range(21)]

    def draw(ax: Any) -> None:
        for (name, v), color in zip(values.items(), ("#4C72B0", "#DD8452"), strict=True):
            if v:
                ax.hist(v, bins=bins, alpha=0.6, color=color, label=f"{name} ({len(v)})")
        ax.set(xlabel="raw judge score" if raw else "score", ylabel="items", title=f"Iteration {t}: judge scores")
        ax.legend(fontsize=8)

    return _png(draw, f"iteration {t}: histogram of judge scores, seed vs generated") + note


def margins(run: Run, t: int) -> str:
    pairs = run.records(t, "dpo_new")
    if pairs is None:
        return NA
    if not pairs:
        return '<p class="na">no pairs</p>'
    values = [p.score_chosen - p.score_rejected for p in pairs]

    def draw(ax: Any) -> None:
        ax.hist(values, bins=min(20, max(5, len(values))), color="#55A868")
        if isinstance(margin := run.conf("annotate.pair_margin"), (int, float)):
            ax.axvline(margin, color="k", ls="--", lw=1, label=f"pair_margin {margin}")
            ax.legend(fontsize=8)
        ax.set(xlabel="score_chosen − score_rejected", ylabel="pairs", title=f"Iteration {t}: pair margins")

    return (_png(draw, f"iteration {t}: histogram of preference-pair margins") +
            f'<p class="muted">{len(values)} pairs; margin on the scale used for pairing '
            f"(review.scale={esc(run.conf('review.scale') or 'raw')}); mean {sum(values) / len(values):.3f}.</p>")


def diversity_table(run: Run, t: int) -> str:
    gen = run.records(t, "generated")
    if gen is None:
        return NA
    texts = generated_groups(gen)
    groups = {"new instructions (distinct)": texts["instructions"], "responses (new + degraded)": texts["responses"]}
    stats = {k: diversity(v) for k, v in groups.items()}
    cols = list(next(iter(stats.values())))
    return _table(["generated", *map(esc, cols)], [[esc(k), *(fmt(v) for v in d.values())] for k, d in stats.items()])


def drift_table(run: Run) -> str:
    """Diversity of instructions and responses, and survival per cleaning rule, per iteration."""
    rows = drift_rows(run.root)
    if not rows:
        return NA
    groups = (("instructions", "new instructions"), ("responses", "responses"))
    div = _table(["iter", *(f"{label}: {esc(m)}" for _, label in groups for m in DIVERSITY_METRICS)],
                 [[str(r["iter"]), *(fmt(r[g][m]) for g, _ in groups for m in DIVERSITY_METRICS)] for r in rows])
    rules = list(next((r["survival"] for r in rows if r["survival"]), {}))
    surv = _table(["iter", *map(esc, rules), "kept share"],
                  [[str(r["iter"]), *(fmt((r["survival"] or {}).get(k)) for k in rules), fmt(r["kept share"])]
                   for r in rows])
    return div + "<h3>Survival per cleaning rule</h3>" + surv


def _pick(items: list, t: int) -> list:
    rng = random.Random(t)  # fixed per iteration: the same report for the same run
    return [items[i] for i in sorted(rng.sample(range(len(items)), min(N_EXAMPLES, len(items))))]


def _text(msgs: list[dict[str, str]], role: str) -> str:
    text = next((m["content"] for m in reversed(msgs) if m["role"] == role), "")
    return f"<pre>{esc(text[:MAX_CHARS] + ('…' if len(text) > MAX_CHARS else ''))}</pre>"


def examples(run: Run, t: int) -> str:
    sft = run.records(t, "sft_new")
    pairs = run.records(t, "dpo_new")
    out = ["<h3>Accepted SFT examples</h3>"]
    if sft is None:
        out.append(NA)
    out += [f'<div class="ex"><span class="muted">{esc(e.id)} · score {fmt(e.score)}</span>'
            f"<br><b>instruction</b>{_text(e.prompt, 'user')}<b>response</b>{_text(e.completion, 'assistant')}</div>"
            for e in _pick(sft or [], t)]
    if sft == []:
        out.append('<p class="na">none this iteration</p>')
    out.append("<h3>Preference pairs</h3>")
    out.append(NA if pairs is None else '<p class="na">no pairs</p>' if not pairs else "")
    out += [f'<div class="ex"><span class="muted">{esc(p.id)}</span><br><b>instruction</b>{_text(p.prompt, "user")}'
            f"<b>chosen</b> (score {fmt(p.score_chosen)}){_text(p.chosen, 'assistant')}"
            f"<b>rejected</b> (score {fmt(p.score_rejected)}){_text(p.rejected, 'assistant')}</div>"
            for p in _pick(pairs or [], t)]
    return "".join(out)


def iteration(run: Run, t: int) -> str:
    head = f'<h2 id="iter-{t}">Iteration {t}</h2>'
    if not run.rd.iter_dir(t).is_dir():
        return head + NA
    plots = (f'<div class="plots pair"><div>{_guard(score_histogram, run, t)}</div>'
             f"<div>{_guard(margins, run, t)}</div></div>")
    return (head + f"<h3>Judge scores and pair margins</h3>{plots}"
            f'<div class="plots"><div><h3>Time, LLM calls and tokens per stage</h3>'
            f"{_guard(stage_table, run, t, run.enabled(ITERATION))}"
            f"</div><div><h3>Parse failures</h3>{_guard(parse_failures, run, t)}</div></div>"
            f"<h3>Diversity of the generated text</h3>{_guard(diversity_table, run, t)}"
            '<p class="muted">distinct-n: distinct / all n-grams of lower-cased words; self-ROUGE-L: mean pairwise '
            f"ROUGE-L F1 over at most {MAX_ROUGE_TEXTS} sampled texts (high = repetitive).</p>"
            + _guard(examples, run, t))


def evaluation(run: Run) -> str:
    path = run.rd.eval_dir / "results.json"
    if not path.is_file():
        return "<p>No evaluation was run (no <code>eval/results.json</code>).</p>"
    # (model, iteration, {bench: score}); a row without an iteration is a reference model
    rows = [(str(r.get("model", "")), r.get("iteration"), r.get("scores") or {})
            for r in json.loads(path.read_text(encoding="utf-8"))["rows"]]
    benches = list(dict.fromkeys(b for _, _, scores in rows for b in scores))
    table = _table(["model", "iteration", *map(esc, benches)],
                   [[esc(m), fmt(it)] + [fmt(sc.get(b)) for b in benches] for m, it, sc in rows])
    if not benches:
        return table
    stepped = sorted((r for r in rows if isinstance(r[1], int)), key=lambda r: r[1])

    def draw(ax: Any) -> None:
        for i, b in enumerate(benches):
            color = f"C{i % 10}"
            pts = [(it, sc[b]) for _, it, sc in stepped if sc.get(b) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", color=color, label=b)
            for m, it, sc in rows:  # a reference model as a dashed line
                if it is None and sc.get(b) is not None:
                    ax.axhline(sc[b], color=color, ls="--", lw=1, label=f"{b}: {m}")
        ax.set(xlabel="iteration", ylabel="score", title="Evaluation")
        if stepped:
            ax.set_xticks(sorted({r[1] for r in stepped}))
        ax.legend(fontsize=8)

    return table + _png(draw, "evaluation scores per iteration", (7.0, 3.2))


def degraded_table(run: Run) -> str:
    """Per iteration: did the run's own judge score each degraded answer below its seed answer?"""
    rows = []
    for t in run.iterations:
        seed, gen = run.records(t, "seed_reviewed"), run.records(t, "reviewed")
        if seed is None or gen is None:
            continue
        r = degraded_check(seed, gen)
        ci = f"{fmt(r['ci95'][0])}-{fmt(r['ci95'][1])}" if r["ci95"] else fmt(None)
        rows.append([str(t), fmt(r["pairs"]), fmt(r["accuracy"]), ci, fmt(r["parse_failures"])])
    if not rows:
        return "<p>No iteration has reviewed generated data yet.</p>"
    return (_table(["iteration", "degraded answers", "scored below their seed answer", "95% CI", "unscored"], rows)
            + '<p class="muted">No labels needed: the loop asked the model for deliberately worse answers to its best '
            "seed items; a judge that can be trusted scores each below the seed answer it was made from (raw "
            "scores; ties count as wrong).</p>")


def signals_table(run: Run) -> str:
    """Per iteration, what the run's judge shows without labels (judge.reliability.judge_signals)."""
    rows = []
    for t in run.iterations:
        seed, gen = run.records(t, "seed_reviewed"), run.records(t, "reviewed")
        if seed is None:
            continue
        s = judge_signals(run.records(t - 1, "seed_reviewed") if t > 1 else None, seed, gen or [],
                          run.records(t, "dpo_new") or [])
        ag, sp, ln = s.get("agreement") or {}, s.get("spread") or {}, s.get("lengths") or {}
        rows.append([str(t), fmt(ag.get("items")), fmt(ag.get("spearman")), fmt(ag.get("pairwise")),
                     fmt(sp.get("std")), fmt(sp.get("iqr")), fmt(sp.get("ties")), fmt(ln.get("chosen_words"), 1),
                     fmt(ln.get("rejected_words"), 1)])
    if not rows:
        return "<p>No iteration has reviewed its seed yet.</p>"
    return (_table(["iteration", "items judged again", "Spearman with the previous judge",
                    "pairs ordered alike", "score std", "score IQR", "tied pairs", "chosen words", "rejected words"],
                   rows)
            + '<p class="muted">No labels needed. Agreement: the same seed items scored by this iteration\'s judge '
            "and the previous one (review.rejudge=changed); spread and ties: raw scores of the seed and the "
            "generated candidates (a judge that cannot tell answers apart shows little spread, many ties); mean "
            "words of the chosen and rejected answers of this iteration's pairs (a judge that prefers length shows "
            "it here).</p>")


def judge(run: Run) -> str:
    """Judge reliability (issue 7): RUN_DIR/judge.json, written by `lance judge RUN_DIR`."""
    path = run.rd.judge_json
    if not path.is_file():
        return "<p>Judge reliability on labelled pairs was not measured (run <code>lance judge RUN_DIR</code>).</p>"
    doc = json.loads(path.read_text(encoding="utf-8"))
    results = doc.get("results") or {}
    kinds = list(dict.fromkeys(k for r in results.values() for k in r.get("per_kind", {})))
    rows = []
    for mode, r in results.items():
        ci = r.get("ci95") or [None, None]
        rows.append([esc(mode), fmt(r.get("pairs")), fmt(r.get("accuracy")), f"{fmt(ci[0])}-{fmt(ci[1])}",
                     fmt(r.get("parse_failure_rate")), fmt(r.get("seconds_per_pair"))]
                    + [fmt(r.get("per_kind", {}).get(k, {}).get("accuracy")) for k in kinds])
    note = (f'<p class="muted">Model {esc(doc.get("model"))}, split {esc(doc.get("split"))}: the gold answer of a '
            "seed task against a corrupted version; right = gold scored strictly higher (a tie is wrong); a pair "
            "with an unscored side is a parse failure, outside the accuracy.</p>")
    return _table(["mode", "pairs", "accuracy", "95% CI", "parse failures", "s/pair", *map(esc, kinds)], rows) + note


# -- the page --------------------------------------------------------------------------------
def render(run_dir: Path) -> str:
    run = Run(run_dir)
    body = [
        _guard(header, run),
        "<h2>Data funnel</h2>", _guard(funnel_table, run),
        '<div class="plots"><div><h2>Clean drops by rule</h2>', _guard(clean_drops, run),
        "</div><div><h2>Over iterations</h2>", _guard(curve, run), "</div></div>",
        "<h2>Diversity and drift over iterations</h2>", _guard(drift_table, run),
        '<p class="muted">Instructions: each distinct new instruction once; responses: all generated (new and '
        "degraded). Survival: per cleaning rule, in the order the rules apply, the share of the candidates "
        "reaching it that it lets through. Falling distinct-n, rising self-ROUGE-L or falling survival "
        "over iterations is the loop narrowing its own data.</p>",
        '<h2 id="iter-0">Iteration 0 (seed, M_0)</h2>',
        _guard(stage_table, run, 0, run.enabled(PREPARE)),
        *(iteration(run, t) for t in run.iterations),
        '<h2 id="evaluation">Evaluation</h2>', _guard(evaluation, run),
        '<h2 id="judge">Judge reliability</h2>', _guard(degraded_table, run), _guard(signals_table, run),
        _guard(judge, run),
    ]
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>LANCE run report: {esc(run_dir.name)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report of `run_dir` (default `run_dir/report.html`) atomically; return its path."""
    run_dir = Path(run_dir)
    if not RunDir(run_dir).run_json.is_file():
        raise RunDirError(f"{run_dir}: not a lance run directory (no run.json)")
    out = Path(out) if out is not None else RunDir(run_dir).report
    atomic_write_text(out, render(run_dir))
    return out


if __name__ == "__main__":
    print(write_report(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None))
