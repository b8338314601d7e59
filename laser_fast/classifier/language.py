"""The English filter LASER applies before selection (a fast stop-word heuristic)."""
from __future__ import annotations

import logging
import re
from typing import Iterable

import numpy as np

from laser_fast.classifier.features import _as_text

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# English detection
# --------------------------------------------------------------------------------------

_EN_STOP = frozenset(
    "the a an and or but of to in on at for with from by is are was were be been being it this that "
    "these those i you he she we they me my your our their his her its what which who whom how why "
    "when where can could would should will do does did not no yes have has had please if then than "
    "as so about into over under some any all more most other such only also just very there here "
    "write give tell explain make list".split()
)
_OTHER_STOP = {
    "fr": frozenset("le la les un une des et est dans pour que qui pas ne sur avec au aux du ce cette "
                    "je tu il elle nous vous ils sont mais ou donc comment pourquoi quel quelle".split()),
    "es": frozenset("el la los las un una y es en por para que con no se del al como pero más "
                    "este esta yo tú él ella nosotros son qué cómo cuál muy también".split()),
    "de": frozenset("der die das und ist nicht ein eine zu den mit von auf für sich des dem im "
                    "ich du er sie wir ihr es sind aber oder wie warum was wer auch noch".split()),
    "it": frozenset("il lo la gli le un una e è di che non per con del della sono ma come perché "
                    "questo questa io tu lui lei noi voi loro anche più".split()),
    "pt": frozenset("o a os as um uma e é de que não para com do da dos das em no na por mas "
                    "como eu você ele ela nós eles são também muito".split()),
    "nl": frozenset("de het een en is niet van op te dat die voor met zijn ik je hij zij wij "
                    "maar ook hoe waarom wat".split()),
    "id": frozenset("yang dan di ke dari ini itu dengan untuk tidak ada saya kamu dia kami "
                    "mereka adalah apa bagaimana".split()),
    "tr": frozenset("ve bir bu da de için ile ne ben sen o biz siz onlar değil nasıl neden".split()),
}
_RE_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)
# a digit or a single-letter variable next to an arithmetic / comparison operator
_RE_MATH_CONTEXT = re.compile(
    r"(?:\d|\b[^\W\d_]\b)\s*[=+\-−–×÷*/^<>≤≥≠±]\s*\(?\s*(?:\d|\b[^\W\d_]\b)", re.UNICODE)


def _is_latin_letter(c: str) -> bool:
    o = ord(c)
    return o < 0x250 or 0x1E00 <= o <= 0x1EFF  # Basic Latin .. Latin Extended-B, Latin Ext. Additional


def _english_one(t: str) -> bool:
    t = _as_text(t)
    if len(t) > 20_000:
        t = t[:10_000] + " " + t[-5_000:]
    letters = [c for c in t if c.isalpha()]
    if not letters:
        return True  # nothing to judge (empty, digits, emoji, symbols): not flagged
    non_latin = sum(1 for c in letters if not _is_latin_letter(c))
    if non_latin / len(letters) > 0.3:
        return False
    words = [w.lower() for w in _RE_WORD.findall(t)]
    if _RE_MATH_CONTEXT.search(t):
        # maths: single letters are variables ("2x + y = 11"), not the Spanish "y" / Italian "e"
        words = [w for w in words if len(w) > 1]
        nonspace = sum(1 for c in t if not c.isspace())
        if len(words) < 4 and len(letters) < 0.6 * nonspace:
            return True  # dominated by digits / operators / symbols, Latin letters only
    if not words:
        return True
    en = sum(1 for w in words if w in _EN_STOP)
    best_other = max(sum(1 for w in words if w in s) for s in _OTHER_STOP.values())
    accented = sum(1 for c in letters if ord(c) > 127) / len(letters)
    n = len(words)
    en_share = en / n
    if n >= 3 and best_other >= 2 and best_other > 1.5 * en and en_share < 0.2:
        return False
    if n >= 3 and accented > 0.03 and best_other >= 1 and best_other > en:
        return False
    if n >= 8 and en_share < 0.05 and accented > 0.02:
        return False
    return True


def is_english(texts: Iterable[str]) -> np.ndarray:
    """Flag texts that look English (LASER keeps English instructions only).

    A cheap offline heuristic: a text is *not* English when more than 30% of its letters come
    from a non-Latin script, or when stopwords of another language (fr, es, de, it, pt, nl, id,
    tr) clearly outnumber English ones, or when it has almost no English stopwords and many
    accented letters. Texts with no letters at all (empty, numbers, emoji, symbols) count as
    English so they are not dropped for want of evidence; code counts as English. In texts with
    arithmetic (``2x + y = 11``) single letters are treated as variables, not as foreign
    stopwords, and texts dominated by digits, operators and symbols count as English unless
    they contain a non-Latin script.

    Args:
        texts: the texts (any strings; never raises on odd input).

    Returns:
        Boolean array, True where the text looks English.

    Example:
        >>> is_english(["What is 2+2?", "今天天气怎么样？", "¿Dónde está la biblioteca?"]).tolist()
        [True, False, False]
    """
    return np.fromiter((_english_one(t) for t in texts), dtype=bool)


