"""The `checks` judge: checks the model writes as code, kept only when their own asserts hold, run
in a limited child process (lance_llm.sandbox) on every answer; scripted model, no real one."""

from __future__ import annotations

import time

from conftest import ScriptedBackend
from lance_llm.backends.base import GenerateRequest, ScoreRequest
from lance_llm.config import ReviewConfig
from lance_llm.records import Sample
from lance_llm.sandbox import check_code, run_checks
from lance_llm.stages.review import CHECK_PREFIX, review

DEF = CHECK_PREFIX.split("\n", 1)[1]  # the `def` line, without the opening code fence
BODY = "    return ',' not in response\n\nassert check('hi there')\nassert not check('a, b')\n"
NO_COMMA = DEF + BODY


def test_run_checks_keeps_what_runs_and_passes_its_own_asserts() -> None:
    codes = [
        NO_COMMA,
        DEF + "    return True\nassert check('a')\nassert not check('b')\n",  # fails its own test
        DEF + "    import os\n    return bool(os.listdir('.'))\n",  # import refused when called
        DEF + "    while True:\n        pass\n",  # runs forever: cut by the alarm
        DEF + "    print('noise')\n    return len(response) > 3\n",  # printing is harmless
        "import subprocess\n" + DEF + "    return True\n",  # import refused at definition
        DEF + "    return open('/etc/passwd').read() != ''\n",  # no file access
        DEF + "    return True\ndef test_check():\n    assert check('a')\n    assert not check('b')\n",  # run too
    ]
    cases = [(0, "no commas here"), (0, "one, two"), (1, "x"), (2, "x"), (3, "x"), (4, "long enough"), (4, "no"),
             (5, "x"), (6, "x")]
    t0 = time.time()
    valid, results = run_checks(codes, cases)
    assert valid == [True, False, True, True, True, False, True, False]
    assert results == [True, False, None, None, None, True, False, None, None]
    assert time.time() - t0 < 30  # the endless check cost about a second


def test_check_code_needs_a_test_both_ways() -> None:
    assert check_code(CHECK_PREFIX, BODY + "```\nsome prose after") == NO_COMMA
    assert check_code(CHECK_PREFIX, "    return True\nassert check('x')\n") is None  # never tested failing
    assert check_code(CHECK_PREFIX, "    return True\nassert check('x') == False\n") is None  # never passing
    assert check_code(CHECK_PREFIX, "    return 'a' in response\nassert check('a')\nassert check('b') is False")


def test_checks_mode_scores_by_the_share_of_kept_checks_and_falls_back_without_one() -> None:
    def gen(req: GenerateRequest) -> list[str]:
        assert req.prefix == CHECK_PREFIX and "check(response)" in req.messages[-1][1]
        if "without commas" in req.messages[-1][1]:
            return [BODY + "```", "    return True\nassert check('a')\nassert not check('b')",
                    "no code at all"][: req.sampling.n]
        return ["    return False\n"] * req.sampling.n  # no test of its own: never kept

    def score(req: ScoreRequest) -> list[float]:  # the likelihood fallback: -1 nats everywhere
        return [-1.0]

    samples = [Sample("a", "Answer without commas.", "fine answer"), Sample("b", "Answer without commas.", "a, b"),
               Sample("c", "Tell a story.", "Once upon a time.")]
    cfg = ReviewConfig(mode="checks")
    cfg.checks.samples = 3
    out, stats = review(samples, ScriptedBackend(gen, score), cfg, "sys", seed=0)
    a, b, c = (s.review for s in out)
    assert a.samples[:2] == [1.0, 1] and b.samples[:2] == [0.0, 1]  # one check kept of three
    fallback = a.samples[2]
    assert a.score == round(9 + 0.1 * fallback, 4) and b.score == round(0.1 * fallback, 4)
    assert c.samples[:2] == [None, 0] and c.score == fallback  # no check survived: the fallback judge
    assert a.replies == [NO_COMMA] and stats.scored == 3
