"""Final-answer extraction and comparison in the Open-Reasoner-Zero style (no sympy).

``extract_boxed`` reads the last ``\\boxed{...}`` inside the last complete ``<answer>...</answer>`` block (a
truncated response without ``</answer>`` has no answer). ``answers_match`` normalises both sides MATH-style
(``\\dfrac``->``\\frac``, ``\\left``/``\\right``, ``$``, ``\\text{}``, spaces, ``x=`` prefixes, ...) and then compares
exactly as rational numbers when both parse (``\\frac{1}{2}`` == ``0.5`` == ``1/2``), else as strings.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = re.compile(r"\\boxed\s*\{")


def _braced(text: str, start: int) -> str | None:
    """Content of the brace group whose ``{`` is at ``text[start - 1]``; None if unbalanced."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (nested braces handled), or None."""
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    return _braced(text, matches[-1].end())


def extract_boxed(text: str) -> str | None:
    """The last ``\\boxed{...}`` content inside the last complete ``<answer>...</answer>`` block, or None.

    None when there is no complete answer block, or the last block holds no (balanced) ``\\boxed{}``.
    """
    blocks = _ANSWER_BLOCK.findall(text)
    if not blocks:
        return None
    content = last_boxed(blocks[-1])
    return None if content is None else content.strip()


def _unwrap(s: str, command: str) -> str:
    """Replaces every ``\\command{X}`` by ``X`` (nested braces handled)."""
    pattern = "\\" + command + "{"
    while (i := s.find(pattern)) >= 0:
        inner = _braced(s, i + len(pattern))
        if inner is None:
            break
        s = s[:i] + inner + s[i + len(pattern) + len(inner) + 1 :]
    return s


def _fix_fracs(s: str) -> str:
    r"""``\frac12`` -> ``\frac{1}{2}``, ``\frac1{2}`` -> ``\frac{1}{2}``."""
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def normalize_answer(answer: str) -> str:
    """MATH-style normalisation of an answer string (a ``\\boxed{}`` inside is unwrapped first)."""
    s = answer.strip()
    if (boxed := last_boxed(s)) is not None:
        s = boxed
    s = s.replace("\n", "").replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", "")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "").replace("$", "")
    for command in ("text", "textbf", "mathrm", "mbox"):
        s = _unwrap(s, command)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" ", "")
    # "x=5", "k = 5": keep the value when the left side is a short name.
    if s.count("=") == 1 and len(s.split("=")[0]) <= 2:
        s = s.split("=")[1]
    s = s.rstrip(".")
    if s.startswith("."):
        s = "0" + s
    s = s.replace("{.", "{0.").replace("-.", "-0.")
    return _fix_fracs(s)


_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")
_FRAC = re.compile(r"^(-?)\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}$")


def parse_number(s: str) -> Fraction | None:
    """An exact rational from a normalised answer: ``12``, ``-3.5``, ``1,000``, ``1/2``, ``\\frac{1}{2}``,
    ``1e-3``; None if it is not a plain number."""
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if m := _FRAC.match(s):
        sign, num, den = m.groups()
        try:
            value = Fraction(num) / Fraction(den)
        except (ValueError, ZeroDivisionError):
            return None
        return -value if sign else value
    try:
        value = Fraction(s)
    except (ValueError, ZeroDivisionError):
        try:  # exponent forms such as 1e-3 that Fraction rejects in some spellings
            f = float(s)
        except ValueError:
            return None
        return Fraction(f) if math.isfinite(f) else None
    return value


def answers_match(pred: str | None, truth: str, *, rel_tol: float = 0.0) -> bool:
    """True when ``pred`` and ``truth`` are the same answer after normalisation.

    Numbers compare exactly as rationals (optionally within ``rel_tol``); everything else as normalised strings.
    ``pred=None`` (no extractable answer) is never a match.
    """
    if pred is None:
        return False
    a, b = normalize_answer(pred), normalize_answer(truth)
    if not a:
        return False
    x, y = parse_number(a), parse_number(b)
    if x is not None and y is not None:
        return x == y or (rel_tol > 0 and math.isclose(float(x), float(y), rel_tol=rel_tol))
    return a == b
