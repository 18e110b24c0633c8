"""GSM8K scoring (evaluate/gsm8k.py): lm-eval's flexible-extract filter and exact match, on made-up
replies. The generation path against lm-eval's own is in test_eval_real.py (slow)."""

from __future__ import annotations

import pytest

from lance_llm.evaluate import gsm8k

REF = "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips altogether.\n#### 72"


@pytest.mark.parametrize(("reply", "want"), [
    (" She sold 48 + 24 = 72 clips.", 1.0),                    # the last number counts
    (" 72 clips, not 48.", 0.0),                                # ... not the first
    (" The answer is $72.", 1.0),                               # "$" and a final "." are ignored
    (" In all: 1,072 - 1,000 = 72", 1.0),
    (" 72.5", 0.0),
    (" I do not know.", 0.0),                                   # no number: lm-eval's "[invalid]"
    ("", 0.0),
])
def test_last_number_exact_match(reply: str, want: float) -> None:
    assert gsm8k.correct(reply, REF) == want


def test_thousands_separator_in_the_reference() -> None:
    assert gsm8k.correct("It costs 1,200 dollars.", "... #### 1,200") == 1.0
    assert gsm8k.correct("It costs 1200 dollars.", "... #### 1,200") == 1.0
