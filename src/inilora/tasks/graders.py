"""Answer graders (docs/design.md §6). Both are strict on purpose: the released code's leniencies (integer
rounding, ×100/÷100, comparing a MATH prediction with itself) inflate scores, so none is kept.

GSM8K: the number after the *last* "The answer is" (the phrase MetaMathQA teaches), compared as an
exact rational with the reference. MATH: the last ``\\boxed{…}`` of the completion, checked for
mathematical equivalence with the reference's last box by ``math-verify``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from fractions import Fraction

ANSWER_PHRASE = "The answer is"

# after the phrase: optional ":" / "=", then an optionally signed, optionally currency-prefixed
# number with valid thousands groups, an optional decimal part or "/denominator"; a "%" or unit
# may follow and is ignored
_NUMBER = re.compile(
    r"""^[\s:=*]*                       # ": ", "**", spacing
    (?P<sign>[-−+]?)\s*
    (?:\\?\$|€|£|¥)?\s*                   # currency (also LaTeX "\\$")
    (?P<sign2>[-−]?)
    (?P<int>\d{1,3}(?:,\d{3})+|\d+)(?!,\d)
    (?P<frac>\.\d+)?
    (?:\s*/\s*(?P<den>\d{1,3}(?:,\d{3})+|\d+)(?!\.\d))?
    (?!\d|[,.]\d|\s*/\s*\d)            # the number ends here: "12,34", "3.5.2", "1/2/3" are no numbers
    """,
    re.VERBOSE,
)


def parse_number(text: str) -> Fraction | None:
    """The number at the start of ``text`` as an exact Fraction ("1,500" → 1500, "$18.00" → 18,
    "-3/4" → -3/4, "50 apples" → 50, "12%" → 12), or None when ``text`` does not start with one."""
    m = _NUMBER.match(text)
    if m is None:
        return None
    value = Fraction(m["int"].replace(",", "") + (m["frac"] or ""))
    if m["den"] is not None:
        den = Fraction(m["den"].replace(",", ""))
        if den == 0 or m["frac"]:
            return None  # "1/0", "1.5/2": not a plain fraction
        value /= den
    negative = (m["sign"] in ("-", "−")) != (m["sign2"] in ("-", "−"))
    return -value if negative else value


def extract_gsm8k(completion: str) -> Fraction | None:
    """The number right after the last "The answer is" in ``completion``; None if absent."""
    at = completion.rfind(ANSWER_PHRASE)
    if at < 0:
        return None
    return parse_number(completion[at + len(ANSWER_PHRASE):])


def gsm8k_reference(answer: str) -> str:
    """The reference of a GSM8K ``answer`` field: the text after "####"."""
    if "####" not in answer:
        raise ValueError(f"GSM8K answer without '####': {answer[-80:]!r}")
    return answer.rsplit("####", 1)[1].strip()


def grade_gsm8k(completion: str, reference: str) -> bool:
    """Exact numeric equality of the extracted answer with ``reference`` (itself parsed the same way)."""
    ref = parse_number(reference)
    if ref is None:
        raise ValueError(f"reference {reference!r} is not a number")
    pred = extract_gsm8k(completion)
    return pred is not None and pred == ref


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` (or ``\\fbox{…}``), nested braces balanced; ``\\boxed 5``
    (a one-token box) is accepted too. None when there is no complete box."""
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)\s*(\{|\s+)", text)]
    for m in reversed(starts):
        if m.group(1) != "{":  # "\boxed 5": up to the next whitespace or "$"
            token = re.match(r"[^\s$]+", text[m.end():])
            if token:
                return token.group(0)
            continue
        depth, i = 1, m.end()
        while i < len(text):
            ch = text[i]
            if ch == "\\" and i + 1 < len(text):  # skip escaped braces "\{" "\}"
                i += 2
                continue
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if depth == 0:
                return text[m.end():i]
            i += 1
    return None


def math_reference(solution: str) -> str:
    """The reference answer of a MATH ``solution``: its last box."""
    box = last_boxed(solution)
    if box is None:
        raise ValueError(f"MATH solution without \\boxed{{}}: {solution[-80:]!r}")
    return box


def grade_math(completion: str, reference: str) -> bool:
    """The completion's last box is mathematically equivalent to ``reference`` (math-verify, gold first)."""
    from math_verify import parse, verify

    pred = last_boxed(completion)
    if pred is None or not pred.strip():
        return False
    # math-verify's timeouts use SIGALRM, which works in the main thread only
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    with _quiet():
        gold = parse(f"${reference}$", parsing_timeout=timeout)
        target = parse(f"${pred}$", parsing_timeout=timeout)
        if not gold or not target:
            return False
        return bool(verify(gold, target, timeout_seconds=timeout))


@contextlib.contextmanager
def _quiet():
    """Silence math-verify's per-call warning that a timeout is off (it is, in worker threads)."""
    log = logging.getLogger("math_verify")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


__all__ = [
    "ANSWER_PHRASE",
    "extract_gsm8k",
    "grade_gsm8k",
    "grade_math",
    "gsm8k_reference",
    "last_boxed",
    "math_reference",
    "parse_number",
]
