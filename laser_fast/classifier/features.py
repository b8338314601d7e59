"""Text features of instructions shared by the classifiers and scripts/train_classifier.py:
the text the embedder reads and cheap lexical features."""
from __future__ import annotations

import logging
import re
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# helpers shared with scripts/train_classifier.py
# --------------------------------------------------------------------------------------

def _want_progress(show_progress: bool | None) -> bool:
    if show_progress is None:
        return logger.isEnabledFor(logging.INFO)
    return bool(show_progress)


def _as_text(t: object) -> str:
    if t is None:
        return ""
    if not isinstance(t, str):
        t = str(t)
    return t


def embedding_text(text: str, head_words: int = 150, tail_words: int = 50) -> str:
    """The text actually embedded: long texts keep their start and their end.

    MiniLM reads at most 256 word pieces, but the instruction of a long prompt is often at the
    end ("<passage> ... Summarize this."), so long texts become ``first words ... last words``.

    Args:
        text: the instruction.
        head_words: words kept from the start.
        tail_words: words kept from the end.

    Returns:
        The (possibly shortened) text.
    """
    text = _as_text(text)
    if len(text) > 200_000:  # huge inputs: never split the whole thing
        text = text[:100_000] + " " + text[-20_000:]
    words = text.split()
    if len(words) <= head_words + tail_words:
        return " ".join(words)
    return " ".join(words[:head_words]) + " ... " + " ".join(words[-tail_words:])


def opening_text(text: str, n_words: int = 24) -> str:
    """The first ``n_words`` words of a text: the view of its opening instruction.

    A long prompt's embedding is dominated by its pasted passage or details; the opening words
    usually say what to do with them ("Summarize the following ...", "Rewrite this email ...").
    """
    return " ".join(_as_text(text)[:20_000].split()[:n_words])


_RE_FENCE = re.compile(r"```|~~~")
_RE_CODE = re.compile(
    r"(\bdef |\bclass |\breturn\b|\bimport |#include|\bpublic |\bvoid |\bfunction\b|=>|\bconst |"
    r"\blet |\bvar |\bprintf|\bprint\(|console\.log|\bSELECT\b|\bFROM\b|\bWHERE\b|</?[a-z]+>|"
    r"\bfor \(|\bwhile \(|\bif \(|;\s*$|\{\s*$|^\s*\}|\w+\(\)|\w+\.\w+\()",
    re.MULTILINE,
)
_RE_CODE_WORDS = re.compile(
    r"\b(python|java|javascript|typescript|c\+\+|c#|golang|rust|sql|html|css|bash|regex|api|"
    r"function|code|script|program|compile|debug|bug|array|string|class|git|docker|json|"
    r"numpy|pandas|react|node\.?js|kotlin|swift|php|ruby|scala|haskell|lua|excel formula)\b",
    re.IGNORECASE,
)
_RE_LATEX = re.compile(r"\$[^$]+\$|\\(frac|int|sum|sqrt|begin|lim|cdot|times|pi|alpha|theta|infty)\b")
_RE_MATHOP = re.compile(r"\d\s*[-+*/^=×÷<>]\s*\(?\s*[\dxyn]|[xyn]\s*[\^=+*/]\s*\d|\d\s*%")
_RE_NUM = re.compile(r"\d+(?:[.,]\d+)?")
_RE_MONEY = re.compile(r"[$€£]\s?\d")
_RE_MATH_WORDS = re.compile(
    r"\b(solve|equation|integral|derivative|probability|calculate|compute|sum of|how many|"
    r"how much|percent|average|ratio|prime|factor|polynomial|matrix|theorem|prove|fraction|"
    r"area|perimeter|volume|x\s*=|find x|value of)\b",
    re.IGNORECASE,
)
_RE_WH = re.compile(r"^\W*(what|who|whom|whose|when|where|which|how many|how much|how tall|how long|"
                    r"how old|how far|is|are|was|were|did|does|do|name)\b", re.IGNORECASE)
_RE_PASSAGE_CUE = re.compile(
    r"\b(passage|paragraph|article|text below|following text|the text|this text|given text|"
    r"excerpt|transcript|abstract|document|email below|the following|above|summari[sz]e|"
    r"summary|tl;?dr|extract|according to|based on the|context)\b",
    re.IGNORECASE,
)
_RE_GEN_CUE = re.compile(
    r"\b(write|compose|draft|poem|story|essay|letter|email|song|lyrics|script|pretend|act as|"
    r"act like|role|rewrite|paraphrase|translate|caption|slogan|tweet|post|speech|haiku|"
    r"describe yourself|you are a|imagine)\b",
    re.IGNORECASE,
)
_RE_REASON_CUE = re.compile(
    r"\b(riddle|puzzle|logic|logical|deduce|conclude|step by step|step-by-step|if all|some are|"
    r"true or false|syllogism|knights?|knaves?|sequence|next in|analogy|odd one out|valid)\b",
    re.IGNORECASE,
)

#: Names of the lexical features, in order (stored with the trained head).
LEXICAL_FEATURES = (
    "code_fence", "code_tokens", "code_words", "latex", "math_ops", "numbers", "money",
    "math_words", "digit_share", "log_chars", "log_lines", "long_passage", "question_mark",
    "short", "wh_start", "passage_cue", "gen_cue", "reason_cue", "colon_newline", "quote",
)


def lexical_features(texts: Sequence[str]) -> np.ndarray:
    """Cheap lexical features of each text (float32, shape ``(n, len(LEXICAL_FEATURES))``).

    Args:
        texts: instructions (any strings; None is treated as empty).

    Returns:
        The feature matrix; counts are squashed with ``log1p``.
    """
    out = np.zeros((len(texts), len(LEXICAL_FEATURES)), dtype=np.float32)
    for i, t in enumerate(texts):
        t = _as_text(t)
        if len(t) > 50_000:
            t = t[:40_000] + "\n" + t[-10_000:]
        n = len(t)
        if n == 0:
            continue
        words = t.split()
        nw = len(words)
        lines = t.count("\n") + 1
        digits = sum(c.isdigit() for c in t)
        out[i] = (
            1.0 if _RE_FENCE.search(t) else 0.0,
            np.log1p(len(_RE_CODE.findall(t))),
            np.log1p(len(_RE_CODE_WORDS.findall(t))),
            np.log1p(len(_RE_LATEX.findall(t))),
            np.log1p(len(_RE_MATHOP.findall(t))),
            np.log1p(len(_RE_NUM.findall(t))),
            np.log1p(len(_RE_MONEY.findall(t))),
            np.log1p(len(_RE_MATH_WORDS.findall(t))),
            digits / n,
            np.log1p(n) / 10.0,
            np.log1p(lines),
            1.0 if (nw > 120 or (lines > 3 and nw > 60)) else 0.0,
            1.0 if "?" in t else 0.0,
            1.0 if nw <= 12 else 0.0,
            1.0 if _RE_WH.search(t) else 0.0,
            np.log1p(len(_RE_PASSAGE_CUE.findall(t))),
            np.log1p(len(_RE_GEN_CUE.findall(t))),
            np.log1p(len(_RE_REASON_CUE.findall(t))),
            1.0 if re.search(r":\s*\n", t) else 0.0,
            1.0 if re.search(r"[\"“”].{40,}[\"“”]", t, re.DOTALL) else 0.0,
        )
    return out


