"""How much host memory one classification worker needs on the CPU, from its models' checkpoints
(:mod:`laser_fast.runtime.model_memory`). The Ray engine reserves it for CPU actors of the
classification windows, as it does for the scorers' workers.

* The bundled heads run MiniLM in float32, counted twice: the tuned head keeps a fine-tuned copy
  of its top layers beside the plain encoder, and the plain head's vectors come from the work
  directory's embedding store, which loads its own MiniLM. The ``smollm`` head adds SmolLM2-135M
  in float32 (its GGUF is converted to float32 before the load), with up to 16 prompts of at most
  about 300 tokens per forward.
* A Hugging Face sequence-classification model or a SetFit body is counted in float32 (the
  widest it loads in; a bfloat16 checkpoint may run narrower) with ``batch_size`` texts of at
  most 512 tokens per forward. A SetFit body is read where its ``modules.json`` puts the
  transformer (the folder itself, or ``0_Transformer/`` in older layouts).

Measured peaks of one window on one thread (torch 2.13 + transformers 5.25, 2 Intel Xeon cores with AVX-512 and AMX,
2026-12-07), and the estimate as a multiple of them:

* the bundled heads on 8,000 texts of the AlpacaEval pool (its instructions and the first 2,000
  characters of its answers): tuned 952 MB, plain 934 MB (1.14x and 1.16x); the tuned head on
  2,000 texts of 3-202 words: 829 MB (1.31x);
* the ``smollm`` head on AlpacaEval's 800 instructions: 1,875 MB with the converted model cached
  (1.54x), 2,310 MB when an earlier estimate measured it with the GGUF's conversion (1.25x);
* a BERT-base-shaped sequence classifier (109M weights), 128 texts of 512 tokens at ``batch_size``
  64: 1,933 MB with torch's fused attention (2.4x), 2,892 MB with eager attention. The estimate
  counts every row at 512 tokens, so a classifier that reads short texts in large batches is
  over-reserved; a smaller ``--batch-size`` lowers it.
"""
from __future__ import annotations

#: tokens of the longest SmolLM2 probe prompt: 200 tokens of the text and the prompt around it
SMOL_PROMPT_TOKENS = 320
#: the most tokens a named classifier model reads per text
NAMED_MAX_TOKENS = 512


def classifier_memory_mb(clf, batch_size: int) -> int | None:
    """One CPU worker's peak memory in MB for classifier ``clf`` (from
    :func:`~laser_fast.classifier.models.load_classifier`, not yet loaded) with ``batch_size``
    texts per forward; None when a model's size is unknown (a hub id neither cached nor
    described by the hub, a classifier class of your own)."""
    from laser_fast.classifier.models import DefaultClassifier, HFClassifier, SetFitClassifier, _HubClassifier
    from laser_fast.runtime.model_memory import NO_MODEL_MB, checkpoint, model_mb, worker_mb
    from laser_fast.runtime.models import minilm_path
    from laser_fast.sampling.embed import DEFAULT_BATCH_TOKENS_CPU

    if isinstance(clf, DefaultClassifier):
        mini = checkpoint(minilm_path())
        if mini is None:
            return None
        total = worker_mb(mini, copies=2, batch_tokens=DEFAULT_BATCH_TOKENS_CPU, seq_len=256)  # two float32 copies
        if clf._read_meta().get("smollm"):
            rows = min(16, max(1, int(batch_size)))  # DefaultClassifier._predict_unique: at most 16 prompts per forward
            # the probe keeps every hidden state up to the layer it reads
            smol = model_mb("smollm2", batch_tokens=rows * SMOL_PROMPT_TOKENS, seq_len=SMOL_PROMPT_TOKENS, all_hidden=True)
            if smol is None:
                return None
            total += smol - NO_MODEL_MB  # one interpreter between them
        return total
    if isinstance(clf, (HFClassifier, SetFitClassifier, _HubClassifier)):
        where = _setfit_body(clf.name) if isinstance(clf, SetFitClassifier) else clf.name
        return model_mb(where, batch_tokens=max(1, int(batch_size)) * NAMED_MAX_TOKENS, seq_len=NAMED_MAX_TOKENS)
    return None


def _setfit_body(folder: str) -> str:
    """The folder of a SetFit model's transformer: the first module ``modules.json`` names (the
    model's own folder when it says none)."""
    import json
    from pathlib import Path

    root = Path(folder).expanduser()
    try:
        modules = json.loads((root / "modules.json").read_text())
        sub = str(modules[0].get("path") or "") if isinstance(modules, list) and modules and isinstance(modules[0], dict) else ""
    except (OSError, ValueError):
        sub = ""
    return str(root / sub) if sub and (root / sub).is_dir() else str(root)
