"""The HTML run report: contents on a hand-made run directory, its helpers' exact values, and
(slow) that headless Chromium renders it.

    pytest -q tests/test_report.py              # the browser test needs /usr/bin/chromium
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from lance_llm.cli import main
from lance_llm.drift import distinct_n, diversity, self_rouge
from lance_llm.funnel import columns, funnel_row
from lance_llm.records import PreferencePair, Review, Sample, SFTExample, chat_prompt
from lance_llm.report import write_report
from lance_llm.rundir import FORMAT_VERSION, RunDir, RunDirError
from lance_llm.stages import ITERATION

SYSTEM = "You are a helpful assistant."
SCRIPT = "<script>alert('pwned')</script>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS_WITHOUT_EVAL = 5  # the curve; iteration 1: scores + margins; iteration 2: scores; iteration 3: scores


# --------------------------------------------------------------------------------------------
# a synthetic run: iteration 1 complete with pairs, 2 complete without pairs, 3 stopped after
# generate, 4 planned but never started
# --------------------------------------------------------------------------------------------
def sample(sid: str, instruction: str, response: str, origin: str = "seed", raw: float | None = None,
           t: int = 0, parent: str | None = None) -> Sample:
    review = None if raw is None else Review(mode="expected", score=raw * 2, samples=[raw], raw_score=raw)
    return Sample(sid, instruction, response, origin=origin, iteration=t, review=review,  # type: ignore[arg-type]
                  parent_id=parent)


def manifest(rd: RunDir, t: int, stage: str, stats: dict, seconds: float) -> None:
    rd.iter_dir(t).mkdir(parents=True, exist_ok=True)
    rd.manifest_path(t, stage).write_text(json.dumps({"stage": stage, "stats": stats, "seconds": seconds}))


def stage_stats(t: int, pairs: int, sft_new: int) -> dict[str, dict]:
    return {
        "review_seed": {"seed": 4, "unscored": 0, "reply_parse_failures": 1, "replies": 4,
                        "llm_calls": {"hits": 1, "misses": 3}},
        "generate": {"low_seeds": 2, "high_seeds": 2, "new_instructions": 2, "new_responses": 3,
                     "degraded_responses": 2, "instruction_parse_failures": 2, "instruction_replies": 4,
                     "degrade_parse_failures": 1, "degrade_replies": 3, "llm_calls": {"hits": 0, "misses": 7},
                     "tokens": {"prompt": 4321, "generated": 987}},
        "clean": {"input": 5, "kept": 4, "exact_duplicate": 1, "response_length": 0},
        "review_generated": {"scored": 4, "unscored": 0, "reply_parse_failures": 0, "replies": 4,
                             "llm_calls": {"hits": 0, "misses": 4}},
        "annotate": {"sft_new": sft_new, "pairs_new": pairs, "sft_total": 8 + t, "dpo_total": 2},
        "train": {"sft": {"steps": 2, "loss": 1.5}, "dpo": None},
    }


SEED = [sample(f"seed-{i}", f"Seed question number {i} about rivers?", f"Seed answer {i}: rivers flow to the sea.",
               raw=3.5 + i / 10) for i in range(4)]
GENERATED = [
    sample("g1", "Name three large rivers in Europe today.", "The Danube, the Rhine and the Volga are large.", "new"),
    sample("g2", "Name three large rivers in Europe today.", "Danube, Rhine, Volga, all of them in Europe.", "new"),
    sample("g3", "Explain why rivers meander across plains.", "Erosion on the outer bank and deposits inside.", "new"),
    sample("g4", "Seed question number 3 about rivers?", "Rivers flow uphill.", "degraded", parent="seed-3"),
    sample("g5", "Seed question number 1 about rivers?", "Rivers are made of sand.", "degraded", parent="seed-1"),
]


def write_iteration(root: Path, t: int, pairs: int) -> None:
    rd = RunDir(root)
    stats = stage_stats(t, pairs, sft_new=1)
    for stage, st in stats.items():
        manifest(rd, t, stage, st, seconds={"generate": 12.3, "train": 30.0}.get(stage, 0.5))
    rd.write(t, "seed_reviewed", SEED)
    rd.write(t, "generated", GENERATED)
    rd.write(t, "cleaned", GENERATED[:4])
    rd.write(t, "clean_dropped", [{"id": "g5", "reason": "exact_duplicate"}])
    rd.write(t, "reviewed", [sample(s.id, s.instruction, s.response, s.origin, raw=3.0 + i / 5, t=t,
                                    parent=s.parent_id) for i, s in enumerate(GENERATED[:4])])
    rd.write(t, "sft_new", [SFTExample(f"sft-{t}", chat_prompt(SYSTEM, f"Explain {SCRIPT} tags."),
                                       [{"role": "assistant", "content": "Use <b>escaping</b> & care."}],
                                       "generated", t, 8.5)])
    made = [PreferencePair(f"pair-{t}-{i}", chat_prompt(SYSTEM, f"Seed question number {i} about rivers?"),
                           [{"role": "assistant", "content": "Rivers flow to the sea."}],
                           [{"role": "assistant", "content": "Rivers flow uphill."}],
                           f"seed-{i}", f"seed-{i}", f"g{i}", 9.0, 6.0 + i / 2, t) for i in range(pairs)]
    rd.write(t, "dpo_new", made)
    for name in ("sft", "dpo", "next_seed"):
        rd.write(t, name, [])
    rd.funnel_json(t).write_text(json.dumps(funnel_row(t, stats, ITERATION)))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    root = tmp_path / "run"
    root.mkdir()
    rd = RunDir(root)
    rd.run_json.write_text(json.dumps({
        "format_version": FORMAT_VERSION, "updated": "2026-11-25T10:00:00+0000", "seed": 0,
        "base_model": {"source": "tiny<model>", "fingerprint": "fe17c36060e39c2d"},
        "libraries": {"torch": "2.13.0+cpu", "trl": "1.16.0"}}))
    rd.config_yaml.write_text(yaml.safe_dump({
        "iterations": 4, "seed": 0, "review": {"mode": "expected", "scale": "rank", "samples": 3},
        "generate": {"threshold": 7.0}, "annotate": {"sft_threshold": 8.0, "pair_margin": 2.0}}))
    manifest(rd, 0, "prepare", {"seed": 4}, 0.1)
    write_iteration(root, 1, pairs=2)
    write_iteration(root, 2, pairs=0)
    # iteration 3 crashed after generate: no clean, review, annotate, train or funnel.json
    stats = stage_stats(3, 0, 0)
    manifest(rd, 3, "review_seed", stats["review_seed"], 1.0)
    manifest(rd, 3, "generate", stats["generate"], 9.0)
    rd.write(3, "seed_reviewed", SEED)
    rd.write(3, "generated", GENERATED)
    return root


class Page(HTMLParser):
    """Tables (id, rows of cell text), <img> attributes and the page text, from HTML."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: list[tuple[str | None, list[list[str]]]] = []
        self.imgs: list[dict[str, str | None]] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append((dict(attrs).get("id"), []))
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.imgs.append(dict(attrs))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def table(self, table_id: str) -> list[list[str]]:
        return next(rows for tid, rows in self.tables if tid == table_id)

    def plots(self) -> list[dict[str, str | None]]:
        return [a for a in self.imgs if a.get("class") == "plot"]


