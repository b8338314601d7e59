"""The classification stage: the public :func:`classify` function and the pipeline stage
that keeps given categories, classifies the rest and caches the result in the work directory."""
from __future__ import annotations

import copy
import hashlib
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Sequence

import numpy as np
import polars as pl

from laser_fast._version import __version__
from laser_fast.categories import CATEGORIES
from laser_fast.classifier.features import _as_text
from laser_fast.classifier.models import TaskClassifier, load_classifier
from laser_fast.config import SelectOptions
from laser_fast.errors import ConfigError
from laser_fast.runtime.engine import UnitTask
from laser_fast.runtime.stage import Resources, StageResult, StageSpec, StageStats
from laser_fast.runtime.workdir import WorkDir, _hash_strings, _iter_column
from laser_fast.scorers.cache import ScoreCache

logger = logging.getLogger(__name__)

#: category names by index (the per-conversation cache stores the index)
_LABELS = tuple(CATEGORIES)


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
    source: tuple | None = None,
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
        source: ``(model, device[, trust_remote_code])`` the classifier was loaded with: when a run's engine has
            workers (:func:`~laser_fast.runtime.engine.current_executor`), they load it from this
            and classify the windows; None: here.

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
    runner = _window_runner(clf, source, batch_size)
    labels, conf = clf.predict(flat, batch_size=batch_size, show_progress=show_progress, runner=runner)
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


class ClassifyTask(UnitTask):
    """Classification windows on an engine's workers: each loads the classifier once from the
    driver's ``(model, device)`` and returns the window's probabilities."""

    label = "classify"

    def __init__(self, model: str | None, device: str | None, batch_size: int, fingerprint: str, store_root: str | None = None,
                 trust_remote_code: tuple[str, ...] = ()):
        self.model, self.device, self.batch_size, self.fingerprint = model, device, int(batch_size), fingerprint
        self.store_root = store_root
        self.trust_remote_code = tuple(trust_remote_code)
        self.resources = CLASSIFY.resources
        self.uses_gpu = not str(device or "").startswith("cpu")

    def memory_mb(self) -> int:  # the classifier's estimate (load_classifier is lazy: nothing loads here)
        from laser_fast.classifier.memory import classifier_memory_mb

        return self.estimated_once(lambda: classifier_memory_mb(
            load_classifier(self.model, device=self.device, trust_remote_code=self.trust_remote_code), self.batch_size))

    def setup(self) -> None:
        from laser_fast.classifier.models import load_classifier

        self._clf = load_classifier(self.model, device=self.device, trust_remote_code=self.trust_remote_code).load()
        if hasattr(self._clf, "store_root"):
            self._clf.store_root = self.store_root
        if self._clf.fingerprint != self.fingerprint:
            raise RuntimeError(f"the classifier is {self._clf.fingerprint} on this worker and {self.fingerprint} on the driver: "
                               "install the same laser_fast and models on every node")

    def run(self, unit: pl.DataFrame) -> dict[str, np.ndarray]:
        texts = unit["text"].to_list()
        return {"probs": np.asarray(self._clf._predict_unique(texts, max(1, self.batch_size), False), dtype=np.float32)}


def _window_runner(clf: TaskClassifier, source: tuple | None, batch_size: int):
    """The classifier's windows on the run's engine (None: no engine with workers, or no source)."""
    from laser_fast.runtime.engine import current_executor

    ex = current_executor()
    if ex is None or source is None:
        return None
    task = ClassifyTask(source[0], source[1], batch_size, clf.fingerprint, getattr(clf, "store_root", None),
                        tuple(source[2]) if len(source) > 2 else ())
    return lambda windows: [p["probs"] for p in ex.map_units(task, [pl.DataFrame({"text": w}, schema={"text": pl.Utf8}) for w in windows])]


