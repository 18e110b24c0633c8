"""Tests for the judge and generator parsers: parse_score, expected_score, parse_final_answer.

Method (steps 1-3): parse a case-insensitive `score: <number>`, keep values in [0, 10]; a reply
without a parsable score has no score (never 0). Generation keeps the text after `Final Answer:`
and drops replies without it.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lance_llm.stages.generate import parse_final_answer
from lance_llm.stages.review import SCORE_TOKENS, expected_score, parse_score

LONG_TEXT = ("The response is relevant and addresses the question. " * 2000) + "\nscore: 6"

# --------------------------------------------------------------------------------------------
# parse_score
# --------------------------------------------------------------------------------------------

SCORE_CASES = [
    # (reply, expected)
    ("score: 7", 7.0),
    ("Score: 7", 7.0),
    ("SCORE: 7", 7.0),
    ("sCoRe: 3", 3.0),
    ("Score:7", 7.0),
    ("score:   9", 9.0),
    ("**Score:** 8", 8.0),
    ("**Score**: 8", 8.0),
    ("score: 8/10", 8.0),
    ("Score: 8 / 10", 8.0),
    ("score: 10/10", 10.0),
    ("score: 4/5", None),  # another scale: rejected, not rescaled
    ("score: 8/100", None),
    ("score: 7.5", 7.5),
    ("score: 0.25", 0.25),
    ("score: 10.0", 10.0),
    ("score: 7.5/10", 7.5),
    ("score: 0", 0.0),
    ("score: 10", 10.0),
    ("score: 100", None),  # not read as 10 followed by a stray 0
    ("score: 11", None),
    ("score: 10.5", None),
    ("score: -3", None),
    ("score: -0.5", None),
    ("score = 6", 6.0),
    ("The response is fine.\nscore: 7.", 7.0),  # end of a sentence: the period is not a decimal
    ("I give it a final score: 7. It is good.", 7.0),
    ("score: 3\nOn reflection, score: 8", 8.0),  # last one wins
    ("score: 9\nscore: 2\nscore: 5", 5.0),
    ("Rubric says: score: <points>\nThe answer is accurate.\nscore: 6", 6.0),
    ("score: <points>", None),  # only the rubric placeholder
    ("The answer is accurate and well structured.", None),
    ("", None),
    ("score:", None),
    ("score: seven", None),
    ("score: .5", None),  # no leading digit: not a number this parser accepts
    ("Réponse claire et précise ✓ — très bien.\nScore : 9", 9.0),
    ("回答清晰。score: 6 分", 6.0),
    ("Überzeugend 👍\n\nscore: 4", 4.0),
    ("score:\n7", 7.0),
    (LONG_TEXT, 6.0),
    ("The score: is missing here", None),
]


@pytest.mark.parametrize(("reply", "expected"), SCORE_CASES, ids=[f"case{i}" for i in range(len(SCORE_CASES))])
def test_parse_score(reply: str, expected: float | None) -> None:
    got = parse_score(reply)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)
        assert isinstance(got, float)


def test_parse_score_none_input() -> None:
    assert parse_score(None) is None  # type: ignore[arg-type]


def test_parse_score_last_wins_even_after_a_valid_fraction() -> None:
    assert parse_score("**Score:** 9/10\n\nRevised score: 4/10") == 4.0


def test_parse_score_huge_number_is_rejected_not_overflowing() -> None:
    assert parse_score("score: 1" + "0" * 400) is None
    assert parse_score("score: 5/" + "1" * 5000) is None


def test_parse_score_boundary_values_kept() -> None:
    assert parse_score("score: 0") == 0.0
    assert parse_score("score: 10") == 10.0
    assert parse_score("score: 10.01") is None


# --------------------------------------------------------------------------------------------
# expected_score
# --------------------------------------------------------------------------------------------


def test_expected_score_has_eleven_tokens() -> None:
    assert tuple(str(i) for i in range(11)) == SCORE_TOKENS


@pytest.mark.parametrize("k", range(11))
def test_expected_score_all_mass_on_one_token(k: int) -> None:
    lps = [-math.inf] * 11
    lps[k] = 0.0
    assert expected_score(lps) == pytest.approx(float(k))


def test_expected_score_nearly_all_mass_on_one_token() -> None:
    lps = [-50.0] * 11
    lps[9] = 0.0
    assert expected_score(lps) == pytest.approx(9.0, abs=1e-12)


@pytest.mark.parametrize("level", [0.0, -1.0, -2.3979, -700.0, -1e6])
def test_expected_score_uniform_is_five(level: float) -> None:
    assert expected_score([level] * 11) == pytest.approx(5.0)


def test_expected_score_stable_with_very_negative_logprobs() -> None:
    # exp(-1e5) underflows to 0 without max-subtraction; the result must still be finite and right
    lps = [-1e5] * 11
    lps[3] = -1e5 + math.log(3.0)  # three times as likely as each other token
    got = expected_score(lps)
    want = (3 * 3 + sum(i for i in range(11) if i != 3)) / (3 + 10)
    assert math.isfinite(got)
    assert got == pytest.approx(want)


def test_expected_score_two_tokens_split_evenly() -> None:
    lps = [-math.inf] * 11
    lps[4] = lps[8] = math.log(0.5)
    assert expected_score(lps) == pytest.approx(6.0)


def test_expected_score_unnormalised_logprobs() -> None:
    # only relative mass matters: the distribution is restricted to the 11 score tokens
    a = [-(i % 4) - 3.0 for i in range(11)]
    b = [x - 42.0 for x in a]
    assert expected_score(a) == pytest.approx(expected_score(b))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-1e6, max_value=0.0), min_size=11, max_size=11))
def test_expected_score_in_range(lps: list[float]) -> None:
    got = expected_score(lps)
    assert math.isfinite(got)
    assert -1e-9 <= got <= 10 + 1e-9


# --------------------------------------------------------------------------------------------
# parse_final_answer
# --------------------------------------------------------------------------------------------

FINAL_CASES = [
    ("Thought Process: short.\nFinal Answer: Write a haiku about rain.", "Write a haiku about rain."),
    ("Thought Process: I will rewrite it.", None),
    ("", None),
    ("final answer: lower case works", "lower case works"),
    ("FINAL ANSWER: UPPER CASE WORKS", "UPPER CASE WORKS"),
    ("Thought Process: x\n**Final Answer:** Name three moons of Jupiter.", "Name three moons of Jupiter."),
    ("**Final Answer**: Name three moons of Saturn.", "Name three moons of Saturn."),
    ("Final Answer: first try\nHmm, no.\nFinal Answer: second try", "second try"),
    ("Final Answer:", None),
    ("Final Answer:    \n\n  ", None),
    ('Final Answer: ""', None),
    ('Final Answer: "Describe the water cycle."', "Describe the water cycle."),
    ("Final Answer: 'Describe the carbon cycle.'", "Describe the carbon cycle."),
    (
        "Final Answer: Summarise this text.\n\nText: The quick brown fox.\nIt jumps.",
        "Summarise this text.\n\nText: The quick brown fox.\nIt jumps.",
    ),
    ("Final Answer：Full-width colon works.", "Full-width colon works."),
    ("Thought Process: the final answer should be short.\nFinal Answer: Be short.", "Be short."),
]


@pytest.mark.parametrize(("reply", "expected"), FINAL_CASES, ids=[f"case{i}" for i in range(len(FINAL_CASES))])
def test_parse_final_answer(reply: str, expected: str | None) -> None:
    assert parse_final_answer(reply) == expected


def test_parse_final_answer_none_input() -> None:
    assert parse_final_answer(None) is None  # type: ignore[arg-type]


def test_parse_final_answer_inner_quotes_not_a_wrapping_pair() -> None:
    # The first and last characters are quotes, but they belong to two separate quoted titles:
    # stripping them leaves unbalanced quotes ('Hamlet" vs "Macbeth').
    reply = 'Final Answer: "Hamlet" vs "Macbeth"'
    assert parse_final_answer(reply) == '"Hamlet" vs "Macbeth"'


def test_parse_final_answer_bold_answer_not_left_half_stripped() -> None:
    # The marker regex swallows the opening `**`; the closing `**` must not be left dangling.
    reply = "Final Answer: **Write a haiku about rain.**"
    assert parse_final_answer(reply) == "Write a haiku about rain."


def test_parse_final_answer_code_fence_wrapper() -> None:
    # The docstring promises that a wrapping code fence is presentation; stripping one backtick per
    # side leaves "``\n...\n``".
    reply = "Final Answer:\n```\nWrite a Python function that reverses a string.\n```"
    assert parse_final_answer(reply) == "Write a Python function that reverses a string."


# --------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------

score_like = st.one_of(
    st.text(),
    st.builds(
        lambda pre, num, tail: f"{pre}score: {num}{tail}",
        st.text(max_size=30),
        st.one_of(st.integers(-1000, 1000).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                  st.text(alphabet="0123456789./-", max_size=12)),
        st.text(max_size=30),
    ),
)


@settings(max_examples=400, deadline=None)
@given(score_like)
def test_parse_score_never_raises_and_stays_in_range(text: str) -> None:
    got = parse_score(text)
    assert got is None or (isinstance(got, float) and math.isfinite(got) and 0.0 <= got <= 10.0)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10), st.text(alphabet=st.characters(blacklist_categories=("Nd",)), max_size=40))
def test_parse_score_reads_a_trailing_valid_score(n: int, prefix: str) -> None:
    # whatever (digit-free) text precedes it, a final `score: n` line is what counts
    assert parse_score(f"{prefix}\nscore: {n}") == float(n)


final_like = st.one_of(
    st.text(),
    st.builds(lambda a, b: f"{a}Final Answer:{b}", st.text(max_size=40), st.text(max_size=40)),
)


@settings(max_examples=400, deadline=None)
@given(final_like)
def test_parse_final_answer_never_raises(text: str) -> None:
    got = parse_final_answer(text)
    assert got is None or (isinstance(got, str) and got == got.strip() and got != "")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters=":：\"'`*", blacklist_categories=("Cs",)), min_size=1,
               max_size=60).filter(lambda s: s.strip() and "final" not in s.lower()))
def test_parse_final_answer_roundtrip(answer: str) -> None:
    assert parse_final_answer(f"Thought Process: think.\nFinal Answer: {answer}") == answer.strip()