def sections(text: str) -> dict[str, str]:
    """The page split at its <h2 id=...> headings: {id: html up to the next one}."""
    parts = text.split('<h2 id="')
    return {p.split('"', 1)[0]: p for p in parts[1:]}


# --------------------------------------------------------------------------------------------
# contents
# --------------------------------------------------------------------------------------------
def test_report_shows_funnel_plots_and_partial_iterations(run_dir: Path) -> None:
    out = write_report(run_dir)
    assert out == RunDir(run_dir).report
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".")] == []  # no temp file left
    text = out.read_text(encoding="utf-8")
    page = Page(text)

    funnel = page.table("funnel")
    assert funnel[0] == [c.name for c in columns(ITERATION) if c.style == "cell"]
    assert funnel[0][-2:] == ["parse fail", "LLM calls"]  # summed over stages: last
    assert funnel[1] == ["1", "4", "0", "2", "2", "2", "3", "2", "5", "4", "4", "1", "2", "9", "2", "4", "14/1"]
    assert funnel[2][:13] == ["2", "4", "0", "2", "2", "2", "3", "2", "5", "4", "4", "1", "0"]
    assert funnel[3] == ["3", "not reached"]
    assert funnel[4] == ["4", "not reached"]

    plots = page.plots()
    assert len(plots) == PLOTS_WITHOUT_EVAL
    for img in plots:
        assert img["alt"]
        src = img["src"] or ""
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_MAGIC)
    assert "http://" not in text and "https://" not in text and "<script" not in text  # self-contained, no JS

    # model output is escaped wherever it appears
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in text
    assert "Use &lt;b&gt;escaping&lt;/b&gt; &amp; care." in text
    assert "tiny&lt;model&gt;" in text

    by_id = sections(text)
    assert "no pairs" not in by_id["iter-1"] and "pair-1-0" in by_id["iter-1"]
    assert "no pairs" in by_id["iter-2"]
    it3 = by_id["iter-3"]
    assert "not reached" in it3 and "judge scores" in it3  # the seed's scores exist, the rest does not
    assert "generated candidates: not reached" in it3
    assert by_id["iter-4"].count("not reached") == 1
    assert "raw score" in by_id["iter-1"]  # which scale the histograms show

    # clean drops, time and calls per stage, parse failures, diversity
    tables = [rows for _, rows in page.tables]
    drops = next(rows for rows in tables if rows[0][:2] == ["iter", "generated"])
    assert drops[0] == ["iter", "generated", "exact_duplicate"]
    assert drops[1] == ["1", "5", "1"] and drops[3][:2] == ["3", "not reached"]
    stages = [rows for rows in tables if rows[0][0] == "stage"]
    assert ["generate", "12.3", "7", "0", "4321", "987"] in stages[1]  # stages[0] is iteration 0
    assert ["review_seed", "0.5", "3", "1", "–", "–"] in stages[1]
    assert ["annotate", "not reached", "", "", "", ""] in stages[3]
    failures = [rows for rows in tables if rows[0][0] == "replies"]
    assert failures[0][1:] == [["judge, seed review", "1", "4"], ["generator, new instructions", "2", "4"],
                               ["generator, degraded answers", "1", "3"], ["judge, generated review", "0", "4"]]
    div = next(rows for rows in tables if rows[0][0] == "generated" and "distinct-1" in rows[0])
    assert div[1][:2] == ["new instructions (distinct)", "2"] and div[2][:2] == ["responses (new + degraded)", "5"]
    # drift over iterations: HTML tables (iterations 1-3 generated), never Markdown pipes
    drift = next(rows for rows in tables if rows[0][:2] == ["iter", "new instructions: texts"])
    assert [r[0] for r in drift[1:]] == ["1", "2", "3"] and drift[1][1] == "2" and drift[1][6] == "5"
    survival = next(rows for rows in tables if rows[0][-1] == "kept share")
    assert survival[1][0] == "1" and survival[1][-1] == "0.800" and survival[3][-1] == "–"
    assert all("|" not in part for part in sections(text).values())

    assert "No evaluation was run" in by_id["evaluation"]