def classify_pool(records: pl.DataFrame, known: np.ndarray | None, opts: SelectOptions, workdir: WorkDir | str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Category and confidence per record: given categories are kept, the rest classified.

    Cached per conversation (its user turns) and classifier fingerprint in the work directory's
    score cache (``scores/categories-<key>/``, shards as the scorers' caches): a pool that grows,
    or another pool sharing conversations, classifies only what no run has classified."""
    stats: dict = {}
    n = records.height
    cats = np.full(n, None, dtype=object) if known is None else known.copy()
    conf = np.where(cats != None, 1.0, np.nan)  # noqa: E711
    todo = np.flatnonzero(cats == None)  # noqa: E711
    stats["given"] = int(n - todo.size)
    stats["classified"] = int(todo.size)
    if todo.size == 0:
        return cats, conf, stats
    from laser_fast.classifier.models import load_classifier

    clf = load_classifier(opts.classifier, device=opts.device, trust_remote_code=opts.trust_remote_code)
    stats["classifier"] = clf.fingerprint
    turns = records["user_turns"].to_list()
    sub = [turns[i] for i in todo]
    # per conversation: a pool that grows is classified only for its new conversations
    keys = [hashlib.blake2b("\x1f".join(t).encode("utf-8"), digest_size=12).hexdigest() for t in sub]
    cache = ScoreCache(workdir, "categories", f"classify|{clf.fingerprint}", ("category", "confidence"))
    found, vals = cache.lookup(keys, keys)
    miss = np.flatnonzero(~found)
    if miss.size:
        from laser_fast.runtime.engine import current_executor

        ex = current_executor()
        run_clf = clf
        if hasattr(clf, "store_root"):  # instruction vectors shared with the onepass scorer through the embedding store
            # the process-wide default keeps its loaded model and no work directory; loaded here only
            # when it runs here (an engine's workers load their own: this process may have no GPU)
            run_clf = copy.copy(clf if ex is not None else clf.load())
            run_clf.store_root = str(workdir)
        labs, cf = classify_conversations([sub[i] for i in miss], classifier=run_clf, batch_size=opts.batch_size,
                                          show_progress=opts.show_progress, source=(opts.classifier, opts.device, tuple(opts.trust_remote_code)))
        idx = np.asarray([_LABELS.index(lab) for lab in labs], dtype=np.float64)
        cf = np.asarray(cf, dtype=np.float64)
        cache.append([keys[i] for i in miss], [keys[i] for i in miss], {"category": idx, "confidence": cf})
        cache.compact()
        # where it ran: this process's device, or the engine's workers'
        stats["device"] = run_clf.used_device if ex is None else f"{ex.name} workers ({getattr(ex, 'worker_device', None) or 'their device'})"
        vals["category"][miss] = idx
        vals["confidence"][miss] = cf
    labels = np.asarray(_LABELS, dtype=object)[vals["category"].astype(np.int64)]
    c = vals["confidence"]
    stats["cache_hit"] = not miss.size
    stats["cached"] = int(found.sum())
    cats[todo] = labels
    conf[todo] = c
    return cats, conf, stats


def english_mask(records: pl.DataFrame, workdir: WorkDir | str | None = None, languages: Sequence[str] = ("en",)) -> np.ndarray:
    """Whether each record's instruction is in one of ``languages`` (default English; see
    :func:`laser_fast.classifier.language.keep_languages`)."""
    return language_columns(records, workdir, languages)["keep"]


def language_columns(records: pl.DataFrame, workdir: WorkDir | str | None = None, languages: Sequence[str] = ("en",)) -> dict[str, np.ndarray]:
    """``language`` (ISO code per record, ``und`` without letters), ``language_confidence`` and
    ``keep`` (in ``languages``) for each record's instruction.

    With a ``workdir`` the detected languages are cached under ``cache/language-<key>-v<layout>.npz``,
    keyed by every instruction's hash, the package version and the model (56 us a text on the
    AlpacaEval instructions, one AMD EPYC core; hashing the texts for the key costs a fraction of
    that); ``keep`` is derived from them for each run's ``languages``."""
    from laser_fast.classifier.language import keep_languages, language_model_name

    if workdir is None:
        arrays = _language_arrays(records)
    else:
        key = _hash_strings(_iter_column(records, "instruction"), f"language|v{__version__}|{language_model_name()}|{records.height}")
        arrays = WorkDir.of(workdir).cached_arrays("language", key, lambda: _language_arrays(records))
    codes = np.asarray(arrays["language"], dtype=object)
    detected = (codes, np.asarray(arrays["confidence"], dtype=np.float64), np.asarray(arrays["english"], dtype=np.float64))
    return {"language": codes, "language_confidence": detected[1], "keep": keep_languages(_LazyInstructions(records), languages, detected=detected)}


