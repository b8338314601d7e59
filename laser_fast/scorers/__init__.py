"""Step 2 (model scorers): batched, cached, resumable scorers behind the :class:`~laser_fast.scorers.base.Scorer` seam.

Modules:
    hf       loading Hugging Face models (hub id or local path, offline-safe) and token-budget batching
    models   difficulty, deita_quality / deita_complexity, process_reward, ifd
    judges   LLM judges over any OpenAI-compatible endpoint: code_quality, if_quality, custom prompts
    lite     lite_quality, the fast CPU quality scorer, and ``score_quality``
    cache    per-(fingerprint, data_id) score cache: append-only Parquet shards
    run      profiles and the orchestration used by ``laser-fast score`` and ``laser-fast select``
"""