def test_report_evaluation_section_and_out_path(run_dir: Path, tmp_path: Path) -> None:
    RunDir(run_dir).eval_dir.mkdir()
    (RunDir(run_dir).eval_dir / "results.json").write_text(json.dumps({"rows": [
        {"model": "base", "iteration": None, "scores": {"ifeval": 0.25, "gsm8k": 0.1}},
        {"model": "M_1", "iteration": 1, "scores": {"ifeval": 0.3, "gsm8k": 0.125}},
        {"model": "M_2<x>", "iteration": 2, "scores": {"ifeval": 0.35}}]}))
    out = write_report(run_dir, tmp_path / "elsewhere" / "r.html")
    assert out == tmp_path / "elsewhere" / "r.html" and not (run_dir / "report.html").exists()
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert len(page.plots()) == PLOTS_WITHOUT_EVAL + 1
    evaluation = sections(text)["evaluation"]
    assert "No evaluation was run" not in evaluation and "M_2&lt;x&gt;" in evaluation
    table = next(rows for _, rows in page.tables if rows[0][:2] == ["model", "iteration"])
    assert table == [["model", "iteration", "ifeval", "gsm8k"], ["base", "–", "0.250", "0.100"],
                     ["M_1", "1", "0.300", "0.125"], ["M_2<x>", "2", "0.350", "–"]]


def test_report_never_raises_on_a_broken_or_empty_run(tmp_path: Path) -> None:
    root = tmp_path / "bare"
    root.mkdir()
    rd = RunDir(root)
    rd.run_json.write_text("{}")
    text = write_report(root).read_text(encoding="utf-8")
    assert 'id="funnel"' in text and "No evaluation was run" in text
    rd.config_yaml.write_text("iterations: 1\n")
    rd.iter_dir(1).mkdir()
    rd.path(1, "generated").write_text('{"id": "x", "instruction": "trunc')  # cut mid-line
    rd.manifest_path(1, "review_seed").write_text("not json")
    rd.eval_dir.mkdir()
    (rd.eval_dir / "results.json").write_text('{"no rows": []}')
    text = write_report(root).read_text(encoding="utf-8")
    assert "could not render this part" in text and "generated.jsonl:1" in text
    assert sections(text)["iter-1"].count("not reached") >= 3


def test_report_refuses_a_directory_without_run_json(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match=r"no run\.json"):
        write_report(tmp_path)