class _LazyInstructions:
    """``records["instruction"][i]`` on demand (the heuristic reads only the texts the model is unsure about)."""

    def __init__(self, records: pl.DataFrame):
        self._col = records["instruction"]

    def __getitem__(self, i: int) -> str:
        return self._col[int(i)]


def _language_arrays(records: pl.DataFrame) -> dict[str, np.ndarray]:
    """``{"language": codes (str), "confidence": floats, "english": English probabilities}``, on the engine's workers for a large
    pool (row-wise: any split gives the same)."""
    from laser_fast.classifier.language import detect_languages
    from laser_fast.runtime.engine import RowTask, map_rows, remote_rows

    ex = remote_rows(records.height)
    if ex is not None:
        task = RowTask("language", "laser_fast.classifier.stage:_language_arrays", resources=LANGUAGE.resources)
        out = map_rows(ex, task, records, ["instruction"])
        return {"language": np.asarray(out["language"]).astype(str), "confidence": np.asarray(out["confidence"], dtype=np.float64),
                "english": np.asarray(out["english"], dtype=np.float64)}
    codes, conf, p_en = detect_languages(_iter_column(records, "instruction"))
    return {"language": codes.astype(str), "confidence": conf, "english": p_en}


# --------------------------------------------------------------------------------------
# the stages
# --------------------------------------------------------------------------------------

LANGUAGE = StageSpec("language", "laser_fast.classifier.stage:language_stage", reads=("instruction",), writes=("is_english", "language"),
                     resources=Resources(num_cpus=1))
CLASSIFY = StageSpec("classify", "laser_fast.classifier.stage:classify_stage", reads=("user_turns", "category"),
                     writes=("category", "category_confidence"), resources=Resources(num_cpus=1, num_gpus=0.25))


def language_stage(records: pl.DataFrame, opts: SelectOptions, *, workdir, columns: Mapping[str, np.ndarray] | None = None) -> StageResult:
    """``language`` per record and ``is_english`` (in ``opts.languages``, English by default; see
    :func:`language_columns`, cached in the work directory), with the records per detected language."""
    from laser_fast.classifier.language import known_language_codes, language_model_name

    known = known_language_codes()
    unknown = [c for c in opts.languages if known is not None and c != "en" and c not in known]
    if unknown:
        raise ConfigError(f"languages: {', '.join(map(repr, unknown))} is not a code the language model gives (fastText lid.176: "
                          "ISO 639-1 two-letter codes where a language has one, e.g. en, de, fr, zh; three letters otherwise): "
                          "fix --languages")
    cols = language_columns(records, str(workdir) if workdir is not None else None, opts.languages)
    keep = cols["keep"]
    codes, counts = np.unique(cols["language"].astype(str), return_counts=True)
    per = {str(c): int(k) for c, k in sorted(zip(codes, counts), key=lambda x: (-x[1], x[0]))}
    stats = StageStats("language", model=language_model_name(), languages=list(opts.languages), english=int(keep.sum()),
                       other=int(keep.size - keep.sum()), detected=per)
    return StageResult({"is_english": keep, "language": cols["language"]}, stats)


def classify_stage(records: pl.DataFrame, opts: SelectOptions, *, workdir, columns: Mapping[str, np.ndarray] | None = None) -> StageResult:
    """``category`` and ``category_confidence`` per record: a given ``category`` column (from the
    data or score files; None where missing) is kept with confidence 1, the rest classified with
    ``opts.classifier`` (:func:`classify_pool`)."""
    known = (columns or {}).get("category")
    cats, conf, stats = classify_pool(records, known, opts, str(workdir))
    return StageResult({"category": cats, "category_confidence": conf}, StageStats("classify", **stats))
