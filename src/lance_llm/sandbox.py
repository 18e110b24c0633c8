"""Run checks the model wrote (`def check(response) -> bool` plus its own asserts) on answers.

    valid, results = run_checks(codes, [(0, "an answer"), (0, "another"), (2, "a third")])
    # valid[i]: code i ran, defines check(), and its own asserts (one must pass, one must fail) held
    # results[k]: check(text) of case k as True / False, or None (invalid code, error or timeout)

The code is the model's own output, so it runs in a child Python process (`python -I`) under a
CPU-time and memory limit, each call under a 1-second alarm, with builtins that cannot open files
or evaluate strings and imports limited to a few standard modules (re, string, math, json,
collections, itertools, unicodedata). That keeps a wrong or runaway check from hanging or
breaking a run; it is not a security boundary against hostile code (the loop runs offline on the
model's own text, and nothing the child prints is trusted beyond the JSON it returns).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence

TIMEOUT_S = 120  # the whole child process
_CHILD = r'''
import io, json, resource, signal, sys
out, sys.stdout = sys.stdout, io.StringIO()  # what a check prints is not our JSON
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
resource.setrlimit(resource.RLIMIT_CPU, (90, 90))
ALLOWED = {"re", "string", "math", "json", "collections", "itertools", "unicodedata"}
import builtins as B
_real_import = B.__import__

def _import(name, globals=None, locals=None, fromlist=(), level=0):
    if name.split(".")[0] not in ALLOWED:
        raise ImportError("module " + name + " is not available to checks")
    return _real_import(name, globals, locals, fromlist, level)

SAFE = {k: getattr(B, k) for k in (
    "abs all any bool chr dict divmod enumerate filter float frozenset int isinstance issubclass iter len list map "
    "max min next ord pow range repr reversed round set slice sorted str sum tuple zip print hasattr getattr "
    "Exception ValueError TypeError KeyError IndexError AssertionError ZeroDivisionError AttributeError "
    "StopIteration RuntimeError NameError ImportError").split()}
SAFE.update({"__import__": _import, "__build_class__": B.__build_class__, "__name__": "check"})

class Timeout(Exception):
    pass

def _alarm(signum, frame):
    raise Timeout()

signal.signal(signal.SIGALRM, _alarm)

def guarded(fn, *args):
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

job = json.loads(sys.stdin.read())
checks, valid = [], []
for code in job["codes"]:
    ns = {"__builtins__": SAFE}
    try:
        guarded(exec, compile(code, "<check>", "exec"), ns)
        for name, fn in list(ns.items()):  # asserts written inside test functions run too
            if name.startswith("test") and callable(fn):
                guarded(fn)
        ok = callable(ns.get("check"))
    except BaseException:
        ok = False
    checks.append(ns.get("check") if ok else None)
    valid.append(ok)
results = []
for i, text in job["cases"]:
    fn = checks[i]
    if fn is None:
        results.append(None)
        continue
    try:
        value = guarded(fn, text)
        results.append(value if isinstance(value, bool) else None)
    except BaseException:
        results.append(None)
out.write(json.dumps({"valid": valid, "results": results}))
'''

_FENCE = re.compile(r"\n```")
_ASSERT = re.compile(r"^\s*assert\s+(not\s+)?check\(.*$", re.M)
_FALSE = re.compile(r"(==|is)\s*False\s*(,.*)?$")


def check_code(prefix: str, reply: str) -> str | None:
    """The model's check as source: the prefilled `def` line (the prefix without its opening code
    fence) + its reply up to the closing fence; None unless it tests itself both ways (an assert
    that check() passes and one that it fails)."""
    code = prefix.split("\n", 1)[1] if prefix.startswith("```") else prefix
    code = (code + _FENCE.split(reply, maxsplit=1)[0]).rstrip() + "\n"
    expects = {not (m.group(1) or _FALSE.search(m.group(0))) for m in _ASSERT.finditer(code)}
    return code if expects == {True, False} else None


def run_checks(codes: Sequence[str], cases: Sequence[tuple[int, str]]) -> tuple[list[bool], list[bool | None]]:
    """(valid per code, result per case); see the module docstring. A code counts as valid when it
    runs, its asserts included (those inside `test*` functions too, which are called), and defines
    a callable `check`."""
    if not codes:
        return [], [None] * len(cases)
    job = json.dumps({"codes": list(codes), "cases": [[i, t] for i, t in cases]})
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", _CHILD], input=job, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
        out = json.loads(proc.stdout)
    except (subprocess.TimeoutExpired, ValueError):  # the child died or hung: every check counts as broken
        return [False] * len(codes), [None] * len(cases)
    return out["valid"], out["results"]