def test_cli_report(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.is_file()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "lance: error:" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# helpers: exact values on hand-made texts
# --------------------------------------------------------------------------------------------
def test_distinct_n_counts_lowercased_words_within_each_text() -> None:
    texts = ["The cat sat.", "the CAT ran"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)  # the, cat, sat, ran of 6 words
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # (the cat) twice; no pair across texts
    assert distinct_n(["a a a a"], 1) == pytest.approx(1 / 4)
    assert distinct_n(["one"], 2) is None and distinct_n([], 1) is None


def test_self_rouge_is_the_mean_pairwise_rouge_l_f1() -> None:
    assert self_rouge(["the cat sat", "the cat sat"]) == pytest.approx(1.0)
    # LCS(the cat sat, the cat ran) = 2 of 3 words -> F1 2/3; the third text shares nothing
    assert self_rouge(["the cat sat", "the cat ran", "dogs bark loudly"]) == pytest.approx((2 / 3 + 0 + 0) / 3)
    assert self_rouge(["alone"]) is None
    # more texts than the cap: a fixed-seed sample, so the same value every time
    many = [f"word{i} common text" for i in range(30)]
    assert self_rouge(many, max_texts=10) == self_rouge(many, max_texts=10) == pytest.approx(2 / 3)


def test_diversity_lengths() -> None:
    d = diversity(["ab abcd", "abc"])
    assert d["texts"] == 2 and d["mean length (words)"] == pytest.approx(1.5)
    assert d["mean word length (chars)"] == pytest.approx(3.0)


# --------------------------------------------------------------------------------------------
# the browser renders it
def test_report_judge_section(run_dir: Path) -> None:
    first = write_report(run_dir).read_text(encoding="utf-8")
    assert "was not measured" in sections(first)["judge"]
    # in the run itself: g4 (raw 3.6) was degraded from seed-3 (raw 3.8): scored below it, in
    # iterations 1 and 2 (3 stopped before its review)
    degraded = next(rows for _, rows in Page(first).tables if rows[0][0] == "iteration" and "95% CI" in rows[0])
    assert degraded == [["iteration", "degraded answers", "scored below their seed answer", "95% CI", "unscored"],
                        ["1", "1", "1.000", "0.206-1.000", "0"], ["2", "1", "1.000", "0.206-1.000", "0"]]
    kind = {"accuracy": 0.5}
    RunDir(run_dir).judge_json.write_text(json.dumps({"model": "m", "split": "test", "results": {
        "criteria": {"pairs": 10, "accuracy": 0.9, "ci95": [0.6, 0.98], "parse_failure_rate": 0.0,
                     "seconds_per_pair": 0.25, "per_kind": {"truncated": kind}}}}))
    text = write_report(run_dir).read_text(encoding="utf-8")
    table = next(rows for _, rows in Page(text).tables if rows[0][:2] == ["mode", "pairs"])
    assert table == [["mode", "pairs", "accuracy", "95% CI", "parse failures", "s/pair", "truncated"],
                     ["criteria", "10", "0.900", "0.600-0.980", "0.000", "0.250", "0.500"]]


# --------------------------------------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


@pytest.mark.slow
def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    if not Path(CHROMIUM).is_file() and shutil.which("chromium") is None:
        pytest.skip(f"{CHROMIUM} not found: install Debian's `chromium` package (CI does, see .ci/run)")
    import matplotlib.image

    chromium = CHROMIUM if Path(CHROMIUM).is_file() else str(shutil.which("chromium"))
    url = write_report(run_dir).resolve().as_uri()
    base = [chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    res = subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,2400", url],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    pixels = matplotlib.image.imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (2400, 1280)
    assert pixels.std() > 0.05
    assert len({tuple(p) for p in pixels[::8, ::8].reshape(-1, 3).tolist()}) > 20  # not a single colour
    # the inlined PNGs were decoded and drawn: matplotlib's default blue (the curve) is on screen
    blue = (abs(pixels[..., 0] - 0x1F / 255) < 0.06) & (abs(pixels[..., 1] - 0x77 / 255) < 0.06) & (
        abs(pixels[..., 2] - 0xB4 / 255) < 0.06)
    assert blue.sum() > 50

    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = Page(dom.stdout)
    assert page.table("funnel")[1][0] == "1"
    assert len(page.plots()) >= PLOTS_WITHOUT_EVAL
    # every table is an HTML table: no section shows Markdown pipe syntax as text
    for name, part in sections(dom.stdout).items():
        shown = re.sub(r"<[^>]+>", " ", part)
        assert not re.search(r"\|\s*[-:]{3,}|\|\s*iter\s*\|", shown), f"section {name} shows a Markdown table"
    drift = next(rows for _, rows in page.tables if rows[0][:2] == ["iter", "new instructions: texts"])
    assert len(drift) == 4
