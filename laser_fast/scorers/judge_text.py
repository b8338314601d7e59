"""Parsing judge answers and the judges' score formulas."""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# parsing helpers
# --------------------------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)


def strip_think(text: str) -> str:
    """Remove ``<think>...</think>`` blocks (an unterminated one, a cut-off reasoning, removes the rest)."""
    text = _THINK.sub("", text or "")
    i = text.lower().find("<think>")
    if i >= 0:
        text = text[:i]
    return text.replace("</think>", "").strip()


def _balanced(text: str, start: int) -> str | None:
    """The balanced ``{...}`` / ``[...]`` starting at ``start`` (string-aware), or None."""
    open_c = text[start]
    close_c = "}" if open_c == "{" else "]"
    depth, in_str, esc = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return text[start : i + 1] if ch == close_c else None
    return None


def extract_json(text: str | None, want: type | tuple[type, ...] = (dict, list)) -> Any:
    """The first JSON value of type ``want`` found in an LLM answer, or None.

    Tries, in order: the whole answer, fenced code blocks, then every balanced ``{...}`` / ``[...]``
    span (so leading prose and trailing text are ignored). ``<think>`` blocks are removed first.
    Raw newlines and tabs inside strings (a common slip of served models writing code into a
    JSON string) are read as they are.
    """
    if not text:
        return None
    text = strip_think(text)
    cands = [text]
    cands += [m.group(1) for m in _FENCE.finditer(text)]
    for cand in cands:
        try:
            v = json.loads(cand.strip(), strict=False)
            if isinstance(v, want):
                return v
        except ValueError:
            pass
    for i, ch in enumerate(text):
        if ch in "{[":
            span = _balanced(text, i)
            if span is None:
                continue
            try:
                v = json.loads(span, strict=False)
            except ValueError:
                try:  # trailing commas are a common slip
                    v = json.loads(re.sub(r",\s*([}\]])", r"\1", span), strict=False)
                except ValueError:
                    continue
            if isinstance(v, want):
                return v
    return None


def _levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Edit distance (insert / delete / substitute, cost 1 each) between two sequences."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def line_edit_similarity(original: Sequence[str], revised: Sequence[str]) -> float:
    """``(L - d) / L`` with ``d`` the Levenshtein distance between the two line lists and ``L`` the
    longer list's length (1.0 for two empty lists); the reference's normalised edit similarity."""
    n = max(len(original), len(revised))
    if n == 0:
        return 1.0
    return (n - _levenshtein(list(original), list(revised))) / n


_CODE_FENCE = re.compile(r"```[A-Za-z0-9_+#.\-]*")


def _clean_code(code: Any) -> str:
    """Code from the judge's JSON: literal ``\\n`` become newlines, Markdown fences go."""
    if code is None:
        return ""
    if not isinstance(code, str):
        code = str(code)
    return _CODE_FENCE.sub("", code.replace("\\n", "\n"))


def code_quality_formula(correct: bool, code_original: str, code_revision: str, min_code_lines: int = 4) -> float:
    """The code-quality score of one reviewed response (reference: ``code_quality_scorer.py``).

    With ``O`` / ``R`` the stripped line lists of the original and revised code and
    ``sim = line_edit_similarity(O, R)``:

    * no code in the response (``O`` empty or ``"no code"``): 0.5 if judged correct, else 0.0;
    * judged correct and unrevised (``R`` starts with ``"no revision"``) with at least
      ``min_code_lines`` lines (reference: more than 3): 1.0;
    * otherwise ``sim`` if judged correct, ``0.5 * sim`` if incorrect, where an unrevised short
      snippet is compared with the one-line marker ``"no revision"`` as the reference does.

    Scale: [0, 1].
    """
    o = _clean_code(code_original).strip().splitlines()
    r = _clean_code(code_revision).strip().splitlines()
    if not o or o[0].strip().lower().strip(".") == "no code":
        return 0.5 if correct else 0.0
    unrevised = not r or r[0].strip().lower().strip(".") == "no revision"
    if correct and unrevised and len(o) >= min_code_lines:
        return 1.0
    sim = line_edit_similarity(o, r if r else ["no revision"])
    return sim if correct else 0.5 * sim


def if_quality_formula(followed: Sequence[bool]) -> float:
    """The constraint part of the IF-quality score (reference: ``if_quality_scorer.py``).

    With ``n`` checked constraints of which ``k`` were followed, ``share = k / n`` and the score is
    ``share * k`` when ``0 < k < 10`` (more followed constraints rank higher), else ``share``
    (0.0 when nothing was checked). Scale: [0, 9].
    """
    n = len(followed)
    if n == 0:
        return 0.0
    k = sum(1 for f in followed if f is True)
    share = k / n
    return share * k if 0 < k < 10 else share


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + " ..."


# --------------------------------------------------------------------------------------------
# scorers
# --------------------------------------------------------------------------------------------


